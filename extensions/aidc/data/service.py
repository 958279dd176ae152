"""The data service at ``/services/data/``: named, versioned datasets of files.

A dataset belongs to its owner; its ``visibility`` opens it to the owner's groups
(``group``) or to everyone signed in (``public``), as models are; anyone else gets the
404 of a name that does not exist. Scientists and admins upload; only the owner and
admins add versions and move aliases. Versions are immutable: each upload is the next
number, with a sha256 per file and per version; ``latest`` always means the newest.

Uploads are streamed into storage and checked against the owner's quota
(:mod:`aidc.data.uploads`). The API is described by ``openapi.yaml`` beside this
module, served at ``/api/openapi.json`` and ``/api/openapi.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from tornado import web
from tornado.log import app_log

from .. import artifacts, roles
from ..db import iso
from ..errors import NotFoundError
from ..services.base import (
    OpenAPIHandler,
    ServiceApp,
    ServiceHandler,
    needs_role,
    run_service,
    signed_in,
)
from ..security.keys import Encryption, KeyRing
from ..services.declare import ManagedService, python_command
from ..services.visibility import owned, visible
from .names import check_file_name, check_name
from .store import DatasetStore
from .uploads import DatasetUploads, FileWriter

OPENAPI = Path(__file__).with_name("openapi.yaml")
#: JSON request bodies (upload declarations, aliases)
MAX_JSON_BODY = 1024 * 1024
#: file chunks sent to a client per write
READ_CHUNK = 1024 * 1024
UPLOADING = "uploading datasets needs the scientist role"


class DataHandler(ServiceHandler):
    max_body_bytes = MAX_JSON_BODY

    @property
    def store(self) -> DatasetStore:
        return self.settings["store"]

    @property
    def uploads(self) -> DatasetUploads:
        return self.settings["uploads"]

    def visible_dataset(self, name: str) -> dict:
        check_name(name)
        missing = f"no dataset {name!r}"
        try:
            dataset = self.store.dataset(name)
        except NotFoundError:
            raise NotFoundError(missing) from None
        return dict(visible(self.caller, dataset, missing))

    def owned_dataset(self, name: str) -> dict:
        dataset = self.visible_dataset(name)
        return dict(owned(self.caller, dataset, f"only the owner of dataset {name!r} "
                          f"({dataset['owner']}) and admins may change it"))

    def writable(self, name: str) -> None:
        """The caller may add a version to ``name``: a new name, or a dataset of theirs.

        Someone else's dataset out of the caller's sight answers as if the name were free
        to see but not to take: 404, saying nothing of whose it is."""
        check_name(name)
        try:
            dataset = self.store.dataset(name)
        except NotFoundError:
            return
        if not self.caller.can_see(dataset):
            raise NotFoundError(f"no dataset {name!r} you may add versions to; choose another name")
        self.owned_dataset(name)

    def dataset_view(self, dataset: dict) -> dict:
        name = dataset["name"]
        return {"name": name, "owner": dataset["owner"], "visibility": dataset["visibility"],
                "description": dataset["description"] or "", "created": iso(dataset["created"]),
                "versions": [version_view(v) for v in self.store.versions(name)],
                "aliases": self.store.aliases(name)}


def version_view(v: dict) -> dict:
    return {"name": v["name"], "version": v["version"], "files": v["files"], "size": v["size"],
            "sha256": v["sha256"], "description": v["description"] or "",
            "created_by": v["created_by"], "created": iso(v["created"])}


class DatasetsCollection(DataHandler):
    @signed_in
    def get(self):
        found = [d for d in self.store.find_datasets() if self.caller.can_see(d)]
        self.write_json({"datasets": [self.dataset_view(d) for d in found]})


class DatasetResource(DataHandler):
    @signed_in
    def get(self, name):
        self.write_json(self.dataset_view(self.visible_dataset(name)))


class UploadsCollection(DataHandler):
    """``POST``: declare a new version's files (``name``, ``size``, ``sha256``); the quota is
    checked here, before anything is sent."""

    @needs_role(roles.SCIENTIST, refused=UPLOADING)
    def post(self, name):
        self.writable(name)
        body = self.json_body()
        upload = self.uploads.begin(
            name, self.user_name, self.groups, body.get("files"),
            description=body.get("description"), visibility=body.get("visibility"),
            alias=body.get("alias"), admin=self.caller.is_admin)
        self.write_json({"upload": upload.id, "name": name,
                         "files": sorted(upload.files), "size": upload.size}, status=201)


class UploadResource(DataHandler):
    """``POST``: commit (publish the version); ``DELETE``: abandon the upload."""

    @needs_role(roles.SCIENTIST, refused=UPLOADING)
    def post(self, name, upload_id):
        self.writable(name)
        upload = self.uploads.session(name, upload_id, self.user_name)
        version = self.uploads.commit(upload)
        self.audit("dataset", "put", f"{name}@{version['version']}", bytes=version["size"])
        app_log.info("aidc data: %s published %s v%d (%d files, %d bytes)", self.user_name,
                      name, version["version"], len(version["files"]), version["size"])
        self.write_json(version_view(version), status=201)

    @needs_role(roles.SCIENTIST, refused=UPLOADING)
    def delete(self, name, upload_id):
        self.uploads.abort(self.uploads.session(name, upload_id, self.user_name))
        self.set_status(204)
        self.finish()


@web.stream_request_body
class UploadFile(DataHandler):
    """``PUT``: one declared file's bytes, streamed to storage as they arrive.

    The caller, the upload and the file are checked in ``prepare()``, before the body
    is read; the body may be at most the file's declared size (a longer one is a 413
    from the service's HTTP server, :class:`aidc.services.http.NoDelayHTTPServer`).
    A body over the server's default limit must come with chunked transfer encoding
    (the aidc client sends it so). A connection closed before the end drops the partial
    file: the upload cannot be committed until the file is sent again in full.
    """

    max_body_bytes = None  # the declared size, set on the connection in prepare()
    writer: FileWriter | None = None

    async def prepare(self):
        await super().prepare()
        if self.current_user is None:
            raise web.HTTPError(401, "Authentication required: send a hub API token")
        if self.request.method != "PUT":
            raise web.HTTPError(405, "send the file with PUT")
        if not roles.holds(self.role, roles.SCIENTIST):
            raise web.HTTPError(403, UPLOADING)
        name, upload_id, fname = self.path_args  # tornado has decoded them
        self.writable(name)
        check_file_name(fname)
        upload = self.uploads.session(name, upload_id, self.user_name)
        writer = self.uploads.writer(upload, fname)
        self.request.connection.set_max_body_size(max(writer.size, 1))
        self.upload, self.writer = upload, writer

    def data_received(self, chunk: bytes) -> None:
        if self.writer is not None and not self._finished:
            try:
                self.writer.write(chunk)
            except Exception:
                self.writer = None
                raise

    def on_connection_close(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        super().on_connection_close()

    def on_finish(self) -> None:
        if self.writer is not None and self.get_status() >= 400:
            self.writer.abort()
            self.writer = None

    @signed_in
    def put(self, name, upload_id, fname):
        writer, self.writer = self.writer, None
        digest = writer.finish()
        self.upload.files[writer.name].update(done=digest, schema=writer.schema)
        self.write_json({"name": writer.name, "size": writer.size, "sha256": digest,
                         "schema": writer.schema})


class VersionResource(DataHandler):
    @signed_in
    def get(self, name, ref):
        self.visible_dataset(name)
        self.write_json(version_view(self.store.version(name, ref)))


class FileDownload(DataHandler):
    """A version's file, streamed from storage."""

    @signed_in
    async def get(self, name, ref, fname):
        self.visible_dataset(name)
        version = self.store.version(name, ref)
        entry = next((f for f in version["files"] if f["name"] == fname), None)
        if entry is None:
            raise NotFoundError(f"dataset {name!r} version {version['version']} has no file {fname!r}; "
                                f"its files: {', '.join(f['name'] for f in version['files'])}")
        self.audit("dataset", "get", f"{name}@{version['version']}/{fname}", bytes=entry["size"])
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(entry["size"]))
        self.set_header("X-Aidc-Sha256", entry["sha256"])
        with artifacts.open_read(f"{version['location']}/{fname}") as f:
            while chunk := f.read(READ_CHUNK):
                self.write(chunk)
                await self.flush()
        self.finish()


