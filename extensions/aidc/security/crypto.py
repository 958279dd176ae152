"""Encryption at rest: one object, one random data key, AES-256-GCM in chunks.

Envelope encryption, the way KMS-backed stores do it: each object gets a fresh 256-bit
data key; its bytes are encrypted with that key in chunks (so an object of any size is
streamed, never held whole in memory), and the data key itself is stored in the object's
header *wrapped* by a key-encryption key (KEK) that never touches the disk beside the
data (:mod:`aidc.security.keys` provides it: a key file, an environment variable or a
KMS). Rotating the KEK re-wraps each header (:func:`rewrap`); the data is not touched.

Layout of an encrypted object::

    b"AIDCENC1" | header length (4 bytes, big endian) | header (JSON, space-padded)
    | chunk 0 | chunk 1 | ... | last chunk

The header is JSON padded to a fixed size (:data:`HEADER_SIZE`) so that re-wrapping
rewrites it in place: ``{"v": 1, "kek": <key id>, "key": <wrapped data key, base64>,
"chunk": <plaintext bytes per chunk>, "nonce": <7-byte nonce prefix, base64>}``.

Each chunk is AES-GCM ciphertext plus its 16-byte tag. Its nonce is the object's random
prefix, the chunk's number and a flag that is 1 only on the last chunk (the STREAM
construction), so chunks cannot be reordered, dropped, or the object cut at a chunk
boundary without the read failing. Every chunk but the last holds ``chunk`` bytes; the
last holds the rest, possibly none (the writer seals whole chunks as they come, so an
object of whole chunks ends with an empty one, its tag alone; objects written before,
whose last chunk could be a full one, read the same). The associated data of every
chunk, and of the wrapped key, is the object's *identity* (a name the caller gives, e.g.
``dataset:sales/ab12/x.csv``): a ciphertext copied over another object's file does not
decrypt there.

Speed: the cipher (AES-NI, several GB/s) costs less than the copies around it, so there
are as few as can be (no allocation per chunk, whole chunks sealed from and opened into the
caller's buffer), and in a copy the cipher (which releases the GIL) runs on one core
while the write runs on the other: a copy into the store reads and seals a chunk while the
one before is written (:func:`seal_file`), a copy out of it opens one while the one
before is written (:func:`copy_stream`). A reader opens chunks as they are read: the
kernel's readahead already overlaps the disk with the cipher.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import mmap
import os
import queue
import stat
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AidcError, PlatformError
from ..reserve import Reservation

MAGIC = b"AIDCENC1"
#: bytes of the JSON header area (after the magic and the length): room for a KMS's
#: wrapped key (Vault transit's is ~90 characters) with space to spare
HEADER_SIZE = 1024
PREFIX = len(MAGIC) + 4
#: plaintext bytes per chunk
CHUNK = 1 << 20
#: the largest chunk a header may name (a reader allocates two of them)
MAX_CHUNK = 64 << 20
TAG = 16
#: the buffer of :func:`open_decrypted_read`'s file, for small reads (``readline``)
READ_BUFFER = 64 << 10
KEY_BYTES = 32

_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()
#: False: every copy runs in its caller alone (for measuring what the pool brings)
PIPELINE = True
#: buffers a copy's reader may be ahead of its writer (:func:`copy_stream`)
RING = 3
#: seconds a copy waits for a pool thread to take its reader before copying alone
RING_WAIT = 0.05
#: False: files are read, never mapped (for measuring what mapping brings)
MAP = True


class DecryptionError(PlatformError):
    """An encrypted object that cannot be read: wrong or missing key, another object's
    bytes, or bytes changed on disk. The message says which object."""


class KeyWrapper(Protocol):
    """What encryption needs of a key provider (:class:`aidc.security.keys.KeyRing`)."""

    def current_id(self) -> str: ...

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes: ...


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def _aad(identity: str) -> bytes:
    return b"aidc-object:" + identity.encode()


def _header(kek: str, wrapped: bytes, chunk: int, prefix: bytes) -> bytes:
    body = json.dumps({"v": 1, "kek": kek, "key": base64.b64encode(wrapped).decode(),
                       "chunk": chunk, "nonce": base64.b64encode(prefix).decode()}).encode()
    if len(body) > HEADER_SIZE:
        raise AidcError("the key provider's wrapped key does not fit in an object's header")
    return MAGIC + struct.pack(">I", HEADER_SIZE) + body.ljust(HEADER_SIZE, b" ")


def read_header(head: bytes) -> dict | None:
    """The header of an encrypted object from its first bytes, or None when they are not
    an encrypted object's (a plain object written before encryption was turned on)."""
    if not head.startswith(MAGIC) or len(head) < PREFIX:
        return None
    (size,) = struct.unpack(">I", head[len(MAGIC):PREFIX])
    try:
        header = json.loads(head[PREFIX:PREFIX + size])
        header["wrapped"] = base64.b64decode(header["key"])
        header["prefix"] = base64.b64decode(header["nonce"])
    except (ValueError, KeyError, TypeError) as e:
        raise DecryptionError("an encrypted object's header is damaged") from e
    header["size"] = PREFIX + size
    return header


