"""Opening a file in a user's home from a service that runs as root, without races.

Why this exists: a service running as root that checks a user's path (``realpath``,
owner, inside the home?) and then opens it *again by name* can be raced. The user owns
the folders on that path and can swap one of them for a symbolic link between the
check and the open (``renameat2(RENAME_EXCHANGE)`` in a loop wins within a few tries);
root then follows the link into another user's home and hands back their file. Path
resolution itself can also fail mid-swap (``EINVAL``, ``ELOOP``) and must not become
a 500.

What this module does instead, so that there is nothing to race:

1. the path is checked *lexically* first (no NUL, no way above the home with ``..``,
   an absolute path only if it names something inside the home);
2. the home is opened as a directory descriptor (its path comes from the password
   database or the platform's data directory, never from the user);
3. each folder of the path is opened *relative to the previous descriptor* with
   ``O_NOFOLLOW | O_DIRECTORY`` and the last component with ``O_NOFOLLOW`` (and
   ``O_NONBLOCK``, so a planted FIFO cannot hang the service): a symbolic link anywhere
   in the path is refused, whatever the user swaps where and when;
4. the *opened* descriptor is checked with ``fstat``: a regular file, owned by the
   user's uid (on a root platform; development mode runs everything as one account and
   passes ``uid=None``), no larger than the limit;
5. the bytes are read from that same descriptor (the size limit is enforced on the
   read too, in case the file grows).

Every failure is an :class:`~aidc.errors.AidcError` with a message for the user
(400 :class:`UserPathError`, 404 :class:`~aidc.errors.NotFoundError`), never a bare
``OSError``. Services call :func:`read_file` (bytes) or :func:`open_file` (a
:class:`UserFile` holding the descriptor), and :func:`relative_path` when they only
need the path's lexical form (a job's working directory, entered later by a process
that already runs as the user).

Writing into a user's home is deliberately not offered: a root service should hand
files to a process running as the user (as jobs do with the kernel), not write there.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import NotFoundError, UsageError

#: symbolic links are refused on every component of the path
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


class UserPathError(UsageError):
    """A path a service will not follow in a user's home (answered 400)."""


class FileTooLargeError(UserPathError):
    """The file is larger than the caller's limit; ``size`` and ``limit`` say by how much."""

    def __init__(self, message: str, size: int, limit: int):
        super().__init__(message)
        self.size = size
        self.limit = limit


def relative_path(home: str | os.PathLike, path: str) -> PurePosixPath:
    """``path`` as a normalised path relative to ``home``, checked lexically only.

    Accepts a path relative to the home, or an absolute one naming something inside
    the home; refuses an empty path, a NUL byte and anything that leaves the home
    (``..`` past the top). Nothing on disk is looked at, so nothing is followed.
    """
    if not isinstance(path, str) or not path.strip():
        raise UserPathError("a path relative to your home directory is required")
    if "\0" in path:
        raise UserPathError("path contains a NUL byte")
    text = path
    if posixpath.isabs(text):
        inside = None
        for base in _home_spellings(home):
            rel = posixpath.relpath(posixpath.normpath(text), base)
            if rel != ".." and not rel.startswith("../"):
                inside = rel
                break
        if inside is None:
            raise UserPathError(f"{path} is outside your home directory; give a path inside it")
        text = inside
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        raise UserPathError(f"{path} is outside your home directory; give a path inside it")
    if norm == ".":
        raise UserPathError(f"{path} is your home directory itself; give the path of a file in it")
    return PurePosixPath(norm)


def _home_spellings(home: str | os.PathLike) -> list[str]:
    """The home as given and as the system resolves it (its path is the platform's, not the user's)."""
    given = posixpath.normpath(os.fspath(home))
    real = os.path.realpath(given)
    return [given] if real == given else [given, real]


