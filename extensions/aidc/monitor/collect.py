"""The collector: samples the GPUs and the host at an interval, records them in the
:class:`~aidc.monitor.store.MetricStore`, and keeps the latest snapshot for the API and
the Prometheus exposition.

Sampling runs in a worker thread (NVML, ``/proc`` and the database block), so the
service's event loop keeps answering. A failing reading (NVML, the database, a full
disk) is logged and shown in the snapshot's ``errors``; the next interval tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

from traitlets import Float
from traitlets.config import LoggingConfigurable

from ..gpu.inventory import MIG, SHARE, WHOLE
from .accounts import AccountUsage
from .catalog import METRICS
from .gpus import gpu_samples, read_gpus
from .host import host_sample

log = logging.getLogger("aidc.monitor")

class Held(NamedTuple):
    """A current holding, as attribution reads it (the fields of a ledger ``Claim`` it needs)."""

    holder: str
    owner: str
    units: list


GPU_FIGURES = [m for m in METRICS if m.startswith("gpu_") and m != "gpu_process_memory_bytes"
               and not m.startswith("gpu_queue_")]
#: the GPU queue's figures are given for every unit kind, 0 when none waits
QUEUE_KINDS = (WHOLE, MIG, SHARE)
#: an endpoint's figures beyond its requests and errors: (history name, key in the snapshot)
ENDPOINT_FIGURES = (("endpoint_request_seconds", "seconds"),
                    ("endpoint_latency_p50_seconds", "latency_p50_seconds"),
                    ("endpoint_latency_p99_seconds", "latency_p99_seconds"),
                    ("endpoint_batch_size_p50", "batch_size_p50"))


def rows_of(snapshot: dict, latest_users: bool = False) -> list[tuple[str, dict, float]]:
    """The ``(metric, labels, value)`` rows a snapshot is stored as; per-user rows only when
    the processes were walked at this sample, or (``latest_users``) from the last walk."""
    rows = []
    for g in snapshot["gpus"]:
        labels = {"gpu": g["gpu"], "uuid": g["uuid"]}
        rows += [(m, labels, g[m[len("gpu_"):]]) for m in GPU_FIGURES if m[len("gpu_"):] in g]
        per_holder: dict[tuple, float] = {}
        for p in g["processes"]:
            key = (p["user"] or p["account"] or "", p["holder"] or "")
            per_holder[key] = per_holder.get(key, 0.0) + p["used_bytes"]
        rows += [("gpu_process_memory_bytes", {**labels, "user": u, "holder": h}, v)
                 for (u, h), v in per_holder.items()]
    rows += [(m, {}, v) for m, v in snapshot["host"].items()]
    rows += hub_rows(snapshot.get("hub") or {})
    rows += jobs_rows(snapshot.get("jobs") or {})
    for e in (snapshot.get("endpoints") or {}).get("endpoints", []):
        labels = {"model": e["model"], "version": e["version"]}
        rows += [("endpoint_requests", labels, e["requests"]), ("endpoint_errors", labels, e["errors"])]
        rows += [(m, labels, e[key]) for m, key in ENDPOINT_FIGURES if e.get(key) is not None]
    if "gpu_queue" in snapshot:
        for kind in QUEUE_KINDS:
            q = snapshot["gpu_queue"].get(kind, {"claims": 0, "oldest_wait_seconds": 0.0})
            rows += [("gpu_queue_claims", {"kind": kind}, q["claims"]),
                     ("gpu_queue_oldest_wait_seconds", {"kind": kind}, q["oldest_wait_seconds"])]
    if latest_users or snapshot.get("users_time") == snapshot["time"]:
        for user, u in snapshot["users"].items():
            rows += [("user_cpu_percent", {"user": user}, u["cpu_percent"]),
                     ("user_memory_bytes", {"user": user}, u["memory_bytes"])]
            for holder, h in u.get("holders", {}).items():
                rows += [("holder_cpu_percent", {"user": user, "holder": holder}, h["cpu_percent"]),
                         ("holder_memory_bytes", {"user": user, "holder": holder}, h["memory_bytes"])]
    return rows


def hub_rows(hub: dict) -> list[tuple[str, dict, float]]:
    """The hub's figures (:func:`aidc.monitor.hub.hub_figures`) as stored rows."""
    rows = [(f"hub_{k}", {}, hub[k]) for k in ("users", "running_servers") if k in hub]
    rows += [("hub_active_users", {"period": p}, v) for p, v in hub.get("active_users", {}).items()]
    for status, spawns in hub.get("spawns", {}).items():
        rows += [("hub_spawns", {"status": status}, spawns["count"]),
                 ("hub_spawn_seconds", {"status": status}, spawns["sum"])]
    return rows


def jobs_rows(jobs: dict) -> list[tuple[str, dict, float]]:
    """The jobs service's figures (:meth:`aidc.monitor.jobs.JobsReader.read`) as stored rows."""
    if not jobs:
        return []
    return [*(("jobs_by_status", {"status": s}, float(n)) for s, n in jobs["counts"].items()),
            ("jobs_running_gpus", {}, float(jobs["running_gpus"])),
            ("jobs_oldest_wait_seconds", {}, float(jobs["oldest_wait_seconds"]))]