def _new_object(keys: KeyWrapper, identity: str, chunk: int) -> tuple[AESGCM, bytes, bytes, bytes]:
    """A new object's cipher (a fresh data key), associated data, nonce prefix and header
    (the data key wrapped by the current KEK)."""
    data_key = AESGCM.generate_key(bit_length=256)
    kek = keys.current_id()
    prefix = os.urandom(7)
    aad = _aad(identity)
    return AESGCM(data_key), aad, prefix, _header(kek, keys.wrap(kek, data_key, aad), chunk, prefix)


def _unwrap(keys: KeyWrapper, header: dict, identity: str) -> bytes:
    """The data key of the object ``identity``; :class:`DecryptionError` naming it."""
    try:
        return keys.unwrap(header["kek"], header["wrapped"], _aad(identity))
    except Exception as e:  # noqa: BLE001 - a provider's own error too, said for this object
        raise DecryptionError(f"cannot unwrap the data key of {identity} with key "
                              f"{header['kek']}: {e}") from e


def _pool() -> ThreadPoolExecutor:
    """The threads that read copies ahead (:func:`copy_stream`, one per copy under way):
    the cipher runs beside the disk's copies, each on its own core. Made again in a forked
    child (a pool's threads do not survive ``fork``)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="aidc-crypto"))
        return _POOL[1]


def _write_all(raw: IO[bytes], view: memoryview) -> None:
    while len(view):
        n = raw.write(view)
        if n is None or n >= len(view):  # a buffered file takes it all
            return
        view = view[n:]


class EncryptingWriter(io.RawIOBase):
    """A binary file: what is written to it goes to ``raw`` encrypted (``close`` writes
    the last chunk; it does not close ``raw``; :meth:`abandon` ends a write given up).

    Whole chunks are sealed straight from the caller's buffer (a part chunk is gathered in
    a buffer of the writer's own) into one output buffer and written from it, in the
    caller's thread: handing each write to a pool thread measured slower for a dataset
    written and then read from the disk (write 1,140 vs 1,290 MB/s, the read after it 0.43
    vs 0.52x of plain, at load 3-5). The last chunk is sealed at ``close`` with the STREAM
    flag: the bytes gathered so far, possibly none (an object of whole chunks ends with an
    empty last chunk, its tag)."""

    def __init__(self, raw: IO[bytes], keys: KeyWrapper, identity: str, chunk: int = CHUNK):
        super().__init__()
        self.raw, self.identity, self.chunk = raw, identity, chunk
        self.aead, self.aad, self.prefix, head = _new_object(keys, identity, chunk)
        raw.write(head)
        self.offset = len(head)
        # blocks reserved ahead of the chunks once the object grows past one (see aidc.reserve)
        self.reservation = Reservation(raw)
        self.gathered = memoryview(bytearray(chunk))
        self.filled = 0
        self.sealed = memoryview(bytearray(chunk + TAG))
        self.index = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = len(view)
        if self.filled:
            room = self.chunk - self.filled
            part = view[:room]
            self.gathered[self.filled:self.filled + len(part)] = part
            self.filled += len(part)
            view = view[len(part):]
            if self.filled < self.chunk:
                return written
            self._emit(self.gathered, last=False)
            self.filled = 0
        while len(view) >= self.chunk:
            self._emit(view[:self.chunk], last=False)
            view = view[self.chunk:]
        self.gathered[:len(view)] = view
        self.filled = len(view)
        return written

    def _emit(self, plain, last: bool) -> None:
        out = self.sealed[:len(plain) + TAG]
        self.aead.encrypt_into(_nonce(self.prefix, self.index, last), plain, self.aad, out)
        self.index += 1
        if not last:
            self.reservation.cover(self.offset + len(out))
        self.offset += len(out)
        _write_all(self.raw, out)

    def close(self) -> None:
        if self.closed:
            return
        try:
            # a write abandoned midway (the store drops its temporary file) ends without one
            if not self.raw.closed:
                self._emit(self.gathered[:self.filled], last=True)
                self.reservation.release(self.raw)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """End a write given up (the caller drops what was written): no last chunk is
        sealed, so what was written never reads as a whole object."""
        super().close()


class DecryptingReader(io.RawIOBase):
    """A binary file reading the plaintext of the encrypted object in ``raw`` (which it
    closes when closed). Every chunk is authenticated before any of its bytes is given.

    A ``readinto`` with room for a whole chunk gets it decrypted straight into its buffer
    (no copy; zeroed again if the chunk does not authenticate), a smaller one a copy from
    the reader's own. No read-ahead of its own: the kernel's readahead already overlaps
    the disk with the cipher, and a pool thread reading the next chunk ahead measured no
    better for reads from the disk at load 10+ (each chunk then also waits for a second
    thread to be scheduled); :func:`copy_stream` overlaps whole ``readinto`` calls with
    a copy's writes."""

    def __init__(self, raw: IO[bytes], keys: KeyWrapper, identity: str, header: dict, head: bytes,
                 mapping: mmap.mmap | None = None):
        super().__init__()
        self.raw, self.identity = raw, identity
        # the object's file mapped (map_store_file): chunks are opened straight from it
        self.mapping = mapping
        self.mapped = memoryview(mapping) if mapping is not None else None
        self.pos = int(header["size"])  # where the next sealed chunk starts in the mapping
        data_key = _unwrap(keys, header, identity)
        self.aead = AESGCM(data_key)
        self.aad = _aad(identity)
        self.prefix, self.chunk = header["prefix"], int(header["chunk"])
        if not 0 < self.chunk <= MAX_CHUNK:
            raise DecryptionError(f"{identity}: its header names a chunk size of {self.chunk} bytes")
        # one sealed chunk and one byte more (which tells whether the chunk is the last),
        # and one chunk's plaintext for small reads; kept for the object's life
        self.sealed = memoryview(bytearray(self.chunk + TAG + 1 if mapping is None else 0))
        self.opened = memoryview(bytearray(self.chunk))
        rest = head[header["size"]:]  # what was read past the header already
        self.sealed[:len(rest)] = rest
        self.filled = len(rest)
        self.index = 0  # the next chunk to open
        self.plain = memoryview(b"")  # what is left of the chunk opened last
        self.at = 0
        self.given_last = False

    def readable(self) -> bool:
        return True

    def _open_into(self, buffer) -> int:
        """Read and open the next chunk into ``buffer`` (room for it, or the reader's own)."""
        want = self.chunk + TAG
        if self.mapped is not None:
            sealed = self.mapped[self.pos:self.pos + want]
            self.pos += len(sealed)
            last = self.pos >= len(self.mapped)
            size = self.filled = len(sealed)
        else:
            sealed = self.sealed
            while self.filled <= want:
                n = self.raw.readinto(sealed[self.filled:want + 1])
                if not n:
                    break
                self.filled += n
            last = self.filled <= want
            size = min(self.filled, want)
        n = size - TAG
        target = buffer if len(buffer) >= n else self.opened
        try:
            if n < 0:
                raise InvalidTag
            self.aead.decrypt_into(_nonce(self.prefix, self.index, last), sealed[:size], self.aad, target[:n])
        except InvalidTag:
            if n > 0:
                target[:n] = bytes(n)  # nothing of an unauthenticated chunk is left to read
            raise DecryptionError(
                f"{self.identity} does not decrypt: its bytes were changed, cut or moved "
                "from another object") from None
        extra = self.filled - size
        if extra:  # the byte read ahead starts the next chunk
            sealed[:extra] = sealed[size:self.filled]
        self.filled = extra
        self.index += 1
        self.given_last = last
        if target is buffer:
            return n
        self.plain, self.at = self.opened[:n], 0
        return self._give(buffer)

    def _give(self, buffer) -> int:
        n = min(len(buffer), len(self.plain) - self.at)
        buffer[:n] = self.plain[self.at:self.at + n]
        self.at += n
        return n

    def readinto(self, buffer) -> int:
        if self.at < len(self.plain):
            return self._give(buffer)
        while len(buffer) and not self.given_last:
            n = self._open_into(buffer)
            if n:
                return n
        return 0

    def readall(self) -> bytes:
        parts = [self.plain[self.at:]]
        self.at = len(self.plain)
        while not self.given_last:
            part = memoryview(bytearray(self.chunk))
            parts.append(part[:self._open_into(part)])
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            _unmap(self.mapping, self.mapped)
            self.mapping = self.mapped = None
            self.raw.close()
        super().close()


