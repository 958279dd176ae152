"""The platform's roles under their old name: the module is :mod:`aidc.roles`.

Roles moved below the hub so that services import them without importing the hub;
this name stays for drop-in configs and code written against it. It is the same module
object (``aidc.hub.roles is aidc.roles``), so :func:`aidc.roles.grant` and
monkeypatches act on one set of roles.
"""

import sys

from .. import roles

sys.modules[__name__] = roles
