"""Whether a folder is this account's (and root's) alone to change, all the way up.

Why this exists: a process that runs as root and writes into a folder that another account
can change, or below a folder that account can change, can be steered. That account
renames an entry away and puts a symbolic link in its place, and root then writes where
the link points. Dask's default scratch folder, ``/tmp/dask-scratch-space``, is the case
that made this module: anyone can create it before the workers start, and Dask's root
workers then put their folders (and aidc a job's plaintext output) inside it.

So before a root process puts anything of value in a folder it did not make itself (a
configured scratch folder, an external Dask worker's ``local_directory``), it asks
:func:`others_can_change`. The folder and every folder above it must belong to root or
to this account and must not be writable by other accounts. The one exception is a sticky
folder such as ``/tmp``: others may write there, but they cannot rename or remove what is
not theirs. So a sticky folder passes as the last folder (a private folder made in it with
``mkdtemp`` is safe) and as a folder above one of ours. Both the path as given and the
path its links resolve to are checked, so a link on the way is fine when nobody else can
change the link itself.
"""

from __future__ import annotations

import os
import stat


def others_can_change(path: str | os.PathLike, uid: int | None = None) -> str | None:
    """None when only root and ``uid`` (default: this process's effective uid) can change
    ``path`` or any folder above it; otherwise why not, in words for an administrator."""
    uid = os.geteuid() if uid is None else uid
    trusted = {0, uid}
    given = os.path.abspath(os.fspath(path))
    for chain in dict.fromkeys((given, os.path.realpath(given))):
        reason = _chain(chain, trusted)
        if reason is not None:
            return reason
    return None


def _chain(path: str, trusted: set[int]) -> str | None:
    """Check ``path`` and each folder above it, without following links."""
    current = path
    while True:
        try:
            info = os.lstat(current)
        except OSError as e:
            return f"{current} cannot be checked ({e.strerror})"
        if info.st_uid not in trusted:
            return f"{current} belongs to another account (uid {info.st_uid})"
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            pass  # a link's own mode means nothing; the folder it is in is checked next
        elif not stat.S_ISDIR(mode):
            return f"{current} is not a folder"
        else:
            writers = ("every account" if mode & stat.S_IWOTH
                       else "its group" if mode & stat.S_IWGRP and info.st_gid != 0 else None)
            # others may add entries to a sticky folder, but not rename or remove ours (and
            # every entry on the way is ours, checked above)
            if writers is not None and not mode & stat.S_ISVTX:
                return f"{current} can be written by {writers} (mode {stat.filemode(mode)})"
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