def map_store_file(f: IO[bytes]) -> mmap.mmap | None:
    """The local regular file ``f``, mapped for reading; None where it cannot be.

    Only for files nothing truncates while they are read: the store's own objects (it
    replaces an object by renaming a new file over it, never in place) and folders their
    owner gave up to the store (``put_dir(move=True)``). Opening chunks straight from the
    mapping saves the copy a ``readinto`` makes: 23-27 % less CPU for a read of an
    encrypted object from the disk or the page cache (67 against 87 ms, 57 against 78 ms
    for 512 MB), 12 % for a copy out of the store; sealing from it a little (2-4 %). A
    file cut short under a mapping, or a disk error reading it, ends the process with
    SIGBUS rather than an error: hence the rule above."""
    try:
        fd = f.fileno()
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not info.st_size:
            return None
        mapping = mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    # no MADV_SEQUENTIAL: with it a cold read of 512 MB took 431 ms against 198 without
    return mapping


def _unmap(mapping: mmap.mmap | None, view: memoryview | None) -> None:
    if view is not None:
        view.release()
    if mapping is not None:
        with contextlib.suppress(BufferError):  # a slice still held: freed with it
            mapping.close()


class EncryptingReader(io.RawIOBase):
    """The encrypted object of the plaintext file ``src``, read: its header, then each
    chunk sealed as :class:`EncryptingWriter` seals it (the same format: whole chunks, then
    a short last one, possibly empty). For copies into the store (:func:`seal_file`): the
    pool thread of :func:`copy_stream` then reads *and seals* a chunk while the caller
    writes the one before, so the cipher runs beside the write, not before it. A
    ``readinto`` with room for a sealed chunk gets it sealed straight into its buffer."""

    def __init__(self, src: IO[bytes], keys: KeyWrapper, identity: str, chunk: int = CHUNK,
                 mapping: mmap.mmap | None = None):
        super().__init__()
        self.src, self.chunk = src, chunk
        self.aead, self.aad, self.prefix, head = _new_object(keys, identity, chunk)
        # ``src`` mapped (map_store_file): chunks are sealed straight from it
        self.mapping = mapping
        self.mapped = memoryview(mapping) if mapping is not None else None
        self.pos = 0
        self.plain = memoryview(bytearray(chunk if mapping is None else 0))
        self.spill: memoryview | None = None  # a sealed chunk for a small buffer, when needed
        self.pending, self.at = memoryview(head), 0
        self.index = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.at < len(self.pending):
            n = min(len(buffer), len(self.pending) - self.at)
            buffer[:n] = self.pending[self.at:self.at + n]
            self.at += n
            return n
        if self.done or not len(buffer):
            return 0
        if self.mapped is not None:
            plain = self.mapped[self.pos:self.pos + self.chunk]
            self.pos += len(plain)
            filled = len(plain)
        else:
            filled = 0
            while filled < self.chunk:
                n = self.src.readinto(self.plain[filled:])
                if not n:
                    break
                filled += n
            plain = self.plain[:filled]
        last = filled < self.chunk
        size = filled + TAG
        if len(buffer) >= size:
            target = buffer
        else:
            if self.spill is None:
                self.spill = memoryview(bytearray(self.chunk + TAG))
            target = self.spill
        self.aead.encrypt_into(_nonce(self.prefix, self.index, last), plain, self.aad, target[:size])
        del plain  # no slice of the mapping outlives the call
        self.index += 1
        self.done = last
        if target is buffer:
            return size
        self.pending, self.at = self.spill[:size], 0
        return self.readinto(buffer)