class AliasResource(DataHandler):
    @signed_in
    def put(self, name, alias):
        self.owned_dataset(name)
        body = self.json_body()
        result = self.store.set_alias(name, alias, body.get("version"))
        self.audit("dataset", "set-alias", f"{name}@{alias}", reason=f"now version {body.get('version')}")
        self.write_json(result)


class QuotaHandler(DataHandler):
    @signed_in
    def get(self):
        self.write_json({"quota": self.uploads.quota_of(self.user_name),
                         "used": self.uploads.used_by(self.user_name),
                         "max_file_bytes": self.uploads.max_file_bytes})


class UnknownPath(DataHandler):
    """Any other ``/api/...`` path: a JSON 404; below ``/api/datasets/``, where a name with
    a ``/`` in it lands, a 400 that says so."""

    def prepare(self):
        if "/api/datasets/" in self.request.path:
            raise web.HTTPError(400, f"no such data API path {self.request.path}: a dataset name "
                                "has no '/' or '..' in it (see api/openapi.json)")
        raise web.HTTPError(404, f"no such data API path {self.request.path} (see api/openapi.json)")


ROUTES = [
    (r"/api/datasets", DatasetsCollection),
    (r"/api/datasets/([^/]+)", DatasetResource),
    (r"/api/datasets/([^/]+)/uploads", UploadsCollection),
    (r"/api/datasets/([^/]+)/uploads/([^/]+)", UploadResource),
    (r"/api/datasets/([^/]+)/uploads/([^/]+)/files/(.+)", UploadFile),
    (r"/api/datasets/([^/]+)/versions/([^/]+)", VersionResource),
    (r"/api/datasets/([^/]+)/versions/([^/]+)/files/(.+)", FileDownload),
    (r"/api/datasets/([^/]+)/aliases/([^/]+)", AliasResource),
    (r"/api/quota", QuotaHandler),
    (r"/api/openapi\.(json|yaml)", OpenAPIHandler, {"document": OPENAPI}),
    (r"/api/.*", UnknownPath),
]


class DataApp(ServiceApp):
    """The data service's configuration (its classes' settings from the drop-ins)."""

    name = "aidc-data"

    @property
    def classes(self):
        return [DatasetStore, DatasetUploads, Encryption]


def main() -> None:
    app = DataApp.for_platform()
    data_dir = app.data_dir
    store = DatasetStore(config=app.config, data_dir=data_dir)
    uploads = DatasetUploads(store, config=app.config, data_dir=data_dir)
    keys = KeyRing.for_data_dir(data_dir, app.config)
    if keys is not None:  # datasets' files are encrypted at rest (aidc.security.crypto)
        keys.check(create=True)
        artifacts.encrypt_under(uploads.storage_url, keys)
    removed = uploads.remove_orphans()
    if removed:
        app.log.info("aidc data: removed %d unfinished upload(s) left from before", removed)
    run_service(ROUTES, store=store, uploads=uploads)


def managed_service() -> ManagedService:
    """Entry point (group ``aidc.services``): the data service declaration."""
    return ManagedService(
        name="data",
        command=python_command("aidc.data.service"),
        roles=[roles.SCIENTIST, roles.VIEWER],
        info={"description": "Named, versioned datasets"},
        display=False,
    )


if __name__ == "__main__":
    main()
