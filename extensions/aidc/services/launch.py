"""Run a hub-managed service so that it dies with the hub.

JupyterHub stops its managed services when it shuts down, but a hub that is killed
outright (SIGKILL, out-of-memory) cannot: its services would run on as orphans next to
the ones the restarted hub starts, and a second culler would act on the platform.
Every managed service is therefore started through this launcher, which asks Linux to
send it SIGTERM when its parent (the hub) dies (``PR_SET_PDEATHSIG``, through
:func:`aidc.process.die_with_parent`), then replaces
itself with the service's own command. User servers are *not* started this way: they
outlive a hub crash on purpose and are reattached on restart.

    python -m aidc.services.launch -- COMMAND [ARGS...]
"""

from __future__ import annotations

import os
import signal
import sys

from ..process import die_with_parent


def wrap(command: list[str]) -> list[str]:
    """The command line that runs ``command`` under this launcher."""
    return [sys.executable, "-m", "aidc.services.launch", "--", *command]


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m aidc.services.launch -- COMMAND [ARGS...]")
    if not die_with_parent(signal.SIGTERM, parent=os.getppid()):
        sys.exit(0)  # the hub died before the request took effect
    # a hub started in the background of a non-interactive shell ignores SIGINT, and an
    # ignored signal stays ignored across exec: Python then never installs its
    # KeyboardInterrupt handler, and a service that stops on Ctrl-C (the idle culler)
    # would sit out JupyterHub's 30 s interrupt time-out at every shutdown
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