def sealed_size(plain: int, chunk: int = CHUNK) -> int:
    """The bytes of the encrypted object of ``plain`` bytes (whole chunks, then a last one)."""
    return PREFIX + HEADER_SIZE + plain + (plain // chunk + 1) * TAG


def copy_stream(src: IO[bytes], dst: IO[bytes], size: int = CHUNK, expect: int | None = None) -> None:
    """Copy ``src`` to ``dst`` (binary files): a pool thread reads ``src`` ahead into a ring
    of :data:`RING` buffers while this thread writes the ones read, so a decrypting or
    sealing ``src`` (:class:`EncryptingReader`) runs its cipher on one core while the write
    runs on the other (files in and out of an encrypted store, :mod:`aidc.artifacts`).

    One thread for the whole copy, not a job per buffer: each handoff to a pool thread
    costs a wake-up, and with a job per buffer a 100 MB publish measured 0.98x of a plain
    copy against 1.04x (``benchmarks/README.md``). When no pool thread takes the reader
    within :data:`RING_WAIT` seconds (the pool is busy with other copies), this thread
    copies alone; a write that fails stops the reader before the error is raised.

    ``expect``: about how many bytes ``dst`` will get (at least as many), reserved on its
    disk at once (:mod:`aidc.reserve`); what is left over is given back at the end."""
    reservation = Reservation(dst, expect) if expect else None
    try:
        _copy_stream(src, dst, size)
    except BaseException:
        if reservation is not None:
            with contextlib.suppress(Exception):  # the copy's own error is the one to see
                reservation.release(dst)
        raise
    if reservation is not None:
        reservation.release(dst)


def _copy_stream(src: IO[bytes], dst: IO[bytes], size: int) -> None:
    if not PIPELINE:
        return _copy_serial(src, dst, memoryview(bytearray(size)))
    buffers = [memoryview(bytearray(size)) for _ in range(RING)]
    read: queue.SimpleQueue = queue.SimpleQueue()  # (buffer, bytes) or (error, 0)
    free: queue.SimpleQueue = queue.SimpleQueue()  # buffers to read into; None: stop
    for i in range(RING):
        free.put(i)

    def reader() -> None:
        try:
            while (i := free.get()) is not None:
                n = src.readinto(buffers[i])
                read.put((i, n))
                if not n:
                    return
        except BaseException as e:  # noqa: BLE001 - raised in the writing thread
            read.put((e, 0))

    try:
        future = _pool().submit(reader)
    except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
        return _copy_serial(src, dst, buffers[0])
    try:
        while True:
            try:
                i, n = read.get(timeout=RING_WAIT)
            except queue.Empty:
                if future.cancel():  # no thread took it: nothing was read yet
                    return _copy_serial(src, dst, buffers[0])
                continue
            if isinstance(i, BaseException):
                raise i
            if not n:
                return
            _write_all(dst, buffers[i][:n])
            free.put(i)
    except BaseException:
        free.put(None)
        with contextlib.suppress(BaseException):
            future.result()  # the reader uses ``src``, which the caller is about to close
        raise


def _copy_serial(src: IO[bytes], dst: IO[bytes], buffer: memoryview) -> None:
    while n := src.readinto(buffer):
        _write_all(dst, buffer[:n])


def seal_file(src: IO[bytes], dst: IO[bytes], keys: KeyWrapper, identity: str,
              given_up: bool = False) -> None:
    """Write the encrypted object ``identity`` of the plaintext file ``src`` to ``dst``,
    each chunk read and sealed on the pool while the one before is written. ``given_up``:
    nothing else writes ``src`` any more (its owner gave it to the store), so it is
    sealed straight from a mapping of it (:func:`map_store_file`)."""
    try:
        plain = os.fstat(src.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        plain = None
    mapping = map_store_file(src) if given_up and MAP else None
    reader = EncryptingReader(src, keys, identity, mapping=mapping)
    try:
        copy_stream(reader, dst, CHUNK + TAG,
                    expect=sealed_size(plain) if plain is not None else None)
    finally:
        _unmap(reader.mapping, reader.mapped)


def open_encrypted_write(raw: IO[bytes], keys: KeyWrapper, identity: str) -> EncryptingWriter:
    """``raw`` (a binary file being written) wrapped so that what is written is encrypted."""
    return EncryptingWriter(raw, keys, identity)


def open_decrypted_read(raw: IO[bytes], keys: KeyWrapper | None, identity: str,
                        mapped: bool = False) -> IO[bytes]:
    """``raw`` (a binary file open for reading) as plaintext: decrypted when it is an
    encrypted object, itself (rewound) when it is a plain one written before encryption.
    Buffered, so ``read(n)`` and ``readline`` work as on a file. ``mapped``: ``raw`` is
    one of the store's own files, opened straight from a mapping (:func:`map_store_file`)."""
    head = raw.read(PREFIX + HEADER_SIZE)
    header = read_header(head)
    if header is None:
        try:
            raw.seek(0)
            return raw
        except (OSError, ValueError, io.UnsupportedOperation):
            return io.BufferedReader(_Prepend(head, raw))
    if keys is None:
        raw.close()
        raise DecryptionError(f"{identity} is encrypted, and this platform has no key to read it")
    try:
        # a buffer smaller than a chunk: a read or readinto of a chunk or more goes past it,
        # straight to DecryptingReader.readinto, which decrypts into the caller's buffer
        mapping = map_store_file(raw) if mapped and MAP else None
        return io.BufferedReader(DecryptingReader(raw, keys, identity, header, head, mapping),
                                 READ_BUFFER)
    except BaseException:
        raw.close()
        raise


class _Prepend(io.RawIOBase):
    """``head`` then the rest of ``raw`` (a plain object on a store that cannot seek)."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        super().__init__()
        self.head, self.raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.raw.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def rewrap(f: IO[bytes], keys: KeyWrapper, identity: str) -> str | None:
    """Wrap the data key of the encrypted object open in ``f`` (``r+b``) with the current
    KEK, rewriting its header in place (same size; the data is not touched). The KEK it
    was under, or None when the object is plain or already under the current KEK."""
    head = f.read(PREFIX + HEADER_SIZE)
    header = read_header(head)
    current = keys.current_id()
    if header is None or header["kek"] == current:
        return None
    aad = _aad(identity)
    data_key = _unwrap(keys, header, identity)
    new = _header(current, keys.wrap(current, data_key, aad), int(header["chunk"]), header["prefix"])
    if len(new) != header["size"]:
        raise DecryptionError(f"{identity}: its header has another size; it cannot be re-wrapped in place")
    f.seek(0)
    f.write(new)
    return header["kek"]


def key_of(head: bytes) -> str | None:
    """The KEK id an object's first bytes name (None: a plain object)."""
    header = read_header(head)
    return None if header is None else header["kek"]
