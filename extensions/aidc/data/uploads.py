"""Receiving a dataset version: streamed files, hashed as they come, published whole.

An upload is a short session: the client declares the version's files (names, sizes,
sha256), which is when the owner's quota is checked (a 413 before a byte is sent);
then streams each file (:class:`FileWriter`: written chunk by chunk under a temporary
name through :mod:`aidc.artifacts`, hashed on the way, published under its own name only
when it is complete and its size and hash are the declared ones); then commits, which
writes the version row (:meth:`aidc.data.store.DatasetStore.add_version`). Until that row
exists there is no version: an interrupted or truncated file, an abandoned session or a
crash of the service leaves only files that :meth:`DatasetUploads.remove_orphans`
deletes.

Files live under one fsspec URL (:attr:`DatasetUploads.storage_url`), one folder per
version: ``<root>/<dataset>/<upload id>/<file>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from traitlets import Dict, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from .. import artifacts
from ..errors import ConflictError, NotFoundError, TooLargeError, UsageError
from ..paths import data_dir as platform_data_dir
from .names import check_alias, check_file_name, check_name, check_visibility
from .schema import describe
from .store import DatasetStore


def size_text(n: int) -> str:
    """``50 GiB``, ``1.5 MiB``, ``100 bytes``: a size as the messages state it."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


class QuotaExceeded(TooLargeError):
    """An upload would take its owner over their data quota (HTTP 413)."""


class TooLarge(TooLargeError):
    """A file is larger than the service takes in one upload (HTTP 413)."""


@dataclass
class Upload:
    """One upload session: the version being received, not yet published."""

    id: str
    name: str
    owner: str
    groups: list[str]
    files: dict[str, dict]  # name -> {"size", "sha256" (declared or None), "done": stored sha256}
    location: str
    description: str | None = None
    visibility: str | None = None
    alias: str | None = None
    #: opened by an admin, who may add versions to anyone's dataset
    admin: bool = False
    created: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.files.values())


