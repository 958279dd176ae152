"""The platform's artifact store: files kept under one fsspec URL, for every service.

Jobs keep their input snapshots and output notebooks here, the model registry its
version artifacts, the datasets service its files. The root is a local folder by
default; ``s3://``, ``gs://``, ``abfs://``, ``memory://`` or any other fsspec protocol
works the same (the matching fsspec backend installed, credentials in the environment).

Writes are atomic publishes: the bytes go to a temporary name beside the target and are
moved to the target only when the write completed, so an interrupted upload leaves
nothing under the target name (:meth:`ArtifactStore.open_write`,
:meth:`ArtifactStore.put_dir`). The module-level functions take full URLs, for code that
has a URL but no store (a Dask worker given a job's ``input_url``).

Encryption at rest is decided here too, once per root: :func:`encrypt_under` makes every
file written below a root encrypted (:mod:`aidc.security.crypto`, the file's path below
the root as its identity) and every file read there decrypted, so the code that writes and
reads objects does not change. Files stored before encryption was turned on stay readable.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import uuid
from pathlib import Path
from typing import IO, Iterator

import fsspec
from traitlets import Unicode
from traitlets.config import LoggingConfigurable


#: root URL -> the key ring its objects are encrypted with (:func:`encrypt_under`)
_ENCRYPTED: dict[str, object] = {}
#: plaintext kept in memory when a reader needs to seek in a decrypted object (a zip or
#: Parquet file); past that, an anonymous temporary file (unlinked from the start, 0600)
SEEKABLE_IN_MEMORY = 64 * 2**20


def encrypt_under(root: str, keys) -> None:
    """Encrypt what is written below ``root`` from now on, with ``keys`` (a
    :class:`aidc.security.keys.KeyRing`), and decrypt what is read there.

    ``keys`` may instead choose the keys per object: an object with a ``for_identity``
    method is asked for the wrapper of each object's identity (the jobs' root gives each
    job its own key, :mod:`aidc.jobs.jobkeys`)."""
    _ENCRYPTED[root.rstrip("/")] = keys


def encrypted_root(root: str):
    """The keys registered for ``root`` by :func:`encrypt_under`, or None."""
    return _ENCRYPTED.get(root.rstrip("/"))


def encryption_of(url: str):
    """``(keys, identity)`` when ``url`` is below an encrypted root, else None."""
    for root, keys in _ENCRYPTED.items():
        if url.startswith(root + "/"):
            identity = url[len(root) + 1:]
            chooser = getattr(keys, "for_identity", None)
            return (chooser(identity) if chooser else keys), identity
    return None


class ArtifactStore(LoggingConfigurable):
    """Reads and writes artifacts under one fsspec root URL.

    Methods take full URLs (as records keep them) and are the module functions of the
    same names (documented there); :meth:`url_for` names a URL under the root.
    """

    url = Unicode(help="""fsspec URL of the root folder (a local path for local disk).""")

    def url_for(self, *parts: str) -> str:
        """The URL of ``parts`` (path components) under the root."""
        return "/".join([self.url.rstrip("/"), *(str(p).strip("/") for p in parts)])

    def open_write(self, url: str):
        return open_write(url)

    def open_read(self, url: str) -> IO[bytes]:
        return open_read(url)

    def write_bytes(self, url: str, data: bytes) -> None:
        write_bytes(url, data)

    def read_bytes(self, url: str) -> bytes | None:
        return read_bytes(url)

    def put_dir(self, local: str | Path, url: str, move: bool = False) -> None:
        put_dir(local, url, move)

    def exists(self, url: str) -> bool:
        return exists(url)

    def delete(self, url: str) -> None:
        delete(url)

    def ls(self, url: str) -> list[str]:
        return ls(url)


def local_path(url: str) -> str | None:
    """The local file behind ``url``, or None for a remote store."""
    if "://" not in url:
        return url
    if url.startswith("file://"):
        return url[len("file://"):]
    return None


def _fs(url: str):
    return fsspec.core.url_to_fs(url)


def _temporary(path: str) -> str:
    """A name beside ``path`` that no reader looks for, unique per writer."""
    head, _, tail = path.rstrip("/").rpartition("/")
    name = f".{tail}.{uuid.uuid4().hex[:12]}.partial"
    return f"{head}/{name}" if head else name


def _make_parent(fs, path: str) -> None:
    parent = path.rstrip("/").rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)


@contextlib.contextmanager
def open_write(url: str) -> Iterator[IO[bytes]]:
    """A binary file to stream ``url``'s bytes into, published when the block ends cleanly.

    Until then the bytes sit under a temporary name; an exception inside the block (or a
    crash) leaves ``url`` as it was (absent, or its previous content).
    """
    fs, path = _fs(url)
    _make_parent(fs, path)
    tmp = _temporary(path)
    encrypted = encryption_of(url)
    try:
        with fs.open(tmp, "wb") as f:
            if encrypted is None:
                yield f
            else:
                from .security.crypto import open_encrypted_write

                sealed = open_encrypted_write(f, *encrypted)
                try:
                    yield sealed
                except BaseException:
                    sealed.abandon()  # its chunk on the way written before the file closes
                    raise
                sealed.close()  # the last chunk, before the file is published
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise


def open_read(url: str, seekable: bool = False) -> IO[bytes]:
    """``url`` opened for binary reading (``FileNotFoundError`` when it does not exist),
    decrypted below an encrypted root; ``seekable`` for readers that seek (zip, Parquet)."""
    fs, path = _fs(url)
    raw = fs.open(path, "rb")
    encrypted = encryption_of(url)
    if encrypted is None:
        return raw
    from .security.crypto import open_decrypted_read

    # the store replaces an object by renaming a new file over it, never in place: its
    # local files can be opened from a mapping of them
    plain = open_decrypted_read(raw, *encrypted, mapped=local_path(url) is not None)
    if not seekable or plain is raw:
        return plain
    import tempfile

    copy = tempfile.SpooledTemporaryFile(max_size=SEEKABLE_IN_MEMORY)
    with plain:
        shutil.copyfileobj(plain, copy, 1 << 20)
    copy.seek(0)
    return copy


def write_bytes(url: str, data: bytes) -> None:
    """Publish ``data`` at ``url`` atomically."""
    with open_write(url) as f:
        f.write(data)


def read_bytes(url: str) -> bytes | None:
    """The bytes at ``url``, or None when there are none."""
    try:
        with open_read(url) as f:
            return f.read()
    except FileNotFoundError:
        return None


def put_dir(local: str | Path, url: str, move: bool = False) -> None:
    """Upload the local folder ``local`` to ``url`` (absent before), atomically.

    The copy is made under a temporary name and moved to ``url`` once complete. With
    ``move``, a local store takes the folder itself (renamed, not copied: the caller
    gives it up); a remote store copies it either way.
    """
    fs, path = _fs(url)
    _make_parent(fs, path)
    tmp = _temporary(path)
    encrypted = encryption_of(url)
    try:
        if encrypted is not None:
            _put_encrypted(fs, Path(local), tmp, *encrypted, given_up=move)
        elif move and local_path(url) is not None:
            shutil.move(str(local), tmp)
        else:
            fs.put(str(local).rstrip("/") + "/", tmp, recursive=True)
        fs.mv(tmp, path, recursive=True)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)
        raise
    if encrypted is not None and move:
        shutil.rmtree(local, ignore_errors=True)  # the plaintext the caller gave up


def _put_encrypted(fs, local: Path, tmp: str, keys, identity: str, given_up: bool) -> None:
    """Each file of ``local`` encrypted into the folder ``tmp``, under the identity it will
    have once ``tmp`` is moved to its name (``identity``); ``given_up``: the caller gave
    ``local`` up (``move``), so nothing writes its files while they are sealed."""
    from .security.crypto import seal_file

    for source in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = source.relative_to(local).as_posix()
        _make_parent(fs, f"{tmp}/{rel}")
        with fs.open(f"{tmp}/{rel}", "wb") as raw, open(source, "rb", buffering=0) as f:
            seal_file(f, raw, keys, f"{identity}/{rel}", given_up=given_up)


def copy_out(url: str, target: str | Path) -> Path:
    """The file or folder at ``url`` copied to the local path ``target`` as plaintext
    (decrypted below an encrypted root): for a process that needs files on disk (a model
    replica), in a private folder the caller removes."""
    fs, path = _fs(url)
    target = Path(target)
    if not fs.isdir(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        from .security.crypto import copy_stream

        with open_read(url) as f, open(target, "wb") as out:
            copy_stream(f, out, expect=fs.size(path))  # the stored size: the most it holds
        return target
    for found in sorted(fs.find(path)):
        rel = found[len(path.rstrip("/")) + 1:]
        copy_out(f"{url.rstrip('/')}/{rel}", target / rel)
    target.mkdir(parents=True, exist_ok=True)
    return target


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return fs.exists(path)


def delete(url: str) -> None:
    """Remove the file or folder at ``url``; nothing there is no error."""
    fs, path = _fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def ls(url: str) -> list[str]:
    """The names (not paths) directly inside the folder ``url``; [] when it does not exist."""
    fs, path = _fs(url)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


def local_copy(url: str, cache: str | Path) -> Path:
    """The folder or file at ``url`` on local disk: itself when local, else a copy cached
    under ``cache`` (downloaded once: artifacts are never written again once published).
    Not for objects below an encrypted root (their bytes are ciphertext): :func:`copy_out`."""
    local = local_path(url)
    if local is not None:
        return Path(local)
    target = Path(cache) / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not target.exists():
        fs, path = _fs(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial-" + uuid.uuid4().hex[:8])
        try:
            if fs.isdir(path):
                fs.get(path.rstrip("/") + "/", str(partial), recursive=True)
            else:
                fs.get(path, str(partial))
            partial.rename(target)
        except OSError:
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            partial.unlink(missing_ok=True)
            if not target.exists():  # else another reader published the same copy first
                raise
    return target
