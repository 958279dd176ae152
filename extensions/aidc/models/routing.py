"""The routing table: what the models service tells the inference router.

The control plane (the models service: registry, deployments, canary weights, replica
health) and the data plane (the router, :mod:`aidc.models.router`, which answers
``/services/models/v2/.../infer``) are separate processes, so that an inference never
crosses the service that also takes uploads and runs the registry, and so that a restart
of either does not stop the other. Between them is one small JSON file, written by the
service whenever what it says changes (atomically: a new file renamed over the old one)
and read by the router whenever its modification time changes. A file rather than a
connection because it outlives both writer and reader: a router that starts reads the
last table at once, and a models service that restarts leaves the router serving with
the table it last wrote.

The file is in the service's own data folder (mode 0700; both processes run as the
platform's account) and holds, per deployed model: its owner, visibility and groups
(so the router applies :mod:`aidc.services.visibility` itself), whether an admin opened
it to public read, and each served version's traffic weight and replicas (Unix socket,
ready).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: the table's file name in ``<data-dir>/models/``
FILE_NAME = "routes.json"
#: the router's request counts (:meth:`aidc.models.endpoint_metrics.EndpointMetrics.snapshot`),
#: which the models service adds to its own in its metrics and deployment status
#: (one file per router process, ``router-stats-<worker>.json``)
STATS_GLOB = "router-stats-*.json"


def table_path(data_dir: str | os.PathLike) -> Path:
    """Where the models service writes the table and the router reads it."""
    return Path(data_dir) / "models" / FILE_NAME


def stats_path(data_dir: str | os.PathLike, worker: int) -> Path:
    """Where router process ``worker`` writes its request counts."""
    return Path(data_dir) / "models" / STATS_GLOB.replace("*", str(worker))


def read_stats(data_dir: str | os.PathLike) -> list[dict]:
    """Every router process's request counts (for the models service to add up)."""
    return [s for p in sorted((Path(data_dir) / "models").glob(STATS_GLOB))
            if (s := read_json(p)) is not None]


def write_json(path: Path, data) -> None:
    """Replace the file at ``path`` at once (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(path: Path, table: dict) -> None:
    """Replace the routing table at ``path`` (``{model name: entry}``, as :func:`parse` reads)."""
    write_json(path, {"version": 1, "models": table})


def read_json(path: Path, default=None):
    """The file's data; ``default`` when it is missing or being replaced."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


@dataclass
class ServedEntry:
    """One served version as the router sees it."""

    version: int
    weight: float
    #: the replicas' Unix sockets and whether the service last found each ready
    replicas: list[tuple[str, bool]]


@dataclass
class ModelEntry:
    """One deployed model as the router sees it."""

    name: str
    owner: str
    visibility: str
    groups: list[str]
    public: bool
    served: list[ServedEntry]

    def as_resource(self) -> dict:
        """What :meth:`aidc.services.visibility.Caller.can_see` takes."""
        return {"owner": self.owner, "visibility": self.visibility, "groups": self.groups}


def parse(data: dict) -> dict[str, ModelEntry]:
    out = {}
    for name, m in (data.get("models") or {}).items():
        served = [ServedEntry(int(s["version"]), float(s["weight"]),
                              [(r["socket"], bool(r["ready"])) for r in s["replicas"]])
                  for s in m["served"]]
        out[name] = ModelEntry(name, m["owner"], m.get("visibility") or "private",
                               list(m.get("groups") or ()), bool(m.get("public")), served)
    return out


class TableReader:
    """The router's view of the table, read again when the file changes.

    ``get`` looks at the file's modification time at most every ``interval`` seconds;
    ``get(name, fresh=True)`` looks now (a model the router does not know may have been
    deployed a moment ago: the service writes the table before it answers the deploy).
    """

    def __init__(self, path: Path, interval: float = 0.1):
        self.path = path
        self.interval = interval
        self.models: dict[str, ModelEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        #: bumped whenever a new table is read (the router rebuilds its replica pools then)
        self.generation = 0

    def refresh(self) -> bool:
        """Read the file if it changed; whether it did."""
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is None:
                return False
            self._stamp, self.models = None, {}
            self.generation += 1
            return True
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return False
        try:
            with open(self.path) as f:
                models = parse(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            return False  # being replaced, or damaged: keep serving with the last good table
        self._stamp, self.models = stamp, models
        self.generation += 1
        return True

    def get(self, name: str, fresh: bool = False) -> ModelEntry | None:
        if fresh or time.monotonic() - self._checked >= self.interval:
            self.refresh()
        return self.models.get(name)