class DatasetUploads(LoggingConfigurable):
    """Upload sessions, the per-user quota, and where the files are stored."""

    storage_url = Unicode(
        help="""fsspec URL of the folder holding every dataset's files (a local path, or
        s3://..., gs://..., with the matching fsspec backend). Default:
        `<data-dir>/datasets/files` on local disk.""",
    ).tag(config=True)

    quota_bytes = Integer(
        50 * 2**30,
        help="""Bytes of datasets a user may keep, all their versions together (uploads
        in progress count too). An upload that would go over is refused with 413 before
        any of it is sent. Per-user exceptions: :attr:`user_quotas`.""",
    ).tag(config=True)

    user_quotas = Dict(
        help="""Quota exceptions: user name -> bytes (``{"alice": 200 * 2**30}``).""",
    ).tag(config=True)

    max_file_bytes = Integer(
        20 * 2**30,
        help="""The largest single file one upload request may carry (bytes); a larger
        request body is answered 413. The data service's HTTP server is started with
        this limit; other requests keep small limits of their own.""",
    ).tag(config=True)

    upload_expiry = Integer(
        6 * 3600,
        help="""Seconds an unfinished upload session is kept before it and its files are
        dropped (its declared bytes stop counting against the quota).""",
    ).tag(config=True)

    data_dir = Unicode(help="The platform data directory.").tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(platform_data_dir().root)

    @default("storage_url")
    def _default_storage(self) -> str:
        return str(Path(self.data_dir).resolve() / "datasets" / "files")

    def __init__(self, store: DatasetStore, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.sessions: dict[str, Upload] = {}

    # -- quota ------------------------------------------------------------------------
    def quota_of(self, user: str) -> int:
        return int(self.user_quotas.get(user, self.quota_bytes))

    def used_by(self, user: str) -> int:
        """Stored versions plus the declared size of uploads in progress."""
        self.expire()
        pending = sum(u.size for u in self.sessions.values() if u.owner == user)
        return self.store.used_bytes(user) + pending

    # -- sessions ---------------------------------------------------------------------
    def begin(self, name: str, owner: str, groups: list[str], files: list, *,
              description: str | None = None, visibility: str | None = None,
              alias: str | None = None, admin: bool = False) -> Upload:
        """Open a session for a new version of ``name`` with the declared ``files``."""
        check_name(name)
        if visibility is not None:
            check_visibility(visibility)
        if alias is not None:
            check_alias(alias)
        if description is not None and not isinstance(description, str):
            raise UsageError("description must be a string")
        if not isinstance(files, list) or not files:
            raise UsageError("declare the version's files: a non-empty list of "
                             '{"name": ..., "size": bytes, "sha256": hex}')
        declared: dict[str, dict] = {}
        for f in files:
            if not isinstance(f, dict):
                raise UsageError("each file is an object with 'name', 'size' and 'sha256'")
            fname = check_file_name(f.get("name"))
            size = f.get("size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise UsageError(f"file {fname!r}: size must be a number of bytes, not {size!r}")
            if size > self.max_file_bytes:
                raise TooLarge(f"file {fname!r} is {size_text(size)}: one file may be at most "
                               f"{size_text(self.max_file_bytes)}")
            digest = f.get("sha256")
            if digest is not None and (not isinstance(digest, str) or len(digest) != 64
                                       or any(ch not in "0123456789abcdef" for ch in digest)):
                raise UsageError(f"file {fname!r}: sha256 must be 64 lowercase hex digits")
            if fname in declared or any(fname.startswith(other + "/") or other.startswith(fname + "/")
                                        for other in declared):
                raise UsageError(f"file {fname!r} is declared twice (or as a file and a folder)")
            declared[fname] = {"size": size, "sha256": digest, "done": None}
        total = sum(f["size"] for f in declared.values())
        quota, used = self.quota_of(owner), self.used_by(owner)
        if used + total > quota:
            raise QuotaExceeded(
                f"this upload of {total} bytes would take you over your data quota of "
                f"{size_text(quota)} (you use {size_text(used)}); ask an admin for more "
                "(c.DatasetUploads.user_quotas)")
        upload_id = uuid.uuid4().hex
        upload = Upload(id=upload_id, name=name, owner=owner, groups=list(groups), files=declared,
                        location=artifacts.ArtifactStore(url=self.storage_url).url_for(name, upload_id),
                        description=description, visibility=visibility, alias=alias, admin=admin)
        self.sessions[upload_id] = upload
        return upload

    def session(self, name: str, upload_id: str, owner: str) -> Upload:
        self.expire()
        upload = self.sessions.get(upload_id)
        if upload is None or upload.name != name or upload.owner != owner:
            raise NotFoundError(f"no upload {upload_id!r} of dataset {name!r} in progress "
                                "(it finished, was abandoned or expired): start the upload again")
        return upload

    def writer(self, upload: Upload, fname: str) -> FileWriter:
        if fname not in upload.files:
            raise NotFoundError(f"file {fname!r} was not declared in upload {upload.id}")
        if upload.files[fname]["done"] is not None:
            raise ConflictError(f"file {fname!r} of upload {upload.id} is already stored")
        declared = upload.files[fname]
        return FileWriter(f"{upload.location}/{fname}", fname, declared["size"], declared["sha256"])

    def commit(self, upload: Upload) -> dict:
        """Publish the version: every declared file stored and checked, then its row."""
        missing = [n for n, f in upload.files.items() if f["done"] is None]
        if missing:
            raise ConflictError(f"upload {upload.id} is incomplete: {', '.join(sorted(missing))} "
                                "not (completely) received; send them, then commit")
        files = [{"name": n, "size": f["size"], "sha256": f["done"],
                  **({"schema": f["schema"]} if f.get("schema") else {})}
                 for n, f in upload.files.items()]
        try:
            version = self.store.add_version(
                upload.name, upload.owner, upload.groups, files=files, location=upload.location,
                visibility=upload.visibility, description=upload.description, alias=upload.alias,
                admin=upload.admin)
        except Exception:
            self.abort(upload)
            raise
        self.sessions.pop(upload.id, None)
        return version

    def abort(self, upload: Upload) -> None:
        self.sessions.pop(upload.id, None)
        with contextlib.suppress(Exception):
            artifacts.delete(upload.location)

    def expire(self) -> None:
        now = time.monotonic()
        for upload in [u for u in self.sessions.values() if now - u.created > self.upload_expiry]:
            self.log.info("aidc data: dropping upload %s of %s (unfinished for %d s)",
                          upload.id, upload.name, self.upload_expiry)
            self.abort(upload)

    def remove_orphans(self) -> int:
        """Delete stored folders that no version names (what interrupted uploads and a
        crash left). Run when the service starts, before any upload can begin."""
        root = artifacts.ArtifactStore(url=self.storage_url)
        keep = {loc.rstrip("/") for loc in self.store.locations()}
        removed = 0
        for dataset in artifacts.ls(root.url):
            for folder in artifacts.ls(root.url_for(dataset)):
                url = root.url_for(dataset, folder)
                if url not in keep:
                    artifacts.delete(url)
                    removed += 1
        return removed


class FileWriter:
    """One file of an upload, streamed: chunks are hashed and written as they arrive.

    :meth:`finish` publishes the file under its name once exactly the declared number of
    bytes arrived with the declared hash and, for a format :func:`aidc.data.schema.describe`
    knows, reads as one (its :attr:`schema`); :meth:`abort` (a closed connection) drops
    what was written.
    """

    #: what the file holds (columns, arrays), for the formats aidc.data reads; else None
    schema: dict | None = None

    def __init__(self, url: str, name: str, size: int, sha256: str | None):
        self.url, self.name, self.size, self.expected = url, name, size, sha256
        self.received = 0
        self.hash = hashlib.sha256()
        self._stack = contextlib.ExitStack()
        self._file: IO[bytes] = self._stack.enter_context(artifacts.open_write(url))

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            self.abort()
            raise UsageError(f"file {self.name!r} is longer than the {self.size} bytes declared")
        self.hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> str:
        """Publish the file; returns its sha256."""
        digest = self.hash.hexdigest()
        if self.received != self.size:
            self.abort()
            raise UsageError(f"file {self.name!r} is incomplete: {self.received} of the "
                             f"{self.size} bytes declared arrived")
        if self.expected and digest != self.expected:
            self.abort()
            raise UsageError(f"file {self.name!r} arrived with sha256 {digest}, not the "
                             f"{self.expected} declared: it was changed or damaged on the way")
        self._stack.close()  # the bytes move to their own name
        try:
            self.schema = describe(self.url)
        except UsageError:
            artifacts.delete(self.url)
            raise
        return digest

    def abort(self) -> None:
        """Drop the partial file (the temporary name goes; nothing is published)."""
        self._stack.__exit__(ConnectionAbortedError, ConnectionAbortedError("upload interrupted"), None)
        self._stack = contextlib.ExitStack()