class Collector(LoggingConfigurable):
    """Samples at ``interval`` and records; :attr:`latest` is the newest snapshot."""

    interval = Float(
        1.0, min=0.1,
        help="""Seconds between samples of the GPUs and the host. Keep it equal to the
        step of the store's finest tier (`MetricStore.tiers`).""",
    ).tag(config=True)

    user_usage_every = Float(
        10.0, min=0.0,
        help="""Seconds between walks of every process for each user's CPU and memory
        (about 0.1 ms of CPU per process on the host); 0 turns it off.""",
    ).tag(config=True)

    maintain_every = Float(
        60.0, min=1.0,
        help="""Seconds between downsampling and pruning passes over the stored history
        (and over the GPU ledger's ended holdings, `Accounting.keep_ended_seconds`).""",
    ).tag(config=True)

    def __init__(self, store, ledger, data_dir: str, xids=None, accounting=None, hub=None, jobs=None,
                 endpoints=None, **kwargs):
        super().__init__(**kwargs)
        # other processes' figures, read every reader.every seconds: the hub's (a HubReader),
        # the jobs service's (a JobsReader), the models service's (an EndpointsReader); None: not read
        self.readers = {name: r for name, r in (("hub", hub), ("jobs", jobs), ("endpoints", endpoints))
                        if r is not None}
        self.store, self.ledger, self.data_dir = store, ledger, data_dir
        self.xids = xids  # an XidWatcher, or None: XID errors not counted
        self.accounting = accounting  # prunes the ledger's ended holdings with the history
        self.latest: dict | None = None
        self._maintained = 0.0
        self.accounts = AccountUsage()
        self._users, self._users_at = {}, None
        self._read: dict[str, tuple[dict, float, str | None]] = {}  # name -> (figures, when, error)
        self._task: asyncio.Task | None = None

    def sample(self, now: float) -> dict:
        """Read everything once and record it (blocking; errors go into ``errors``)."""
        errors = []
        try:
            # holdings: three queries, where claims() asks for each claim's units apart
            claims = [Held(h["holder"], h["owner"], h["units"])
                      for h in self.ledger.holdings(now, now + 1) if h["released"] is None]
            gpu_queue = {kind: {"claims": n, "oldest_wait_seconds": max(0.0, now - oldest)}
                         for kind, (n, oldest) in self.ledger.waiting().items()}
        except Exception as e:
            claims, gpu_queue, errors = [], None, [f"GPU ledger: {e}"]
        gpus, simulated = [], False
        try:
            inv = read_gpus()
            xids = self.xids.counts if self.xids is not None else None
            gpus, simulated = gpu_samples(inv, claims, xids=xids), inv.simulated
        except Exception as e:  # an NVML call that fails is reported, not a crash
            errors.append(f"NVML: {e}")
        try:
            host = host_sample(self.data_dir)
        except Exception as e:
            host, errors = {}, [*errors, f"host: {e}"]
        if self.user_usage_every and (self._users_at is None or now - self._users_at >= self.user_usage_every):
            try:
                self._users, self._users_at = self.accounts.sample(now), now
            except Exception as e:
                errors.append(f"processes: {e}")
        read = {}
        for name, reader in self.readers.items():
            figures, at, error = self._read.get(name, ({}, None, None))
            if reader.enabled and (at is None or now - at >= reader.every):
                try:
                    figures, at, error = reader.read(), now, None
                except Exception as e:  # restarting: its figures go until it answers
                    figures, at, error = {}, now, f"{name}: {e}"
                self._read[name] = figures, at, error
            read[name] = figures
            if error:
                errors.append(error)
        snapshot = {"time": now, "interval": self.interval, "simulated": simulated,
                    "gpus": gpus, "host": host, "users": self._users, "users_time": self._users_at,
                    **read, "errors": errors}
        if gpu_queue is not None:
            snapshot["gpu_queue"] = gpu_queue
        try:
            self.store.record(now, rows_of(snapshot))
            if now - self._maintained >= self.maintain_every:
                self.store.maintain(now)
                self._maintained = now
                if self.accounting is not None:
                    self.accounting.prune(self.ledger, now)
        except Exception as e:  # a full disk or a locked database: reported, next time again
            snapshot["errors"].append(f"history store: {e}")
        for error in snapshot["errors"]:
            if not self.latest or error not in self.latest["errors"]:
                log.error("aidc monitor: %s", error)
        self.latest = snapshot
        return snapshot

    async def run(self) -> None:
        """Sample forever at ``interval`` (until cancelled)."""
        while True:
            started = time.time()
            await asyncio.to_thread(self.sample, started)
            await asyncio.sleep(max(0.0, self.interval - (time.time() - started)))

    def start(self) -> None:
        if self.xids is not None:
            self.xids.start()
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self.xids is not None:
            await asyncio.to_thread(self.xids.stop)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
