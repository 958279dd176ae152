"""Disk blocks reserved ahead of a file being written, so its writes only copy bytes.

A write that makes a file longer also asks the filesystem for blocks (ext4 reserves them
for delayed allocation, one write at a time). Asking once for a large extent instead, with
Linux ``fallocate(FALLOC_FL_KEEP_SIZE)``, measured 30 % less CPU for writing 100 MB in
1 MB writes here (14.5 against 21.0 ms; ``benchmarks/README.md``). The encrypted store's
writers (:mod:`aidc.security.crypto`) use it: their copies cost more CPU than the plain
store's in-kernel ``copy_file_range``, and on a busy machine throughput follows CPU.

``KEEP_SIZE`` leaves the file's length alone, so a reader, or a crash, never sees the
reserved blocks as bytes; :meth:`Reservation.release` gives back what was reserved past
the end once the writer is done. Where there is nothing to reserve on (not a local
regular file, a filesystem without ``fallocate``, a full disk) it does nothing, and the
writes go on as before: a full disk is then reported by the write itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import stat
from typing import IO

#: ``FALLOC_FL_KEEP_SIZE`` (linux/falloc.h)
KEEP_SIZE = 0x01
#: the most reserved ahead of what is written at a time (a file grows by steps of what it
#: has so far, up to this, so a small object reserves little)
MAX_STEP = 64 << 20
#: False: nothing is reserved (for measuring what reserving brings)
ENABLED = True


def _load_fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.fallocate
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


_fallocate = _load_fallocate()


def _fd_of(f: IO[bytes]) -> int | None:
    """The descriptor of ``f`` when it is a local regular file, else None."""
    try:
        fd = f.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class Reservation:
    """Blocks reserved ahead of the writes to ``f`` (a binary file being written from its
    start): :meth:`cover` before each write, :meth:`release` at the end. ``total``: the
    size the file will have, when known (reserved at once)."""

    def __init__(self, f: IO[bytes], total: int | None = None):
        self.fd = _fd_of(f) if _fallocate is not None and ENABLED else None
        self.reserved = 0  # reserved up to this offset
        self.tried = False  # asked for blocks at least once (a failed ask may leave some)
        self.reserving = self.fd is not None
        if total and self.reserving:
            self._reserve(total)

    def cover(self, end: int) -> None:
        """Reserve blocks at least up to the offset ``end`` (and some more, in steps)."""
        if self.reserving and end > self.reserved:
            self._reserve(max(end, self.reserved + min(max(self.reserved, end), MAX_STEP)))

    def _reserve(self, end: int) -> None:
        self.tried = True
        if _fallocate(self.fd, KEEP_SIZE, self.reserved, end - self.reserved) == 0:
            self.reserved = end
        else:  # no fallocate here, or no space: the writes say so themselves
            self.reserving = False

    def release(self, f: IO[bytes]) -> None:
        """Give back the blocks reserved past the end written (``f`` is flushed first)."""
        if not self.tried:
            return
        self.tried = self.reserving = False
        f.flush()
        # at its own length: only what lies past the end goes (also what a failed ask
        # for more may have left)
        os.ftruncate(self.fd, os.fstat(self.fd).st_size)
