"""The metrics service at ``/services/metrics/``: GPU and host samples, their history,
GPU-hours accounting and Prometheus text.

Who sees what (the caller's aidc role, from their hub groups):

* admins and viewers (stakeholders) see everything;
* a scientist sees the platform's figures and totals, and of per-user figures (process
  GPU memory, accounting rows, whose claims wait in the GPU queue) only their own;
* ``/metrics`` (Prometheus text) needs an admin's or viewer's token: give a Prometheus
  scraper the token of a viewer account made for it.

Routes: ``api/current``, ``api/metrics`` (the catalogue), ``api/history?metric=&start=&end=&step=``,
``api/accounting?start=&end=``, ``api/accounting.csv?start=&end=&by=user|group``, ``api/queue``
(the GPU queue)
(times as epoch seconds or ISO 8601), and ``metrics``; described in ``openapi.yaml``
beside this module, served at ``api/openapi.json``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from .. import roles
from ..errors import NotFoundError, UsageError
from ..gpu.ledger import GPULedger, holder_kind
from ..gpu.platform import open_ledger
from ..paths import DataDir
from ..services.base import (
    OpenAPIHandler,
    ServiceApp,
    ServiceHandler,
    needs_role,
    run_service,
    signed_in,
)
from ..services import fields
from ..services.declare import ManagedService, python_command
from .accounting import Accounting
from .catalog import METRICS
from .collect import Collector
from .endpoints import EndpointsReader
from .hub import HubReader
from .jobs import JobsReader
from .store import MetricStore
from .xid import XidWatcher

SQLITE_FILE = "monitor.sqlite"
OPENAPI = Path(__file__).with_name("openapi.yaml")

#: /metrics: stakeholders and admins (a scraper gets a viewer account's token)
stakeholder = needs_role(roles.VIEWER, roles.ADMIN, refused=(
    "Prometheus text holds every user's figures: it needs the viewer or admin role "
    "(give a scraper a viewer account's token); your own figures are at api/current"))


class MonitorHandler(ServiceHandler):
    @property
    def collector(self) -> Collector:
        return self.settings["collector"]

    @property
    def sees_everyone(self) -> bool:
        return self.role in (roles.ADMIN, roles.VIEWER)

    def time_arg(self, name: str, default: float) -> float:
        raw = self.get_argument(name, None)
        return default if raw in (None, "") else fields.time_text(raw, name)

    def number_arg(self, name: str, default: float | None) -> float | None:
        raw = self.get_argument(name, None)
        return default if raw in (None, "") else fields.seconds_text(raw, name)


class CurrentHandler(MonitorHandler):
    """The latest sample; a scientist sees whose processes only for their own."""

    @signed_in
    def get(self):
        snapshot = self.collector.latest
        if snapshot is None:
            self.write_json({"time": None, "gpus": [], "host": {}, "errors": [],
                             "message": "no sample yet; the first comes within an interval"})
            return
        if not self.sees_everyone:
            snapshot = _own_view(snapshot, self.user_name)
        self.write_json(snapshot)


class CatalogHandler(MonitorHandler):
    @signed_in
    def get(self):
        self.write_json({"metrics": [
            {"name": m.name, "prometheus": f"aidc_{m.name}", "help": m.help,
             "labels": list(m.labels), "type": m.type} for m in METRICS.values()]})


class HistoryHandler(MonitorHandler):
    @signed_in
    async def get(self):
        metric = self.get_argument("metric", None)
        if not metric:
            raise UsageError("name a metric: ?metric=NAME (see api/metrics)")
        now = time.time()
        end = self.time_arg("end", now)
        start = self.time_arg("start", end - 3600)
        store: MetricStore = self.settings["store"]
        default_step = max(float(store.tiers[0][0]), (end - start) / 300) if end > start else 1.0
        step = self.number_arg("step", default_step)
        labels = {k: self.get_argument(k) for k in ("gpu", "uuid", "user", "holder", "model", "version",
                                                    "status", "kind", "period")
                  if self.get_argument(k, None) is not None}
        per_user = metric in METRICS and "user" in METRICS[metric].labels
        if per_user and not self.sees_everyone:
            if labels.get("user", self.user_name) != self.user_name:  # as jobs do: not found
                raise NotFoundError(f"no figures of user {labels['user']!r} visible to you")
            labels["user"] = self.user_name
        # the database is read off the event loop: the collector and other callers go on
        answer = await asyncio.to_thread(store.query, metric, start, end, step, now, labels)
        answer["simulated"] = bool((self.collector.latest or {}).get("simulated"))
        self.write_json(answer)


class AccountingHandler(MonitorHandler):
    """GPU-hours and job-hours per user and group; ``.csv`` for a spreadsheet."""

    @signed_in
    async def get(self, csv_ext=None):
        now = time.time()
        end = self.time_arg("end", now)
        start = self.time_arg("start", end - 30 * 86400)
        accounting: Accounting = self.settings["accounting"]
        if end <= start:
            raise UsageError(f"the range is empty or inverted: end ({end:g}) must be after start ({start:g})")
        by = self.get_argument("by", "user")
        if csv_ext and by not in ("user", "group"):
            raise UsageError(f"by must be user or group, not {by!r}")
        ledger: GPULedger = self.settings["ledger"]
        usage = accounting.usage(await asyncio.to_thread(ledger.holdings, start, end), start, end, now)
        if not self.sees_everyone:
            mine = set(self.groups)
            usage["users"] = [r for r in usage["users"] if r["name"] == self.user_name]
            usage["groups"] = [r for r in usage["groups"] if r["name"] in mine]
        if csv_ext:
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", f'attachment; filename="aidc-accounting-{by}.csv"')
            self.finish(accounting.to_csv(usage, by))
            return
        self.write_json(usage)


class QueueHandler(MonitorHandler):
    """The GPU queue (the ledger's waiting claims): who waits, for how many GPUs of which
    kind, in order; a scientist sees the others' places without whose they are."""

    @signed_in
    async def get(self):
        ledger: GPULedger = self.settings["ledger"]
        waiting = await asyncio.to_thread(ledger.queue)
        self.write_json({"queue": queue_view(waiting, None if self.sees_everyone else self.user_name,
                                             time.time())})


class PrometheusHandler(MonitorHandler):
    def is_browser(self) -> bool:
        # a scraper without a token is answered 401, not sent to the sign-in page
        return "Authorization" not in self.request.headers and self.accepts_html()

    @stakeholder
    def get(self):
        from .exposition import CONTENT_TYPE, prometheus_text

        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(prometheus_text(lambda: self.collector.latest))


def _own_view(snapshot: dict, user: str) -> dict:
    """``snapshot`` with other users' processes anonymous and their holdings left out."""
    anonymous = {"pid": None, "account": None, "user": None, "holder": None}
    gpus = []
    for g in snapshot["gpus"]:
        gpus.append({
            **g,
            "processes": [p if p["user"] == user else {**p, **anonymous} for p in g["processes"]],
            "holders": [h for h in g["holders"] if h["owner"] == user],
            "held": bool(g["holders"]),
        })
    users = {u: v for u, v in snapshot.get("users", {}).items() if u == user}
    return {**snapshot, "gpus": gpus, "users": users}


def queue_view(waiting: list, user: str | None, now: float) -> list[dict]:
    """The ledger's queued claims in order per unit kind, with when each was asked for
    (``since``) and how long it has waited at ``now`` (``waited``, seconds); unless ``user``
    is None (a viewer of everyone), the holder and owner of other users' claims are left out."""
    out = []
    for c in sorted(waiting, key=lambda c: (c.kind, c.position)):
        mine = user is None or c.owner == user
        out.append({"position": c.position, "kind": c.kind, "count": c.count,
                    "holder_kind": holder_kind(c.holder),
                    "holder": c.holder if mine else None, "owner": c.owner if mine else None,
                    "since": c.created, "waited": max(0.0, now - c.created) if c.created else None})
    return out


ROUTES = [
    (r"/api/current", CurrentHandler),
    (r"/api/metrics", CatalogHandler),
    (r"/api/history", HistoryHandler),
    (r"/api/accounting(\.csv)?", AccountingHandler),
    (r"/api/queue", QueueHandler),
    (r"/metrics", PrometheusHandler),
    (r"/api/openapi\.(json|yaml)", OpenAPIHandler, {"document": OPENAPI}),
]


class MonitorApp(ServiceApp):
    """The metrics service's configuration (its classes' settings from the drop-ins)."""

    name = "aidc-metrics"

    @property
    def classes(self):
        return [Collector, HubReader, JobsReader, EndpointsReader, MetricStore, Accounting, GPULedger]


def main() -> None:
    from ..db import make_engine

    app = MonitorApp.for_platform()
    data_dir = app.data_dir
    store = MetricStore(make_engine(DataDir.from_arg(data_dir).db_url(SQLITE_FILE)), config=app.config)
    ledger = open_ledger(data_dir, config=app.config)
    accounting = Accounting(config=app.config)
    collector = Collector(store, ledger, data_dir, xids=XidWatcher(), accounting=accounting,
                          hub=HubReader(config=app.config), jobs=JobsReader(config=app.config),
                          endpoints=EndpointsReader(config=app.config), config=app.config)

    async def on_start():
        collector.start()

    async def on_stop():
        await collector.stop()

    run_service(ROUTES, on_start=on_start, on_stop=on_stop, collector=collector, store=store,
                ledger=ledger, accounting=accounting)


def managed_service() -> ManagedService:
    """Entry point (group ``aidc.services``): the metrics service declaration."""
    return ManagedService(
        name="metrics",
        command=python_command("aidc.monitor.service"),
        # the hub's own figures (aidc.monitor.hub), the jobs and models services' (.jobs, .endpoints)
        hub_scopes=["read:metrics", "access:services!service=jobs", "access:services!service=models"],
        roles=[roles.SCIENTIST, roles.VIEWER],
        info={"description": "GPU and host metrics, history, accounting, Prometheus text"},
    )


if __name__ == "__main__":
    main()
