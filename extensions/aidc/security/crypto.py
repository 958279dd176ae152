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
boundary without the read failing. The associated data of every chunk, and of the wrapped
key, is the object's *identity* (a name the caller gives, e.g. ``dataset:sales/ab12/x.csv``):
a ciphertext copied over another object's file does not decrypt there.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from typing import IO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AidcError, PlatformError

MAGIC = b"AIDCENC1"
#: bytes of the JSON header area (after the magic and the length): room for a KMS's
#: wrapped key (Vault transit's is ~90 characters) with space to spare
HEADER_SIZE = 1024
PREFIX = len(MAGIC) + 4
#: plaintext bytes per chunk
CHUNK = 1 << 20
TAG = 16
KEY_BYTES = 32


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


def _unwrap(keys: KeyWrapper, header: dict, identity: str) -> bytes:
    """The data key of the object ``identity``; :class:`DecryptionError` naming it."""
    try:
        return keys.unwrap(header["kek"], header["wrapped"], _aad(identity))
    except Exception as e:  # noqa: BLE001 - a provider's own error too, said for this object
        raise DecryptionError(f"cannot unwrap the data key of {identity} with key "
                              f"{header['kek']}: {e}") from e


class EncryptingWriter(io.RawIOBase):
    """A binary file: what is written to it goes to ``raw`` encrypted (``close`` writes
    the last chunk; it does not close ``raw``)."""

    def __init__(self, raw: IO[bytes], keys: KeyWrapper, identity: str, chunk: int = CHUNK):
        super().__init__()
        self.raw, self.identity, self.chunk = raw, identity, chunk
        data_key = AESGCM.generate_key(bit_length=256)
        kek = keys.current_id()
        self.prefix = os.urandom(7)
        self.aead = AESGCM(data_key)
        raw.write(_header(kek, keys.wrap(kek, data_key, _aad(identity)), chunk, self.prefix))
        self.buffer = bytearray()
        self.index = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        # whole chunks are sealed straight from the caller's buffer (no copy); at least one
        # byte is kept back, as the last chunk is only known at close
        view = memoryview(data).cast("B")
        written = len(view)
        if self.buffer:
            room = self.chunk - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            if not len(view):
                return written
            self._emit(self.buffer, last=False)
            self.buffer = bytearray()
        while len(view) > self.chunk:
            self._emit(view[:self.chunk], last=False)
            view = view[self.chunk:]
        self.buffer += view
        return written

    def _emit(self, plain: bytes, last: bool) -> None:
        self.raw.write(self.aead.encrypt(_nonce(self.prefix, self.index, last), plain,
                                         _aad(self.identity)))
        self.index += 1

    def close(self) -> None:
        # a write abandoned midway (the store drops its temporary file) ends without one
        if not self.closed and not self.raw.closed:
            self._emit(bytes(self.buffer), last=True)
            self.buffer.clear()
        super().close()


class DecryptingReader(io.RawIOBase):
    """A binary file reading the plaintext of the encrypted object in ``raw`` (which it
    closes when closed). Every chunk is authenticated before any of its bytes is given."""

    def __init__(self, raw: IO[bytes], keys: KeyWrapper, identity: str, header: dict, head: bytes):
        super().__init__()
        self.raw, self.identity = raw, identity
        data_key = _unwrap(keys, header, identity)
        self.aead = AESGCM(data_key)
        self.prefix, self.chunk = header["prefix"], int(header["chunk"])
        # one sealed chunk and one byte more (which tells whether the chunk is the last),
        # read into one buffer kept for the object's life: no copy but the decryption's
        self.sealed = bytearray(self.chunk + TAG + 1)
        rest = head[header["size"]:]  # what was read past the header already
        self.sealed[:len(rest)] = rest
        self.filled = len(rest)
        self.plain = memoryview(b"")
        self.at = 0
        self.index = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def _next(self) -> None:
        want = self.chunk + TAG
        view = memoryview(self.sealed)
        while self.filled <= want:
            n = self.raw.readinto(view[self.filled:want + 1])
            if not n:
                break
            self.filled += n
        last = self.filled <= want
        size = min(self.filled, want)
        try:
            plain = self.aead.decrypt(_nonce(self.prefix, self.index, last), view[:size],
                                      _aad(self.identity))
        except InvalidTag:
            raise DecryptionError(
                f"{self.identity} does not decrypt: its bytes were changed, cut or moved "
                "from another object") from None
        extra = self.filled - size
        if extra:  # the byte read ahead starts the next chunk
            self.sealed[:extra] = self.sealed[size:self.filled]
        self.filled = extra
        self.plain, self.at = memoryview(plain), 0
        self.index += 1
        self.done = last

    def readinto(self, buffer) -> int:
        while self.at >= len(self.plain) and not self.done:
            self._next()
        n = min(len(buffer), len(self.plain) - self.at)
        buffer[:n] = self.plain[self.at:self.at + n]
        self.at += n
        return n

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def open_encrypted_write(raw: IO[bytes], keys: KeyWrapper, identity: str) -> EncryptingWriter:
    """``raw`` (a binary file being written) wrapped so that what is written is encrypted."""
    return EncryptingWriter(raw, keys, identity)


def open_decrypted_read(raw: IO[bytes], keys: KeyWrapper | None, identity: str) -> IO[bytes]:
    """``raw`` (a binary file open for reading) as plaintext: decrypted when it is an
    encrypted object, itself (rewound) when it is a plain one written before encryption.
    Buffered, so ``read(n)`` and ``readline`` work as on a file."""
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
        return io.BufferedReader(DecryptingReader(raw, keys, identity, header, head), CHUNK)
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