@dataclass
class UserFile:
    """An open regular file of a user's home: ``fd`` (owned by this object), its ``stat``, its ``path``."""

    fd: int
    stat: os.stat_result
    path: PurePosixPath  # relative to the home, normalised
    shown: str  # the path as the user gave it (for messages)
    _closed: bool = field(default=False, repr=False)

    def read(self, max_bytes: int | None = None) -> bytes:
        """The whole file, from the descriptor; refuses more than ``max_bytes``."""
        limit = max_bytes
        if limit is not None and self.stat.st_size > limit:
            raise _too_large(self.shown, self.stat.st_size, limit)
        chunks, total = [], 0
        while True:
            want = 1 << 20 if limit is None else min(1 << 20, limit + 1 - total)
            if want <= 0:
                raise _too_large(self.shown, total, limit)
            try:
                chunk = os.read(self.fd, want)
            except OSError as e:
                raise UserPathError(f"{self.shown} cannot be read: {e.strerror}") from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> UserFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a forgotten close must not leak descriptors in a long-lived service
        try:
            self.close()
        except Exception:
            pass


def open_file(home: str | os.PathLike, path: str, *, uid: int | None,
              max_bytes: int | None = None) -> UserFile:
    """Open ``path`` inside ``home`` without following any symbolic link; see the module doc.

    ``uid``: the owner the file must belong to (``None``: no owner check, development
    mode). ``max_bytes``: refuse a larger file (checked on the opened descriptor).
    """
    rel = relative_path(home, path)
    try:
        dir_fd = os.open(os.fspath(home), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist in your home directory") from None
    except OSError as e:
        raise UserPathError(f"your home directory cannot be opened: {e.strerror}") from None
    parts = rel.parts
    try:
        for i, name in enumerate(parts[:-1]):
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                raise _explain(e, dir_fd, name, path, PurePosixPath(*parts[:i + 1])) from None
            os.close(dir_fd)
            dir_fd = fd
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            raise _explain(e, dir_fd, parts[-1], path, rel) from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserPathError(f"{path} is not a file")
        if uid is not None and st.st_uid != uid:
            # the service reads as root: only files the owner owns, never one planted for them
            raise UserPathError(f"{path} does not belong to you")
        if max_bytes is not None and st.st_size > max_bytes:
            raise _too_large(path, st.st_size, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return UserFile(fd=fd, stat=st, path=rel, shown=path)


def read_file(home: str | os.PathLike, path: str, *, uid: int | None,
              max_bytes: int | None = None) -> bytes:
    """The bytes of ``path`` inside ``home``, opened as :func:`open_file` does."""
    with open_file(home, path, uid=uid, max_bytes=max_bytes) as f:
        return f.read(max_bytes)


def _explain(e: OSError, dir_fd: int, name: str, path: str, upto: PurePosixPath) -> Exception:
    """A user-facing error for a failed ``openat`` of component ``name``."""
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            mode = os.lstat(name, dir_fd=dir_fd).st_mode
        except OSError:
            mode = None
        if e.errno == errno.ELOOP or (mode is not None and stat.S_ISLNK(mode)):
            return UserPathError(f"{path} goes through a symbolic link ({upto}); give the real path")
        if mode is None or stat.S_ISDIR(mode):  # it was something else a moment ago
            return UserPathError(f"{path} changed while it was being opened ({upto} was a symbolic "
                                 "link or not a folder a moment ago); give the real path")
        return UserPathError(f"{path}: {upto} is not a folder")
    if e.errno == errno.ENOENT:
        return NotFoundError(f"{path} does not exist in your home directory")
    if e.errno == errno.ENAMETOOLONG:
        return UserPathError(f"{path}: a name in the path is too long")
    return UserPathError(f"{path} cannot be opened ({upto}: {e.strerror})")


def _too_large(path: str, size: int, limit: int) -> FileTooLargeError:
    return FileTooLargeError(f"{path} is {_size(size)}; files up to {_size(limit)} are accepted",
                             size=size, limit=limit)


def _size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} bytes"


def home_path(home: str | os.PathLike, path: str) -> Path:
    """``home`` joined with the lexically checked ``path`` (for showing, or for a process
    that runs *as the user* to open; never for root to open)."""
    return Path(home) / relative_path(home, path)
