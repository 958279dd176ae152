"""Processes that die with their parent: the platform's one ``prctl(PR_SET_PDEATHSIG)``.

A platform process whose parent is killed outright (SIGKILL, out of memory) must not run
on as an orphan: a service without its hub, a Dask worker without the jobs service, a
kernel without its fork server, a model replica without the models service. Linux sends
a chosen signal to a process when its parent dies if the process asked with
``prctl(PR_SET_PDEATHSIG)``; :func:`die_with_parent` asks. Each caller picks the signal
(SIGTERM where the child must clean up, SIGKILL where nothing is left to save) and
whether to check for the race in which the parent died just before the request took
effect (then no signal ever comes, and the child must exit by itself).

Who uses it: :mod:`aidc.services.launch` (hub-managed services, SIGTERM),
:mod:`aidc.jobs.cluster` (embedded Dask workers, SIGKILL, in their preload),
:mod:`aidc.jobs.zygote` (the kernels' fork server, SIGTERM, and its kernels, SIGKILL),
:mod:`aidc.models.deployments` (model replicas, SIGKILL).

This file imports only the standard library and nothing of ``aidc``: the fork server and
the workers' preload load it by path (:data:`PATH`) without importing the ``aidc``
package, which would load the jobs service into every kernel and worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

#: ``prctl(2)`` options (``<linux/prctl.h>``)
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

#: this file, for processes that load it without importing ``aidc``
PATH = os.path.abspath(__file__)

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library (the one this Python is linked against, found by name otherwise)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.prctl  # noqa: B018 - a statically linked Python may not export it
        except (OSError, AttributeError):
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def prctl(option: int, arg: int | bytes | ctypes._CArgObject = 0) -> None:
    """``prctl(2)`` with one argument; raises :class:`OSError` on failure."""
    if libc().prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """Have Linux send ``sig`` to this process when its parent dies (elsewhere: nothing).

    ``parent``: the pid the caller expects as its parent, read *before* this call
    (``os.getppid()`` before, or the pid the parent passed down). Returns False when that
    is no longer the parent after the request: it died before the request took effect,
    no signal will come, and the caller should exit now. Without ``parent``, True.

    The request is cleared when the process changes its user or group (setuid/setgid),
    so a process that does must call this again after.
    """
    if not sys.platform.startswith("linux"):
        return True
    prctl(PR_SET_PDEATHSIG, int(sig))
    return parent is None or os.getppid() == parent


def parent_death_signal() -> int:
    """The signal this process gets when its parent dies (0: none); for checks and tests."""
    if not sys.platform.startswith("linux"):
        return 0
    value = ctypes.c_int(0)
    prctl(PR_GET_PDEATHSIG, ctypes.byref(value))
    return value.value
