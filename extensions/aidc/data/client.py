"""``aidc.data.put`` / ``get`` / ``path`` / ``open`` ...: datasets through the one client.

Credentials as everywhere in aidc (:class:`aidc.client.Client`): inside a user's server
or a job nothing needs configuring; elsewhere ``AIDC_URL`` and ``AIDC_TOKEN``.

Reads go through a local cache (``$AIDC_DATA_CACHE``, else ``~/.cache/aidc/datasets``),
one folder per version and content hash, filled once and checked against the
service's sha256: versions never change, so a cached copy never goes stale. Inside a
job (``AIDC_JOB_ID`` set) every read is also reported to the job as a display output
of type :data:`aidc.jobs.metrics.DATASET_MIME`, so the job records which versions it
read, and a model registered from it names them in its lineage (the read returns once the
job's record lists it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import quote

from ..client import Client
from ..errors import AidcError, NotFoundError, PlatformError, UsageError
from .names import check_name, parse_version

API = "services/data/api"
CHUNK = 1024 * 1024
#: file names the Python API stores a table and arrays under
TABLE_PARQUET, TABLE_CSV, ARRAYS = "data.parquet", "data.csv", "data.npz"

#: seconds a read inside a job waits for the job's record to list it
RECORD_WAIT = 10.0
#: (name, version) already reported to the running job
_reported: set[tuple[str, int]] = set()


class DatasetVersion:
    """One stored, immutable version of a dataset."""

    def __init__(self, data: dict):
        self._data = data

    def __repr__(self) -> str:
        return f"<DatasetVersion {self.name} v{self.version} {len(self.files)} file(s), {self.size} bytes>"

    name = property(lambda self: self._data["name"])
    version = property(lambda self: self._data["version"])
    files = property(lambda self: [dict(f) for f in self._data["files"]])
    size = property(lambda self: self._data["size"])
    sha256 = property(lambda self: self._data["sha256"])
    data = property(lambda self: dict(self._data))


def _client(client: Client | None) -> Client:
    return client or Client()


def _seg(text: str, safe: str = "") -> str:
    """``text`` as a URL path segment."""
    return quote(str(text), safe=safe)


def _name(name: str) -> str:
    """A dataset name checked here (the service checks it too): '..' would be resolved away
    by HTTP libraries and proxies before the service could refuse it."""
    return _seg(check_name(name))


def _ref(version: int | str | None) -> str:
    ref = parse_version(version)
    return "latest" if ref is None else _seg(str(ref))


# -- writing ---------------------------------------------------------------------------
def put(name: str, source: Any, *, description: str = "", visibility: str | None = None,
        alias: str | None = None, client: Client | None = None) -> DatasetVersion:
    """Store ``source`` as the next version of dataset ``name``.

    ``source``: a file or folder path, a list of paths (a folder keeps its name as a
    prefix), a pandas DataFrame (stored as ``data.parquet``, or ``data.csv`` without
    pyarrow) or a dict of NumPy arrays (``data.npz``). ``visibility``: ``private`` (you
    and admins), ``group`` (also your groups) or ``public`` (everyone signed in); a new
    dataset is private unless told otherwise, an existing one keeps its visibility unless
    one is given. ``alias``
    (e.g. ``train-2026-12``) is pointed at the new version. Files are streamed, never
    read into memory whole; the version exists only once every file arrived intact.
    """
    c = _client(client)
    base = f"{API}/datasets/{_name(name)}/uploads"
    with tempfile.TemporaryDirectory(prefix="aidc-data-") as tmp:
        files = _collect(source, Path(tmp))
        declared = [{"name": n, "size": p.stat().st_size, "sha256": _sha256(p)} for n, p in files]
        body: dict[str, Any] = {"files": declared}
        if visibility is not None:
            body["visibility"] = visibility
        if description:
            body["description"] = description
        if alias is not None:
            body["alias"] = alias
        upload = c.request("POST", base, json=body).json()["upload"]
        try:
            for fname, path in files:
                c.request("PUT", f"{base}/{upload}/files/{_seg(fname, safe='/')}",
                          data=_chunks(path), headers={"Content-Type": "application/octet-stream"},
                          timeout=3600)
            version = c.request("POST", f"{base}/{upload}").json()
        except BaseException:
            try:
                c.request("DELETE", f"{base}/{upload}", timeout=30)
            except Exception:
                pass  # the service drops abandoned uploads itself
            raise
    return DatasetVersion(version)


def _collect(source: Any, tmp: Path) -> list[tuple[str, Path]]:
    """(name in the dataset, local file) for each file ``source`` stands for."""
    if isinstance(source, dict):
        import numpy as np

        path = tmp / ARRAYS
        try:
            np.savez(path, **{str(k): np.asarray(v) for k, v in source.items()})
        except (TypeError, ValueError) as e:
            raise UsageError(f"a dict source must map names to NumPy arrays: {e}") from None
        return [(ARRAYS, path)]
    if type(source).__module__.startswith("pandas") and hasattr(source, "to_csv"):
        if _has_pyarrow():
            path = tmp / TABLE_PARQUET
            source.to_parquet(path)
        else:
            path = tmp / TABLE_CSV
            source.to_csv(path, index=False)
        return [(path.name, path)]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _folder(path, prefix="")
        return [_one_file(path)]
    if isinstance(source, (list, tuple)) and source:
        found: list[tuple[str, Path]] = []
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise UsageError(f"a list source holds paths, not {type(item).__name__}")
            path = Path(item)
            found += _folder(path, prefix=f"{path.resolve().name}/") if path.is_dir() else [_one_file(path)]
        names = [n for n, _ in found]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"two files would be stored as {', '.join(dupes)}: rename one, "
                             "or put their folder instead")
        return found
    raise UsageError("put() stores a file or folder path, a list of paths, a pandas DataFrame "
                     f"or a dict of NumPy arrays, not {type(source).__name__}")


def _one_file(path: Path) -> tuple[str, Path]:
    if not path.is_file():
        raise UsageError(f"{path} does not exist (or is not a file or folder)")
    return path.name, path


def _folder(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise UsageError(f"{folder} holds no files")
    return [(prefix + p.relative_to(folder).as_posix(), p) for p in files]


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _chunks(path: Path) -> Iterator[bytes]:
    """The file in pieces: requests sends a generator with chunked transfer encoding,
    so neither side holds the whole file."""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def alias(name: str, alias: str, version: int | str, client: Client | None = None) -> dict:
    """Point ``alias`` (e.g. ``train-2026-12``) at ``version`` of ``name``."""
    return _client(client).request("PUT", f"{API}/datasets/{_name(name)}/aliases/{_seg(alias)}",
                                   json={"version": version}).json()


# -- reading ---------------------------------------------------------------------------
def list_datasets(client: Client | None = None) -> list[dict]:
    """The datasets you can see: yours, your groups' and public ones."""
    return _client(client).get_json(f"{API}/datasets")["datasets"]


