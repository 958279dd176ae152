"""Unix accounts under their old name: the module is :mod:`aidc.accounts`.

Accounts moved below the hub so that the jobs and models services use them without
importing the hub; this name stays for code written against it. It is the same module
object (``aidc.hub.system_users is aidc.accounts``), so a monkeypatch of either acts on both.
"""

import sys

from .. import accounts

sys.modules[__name__] = accounts