def show(name: str, client: Client | None = None) -> dict:
    """A dataset: owner, visibility, description, its versions (files, sizes, hashes), aliases."""
    return _client(client).get_json(f"{API}/datasets/{_name(name)}")


def version_info(name: str, version: int | str | None = None, client: Client | None = None) -> dict:
    """One version's record (``version``: a number, an alias, or None for the latest)."""
    return _client(client).get_json(f"{API}/datasets/{_name(name)}/versions/{_ref(version)}")


def get(name: str, version: int | str | None = None, client: Client | None = None) -> Any:
    """A dataset version's content, in the form its files suggest.

    One ``.npz`` file: a dict of NumPy arrays; one ``.parquet`` or ``.csv`` file: a pandas
    DataFrame; anything else: the local folder holding its files (as :func:`path`).
    """
    c = _client(client)
    info = version_info(name, version, client=c)
    folder = _fetch(c, info, [f["name"] for f in info["files"]])
    if len(info["files"]) == 1:
        only = folder / info["files"][0]["name"]
        if only.suffix == ".npz":
            import numpy as np

            with np.load(only, allow_pickle=False) as arrays:
                return {k: arrays[k] for k in arrays.files}
        if only.suffix == ".parquet":
            import pandas as pd
            return pd.read_parquet(only)
        if only.suffix == ".csv":
            import pandas as pd
            return pd.read_csv(only)
    return folder


def path(name: str, version: int | str | None = None, client: Client | None = None) -> Path:
    """The local folder holding a version's files (downloaded once into the cache)."""
    c = _client(client)
    info = version_info(name, version, client=c)
    return _fetch(c, info, [f["name"] for f in info["files"]])


def open_file(name: str, file: str, version: int | str | None = None,
              client: Client | None = None) -> IO[bytes]:
    """One file of a version, opened for binary reading (only that file is downloaded)."""
    c = _client(client)
    info = version_info(name, version, client=c)
    names = [f["name"] for f in info["files"]]
    if file not in names:
        raise NotFoundError(f"dataset {name!r} version {info['version']} has no file {file!r}; "
                            f"its files: {', '.join(names)}")
    return (_fetch(c, info, [file]) / file).open("rb")


def cache_root() -> Path:
    configured = os.environ.get("AIDC_DATA_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "aidc" / "datasets"


def _fetch(c: Client, info: dict, wanted: list[str]) -> Path:
    """The cache folder of version ``info`` with the files ``wanted`` in it, each checked."""
    folder = cache_root() / info["name"] / f"{info['version']}-{info['sha256'][:16]}"
    by_name = {f["name"]: f for f in info["files"]}
    for fname in wanted:
        target = folder / fname
        if target.is_file() and target.stat().st_size == by_name[fname]["size"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        h = hashlib.sha256()
        url = (f"{API}/datasets/{_name(info['name'])}/versions/{info['version']}"
               f"/files/{_seg(fname, safe='/')}")
        try:
            with c.request("GET", url, stream=True, timeout=3600) as r, partial.open("wb") as out:
                for chunk in r.iter_content(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != by_name[fname]["sha256"]:
                raise PlatformError(f"{fname} of dataset {info['name']} v{info['version']} arrived "
                                    "damaged (its sha256 differs from the stored one); try again")
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)
    _report(c, info)
    return folder


def _report(c: Client, info: dict) -> None:
    """Inside a job: tell the job which dataset version it read (once per version), and
    wait until the job's record lists it, so that a model registered right after names it
    in its lineage."""
    key = (info["name"], info["version"])
    job_id = os.environ.get("AIDC_JOB_ID")
    if not job_id or key in _reported:
        return
    _reported.add(key)
    from ..jobs.metrics import DATASET_MIME
    try:
        from IPython.display import display
    except ImportError:
        return
    payload = {"name": info["name"], "version": info["version"], "sha256": info["sha256"]}
    display({DATASET_MIME: payload, "text/plain": f"read dataset {info['name']} v{info['version']}"},
            raw=True)
    deadline = time.monotonic() + RECORD_WAIT
    try:
        while time.monotonic() < deadline:
            job = c.get_json(f"services/jobs/api/jobs/{quote(job_id, safe='')}")
            if any((d.get("name"), d.get("version")) == key for d in job.get("datasets") or []):
                return
            time.sleep(0.1)
    except AidcError:
        pass  # no jobs service to ask: the read is recorded all the same, only later
