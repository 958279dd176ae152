"""The jobs service's durable record: jobs, their events, sweeps and schedules.

SQLAlchemy Core on SQLite by default (``<data-dir>/jobs.sqlite``), PostgreSQL or any
SQLAlchemy URL through ``JobStore.db_url``; the schema is created and upgraded by the
alembic migrations in ``aidc/jobs/migrations`` (its own version table, so it can share
a database with the other platform tables). Only the jobs service writes here: workers
report through Dask and the service records, so one process owns every state change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from traitlets import Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from ..db import make_engine, upgrade, utcnow
from ..errors import NotFoundError
from ..paths import DataDir

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)
FINAL = frozenset({COMPLETED, FAILED, CANCELLED})

metadata = sa.MetaData()

jobs = sa.Table(
    "aidc_jobs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False, index=True),
    sa.Column("groups", sa.JSON, nullable=False, default=list),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False, default=dict),
    sa.Column("gpus", sa.Integer, nullable=False, default=0),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("timeout", sa.Float),
    sa.Column("cell_timeout", sa.Float),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("error", sa.Text),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.Column("started", sa.DateTime),
    sa.Column("finished", sa.DateTime),
    sa.Column("not_before", sa.DateTime),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("units", sa.JSON, nullable=False, default=list),
    sa.Column("visible_devices", sa.String(255)),
    sa.Column("worker", sa.String(255)),
    sa.Column("group_id", sa.String(32), index=True),
    sa.Column("schedule_id", sa.String(32), index=True),
    sa.Column("cell", sa.Integer),
    sa.Column("cells", sa.Integer),
    sa.Column("metrics", sa.JSON, nullable=False, default=dict),
    sa.Column("series", sa.JSON, nullable=False, default=dict),
    sa.Column("input_url", sa.Text),
    sa.Column("output_url", sa.Text),
    # /api/stats counts and reads by these (JobStore.stats_between): ranges, not scans; the
    # status first, or a planner without statistics searched by status alone
    sa.Index("ix_aidc_jobs_created", "created"),
    sa.Index("ix_aidc_jobs_started", "started", "created"),
    sa.Index("ix_aidc_jobs_status_finished", "status", "finished", "started"),
    # the names of the owner's secrets the job's kernel gets (never their values)
    sa.Column("secrets", sa.JSON, nullable=False, default=list),
)

events = sa.Table(
    "aidc_job_events", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("time", sa.DateTime, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("cell", sa.Integer),
    sa.Column("name", sa.String(255)),
    sa.Column("text", sa.Text),
    sa.Column("value", sa.JSON),
    sa.Column("status", sa.String(16)),
    sa.Index("ix_aidc_job_events_job_seq", "job_id", "seq"),
)

sweeps = sa.Table(
    "aidc_job_sweeps", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False, index=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("metric", sa.String(255)),
    sa.Column("mode", sa.String(8), nullable=False, default="max"),
    sa.Column("grid", sa.JSON, nullable=False),
    sa.Column("created", sa.DateTime, nullable=False),
)

schedules = sa.Table(
    "aidc_job_schedules", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False, index=True),
    sa.Column("groups", sa.JSON, nullable=False, default=list),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("cron", sa.String(255), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("next_run", sa.DateTime),
    sa.Column("last_job", sa.String(32)),
    sa.Column("last_error", sa.Text),
    sa.Column("created", sa.DateTime, nullable=False),
)

#: the secrets users keep for their jobs: names and times here, values encrypted in files
#: (:mod:`aidc.jobs.secrets`)
job_secrets = sa.Table(
    "aidc_job_secrets", metadata,
    sa.Column("owner", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.Column("updated", sa.DateTime, nullable=False),
)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class JobStore(LoggingConfigurable):
    """Reads and writes the jobs service's tables; one instance per service process."""

    db_url = Unicode(
        help="""SQLAlchemy URL of the jobs database. Default: the platform database
        (`aidc up --db-url`, `c.Platform.db_url`), else `sqlite:///<data-dir>/jobs.sqlite`.""",
    ).tag(config=True)

    data_dir = Unicode(help="The platform data directory.").tag(config=True)

    max_log_bytes = Integer(
        8 * 1024 * 1024,
        help="""Stream output (stdout/stderr) kept per job in the event log; beyond it one
        'output truncated' event is recorded and the rest is dropped (the output
        notebook keeps its own, separately capped, copy).""",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(DataDir.from_arg(None).root)

    @default("db_url")
    def _default_db_url(self) -> str:
        return DataDir.from_arg(self.data_dir).db_url("jobs.sqlite")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.engine = make_engine(self.db_url)
        upgrade(self.engine, Path(__file__).with_name("migrations"))
        self._log_bytes: dict[str, int] = {}

    # -- jobs -----------------------------------------------------------------------
    def insert_job(self, **values: Any) -> dict:
        values.setdefault("id", new_id("j-"))
        values.setdefault("status", QUEUED)
        values.setdefault("created", utcnow())
        with self.engine.begin() as c:
            c.execute(jobs.insert().values(**values))
            c.execute(events.insert().values(job_id=values["id"], time=values["created"],
                                             type="status", status=values["status"]))
        return self.job(values["id"])

    def job(self, job_id: str) -> dict:
        with self.engine.connect() as c:
            row = c.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return dict(row._mapping)

    def find_jobs(self, owner: str | None = None, status: str | Iterable[str] | None = None,
                  group_id: str | None = None, schedule_id: str | None = None,
                  limit: int | None = None) -> list[dict]:
        q = sa.select(jobs).order_by(jobs.c.created.desc(), jobs.c.id)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        if isinstance(status, str):
            q = q.where(jobs.c.status == status)
        elif status is not None:
            q = q.where(jobs.c.status.in_(list(status)))
        if group_id is not None:
            q = q.where(jobs.c.group_id == group_id)
        if schedule_id is not None:
            q = q.where(jobs.c.schedule_id == schedule_id)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def queued_in_order(self) -> list[dict]:
        """Queued jobs in dispatch order: higher priority first, then first submitted."""
        q = (sa.select(jobs).where(jobs.c.status == QUEUED)
             .order_by(jobs.c.priority.desc(), jobs.c.created, jobs.c.id))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def update_job(self, job_id: str, event: dict | None = None, only_if: dict | None = None,
                   **values: Any) -> bool:
        """Change a job (and log a status event when the status changes).

        ``only_if`` guards the update (``{"status": "running"}``): the write happens only
        while the job still is in that state, so two paths (a cancel and a finishing
        worker) never both win. Returns whether the row changed.
        """
        q = jobs.update().where(jobs.c.id == job_id)
        for key, value in (only_if or {}).items():
            q = q.where(jobs.c[key] == value)
        with self.engine.begin() as c:
            changed = c.execute(q.values(**values)).rowcount > 0
            if changed and "status" in values:
                c.execute(events.insert().values(
                    job_id=job_id, time=utcnow(), type="status", status=values["status"],
                    text=values.get("error")))
            if changed and event:
                c.execute(events.insert().values(job_id=job_id, time=utcnow(), **event))
        return changed

    def summary(self) -> dict:
        with self.engine.connect() as c:
            counts = dict(c.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all())
            gpus = c.execute(sa.select(sa.func.coalesce(sa.func.sum(jobs.c.gpus), 0))
                             .where(jobs.c.status == RUNNING)).scalar()
        return {"counts": {s: int(counts.get(s, 0)) for s in STATUSES},
                "running_gpus": int(gpus or 0), "queued": int(counts.get(QUEUED, 0))}

    def stats_between(self, start, end, owner: str | None = None, recent: int = 20,
                      window: int = 2000) -> dict:
        """What ``/api/stats`` aggregates over ``[start, end)`` (naive UTC datetimes), counted
        by the database, not by reading every job: finished jobs per status, running jobs,
        failed jobs per error text (``errors``: ``[(error, n)]``, the view turns texts into
        reasons), the times of the newest ``window`` completed runs (``runs``), starts
        (``starts``) and of the ``window`` oldest queued jobs (``queued``), with their exact
        counts (``counts``), and the ``recent`` newest jobs of the range (of ``owner`` only,
        unless None)."""
        in_range = sa.and_(jobs.c.created < end, sa.or_(jobs.c.finished.is_(None), jobs.c.finished >= start))
        ended = sa.and_(jobs.c.finished >= start, jobs.c.finished < end)
        began = sa.and_(jobs.c.started >= start, jobs.c.started < end)
        ran = sa.and_(jobs.c.status == COMPLETED, ended, jobs.c.started.is_not(None))
        with self.engine.connect() as c:
            finished = {s: c.execute(sa.select(sa.func.count()).where(jobs.c.status == s, ended)).scalar()
                        for s in sorted(FINAL)}
            running = c.execute(sa.select(sa.func.count()).where(jobs.c.status == RUNNING, jobs.c.created < end)
                                ).scalar()
            errors = c.execute(sa.select(jobs.c.error, sa.func.count())
                               .where(jobs.c.status == FAILED, ended).group_by(jobs.c.error)).all()
            counts = {"runs": c.execute(sa.select(sa.func.count()).where(ran)).scalar(),
                      "starts": c.execute(sa.select(sa.func.count()).where(began)).scalar(),
                      "queued": c.execute(sa.select(sa.func.count()).where(jobs.c.status == QUEUED)).scalar()}
            runs = c.execute(sa.select(jobs.c.started, jobs.c.finished).where(ran)
                             .order_by(jobs.c.finished.desc()).limit(window)).all()
            starts = c.execute(sa.select(jobs.c.created, jobs.c.started).where(began)
                               .order_by(jobs.c.started.desc()).limit(window)).all()
            queued = c.execute(sa.select(jobs.c.created).where(jobs.c.status == QUEUED)
                               .order_by(jobs.c.created).limit(window)).scalars().all()
            listed = sa.select(jobs).where(in_range)
            if owner is not None:
                listed = listed.where(jobs.c.owner == owner)
            newest = [dict(r._mapping) for r in c.execute(
                listed.order_by(jobs.c.created.desc(), jobs.c.id).limit(recent))] if recent else []
        return {"finished": finished, "running": int(running or 0), "errors": errors, "counts": counts,
                "runs": runs, "starts": starts, "queued": queued, "recent": newest}

    # -- events ---------------------------------------------------------------------
    def add_events(self, job_id: str, items: list[dict]) -> None:
        """Record worker events (cell progress, output, metrics) for ``job_id``."""
        rows = []
        for item in items:
            if item.get("type") == "stream":
                used = self._log_bytes.get(job_id)
                if used is None:
                    used = self._stream_bytes(job_id)
                text = item.get("text") or ""
                if used >= self.max_log_bytes:
                    continue
                if used + len(text) > self.max_log_bytes:
                    text = text[: self.max_log_bytes - used] + (
                        f"\n[aidc: output truncated: this job printed more than "
                        f"{self.max_log_bytes // (1024 * 1024)} MiB; the rest is not kept]\n")
                    used = self.max_log_bytes
                else:
                    used += len(text)
                self._log_bytes[job_id] = used
                item = {**item, "text": text}
            rows.append({"job_id": job_id, "time": utcnow(), "type": item["type"],
                         "cell": item.get("cell"), "name": item.get("name"),
                         "text": item.get("text"), "value": item.get("value"),
                         "status": item.get("status")})
        if rows:
            with self.engine.begin() as c:
                c.execute(events.insert(), rows)

    def _stream_bytes(self, job_id: str) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(events.c.text)), 0))
                                 .where(events.c.job_id == job_id, events.c.type == "stream")).scalar() or 0)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[dict]:
        q = (sa.select(events).where(events.c.job_id == job_id, events.c.seq > after)
             .order_by(events.c.seq).limit(limit))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def datasets_read(self, job_id: str) -> list[dict]:
        """The dataset versions the job's notebook read (``aidc.data``; its ``dataset``
        events), each once, in the order first read."""
        q = (sa.select(events.c.value).where(events.c.job_id == job_id, events.c.type == "dataset")
             .order_by(events.c.seq))
        found: dict[tuple, dict] = {}
        with self.engine.connect() as c:
            for (value,) in c.execute(q):
                if isinstance(value, dict):
                    found.setdefault((value.get("name"), value.get("version")), value)
        return list(found.values())

    def logs(self, job_id: str) -> str:
        q = (sa.select(events.c.text).where(events.c.job_id == job_id, events.c.type.in_(["stream", "error"]))
             .order_by(events.c.seq))
        with self.engine.connect() as c:
            return "".join(t or "" for (t,) in c.execute(q))

    # -- sweeps ---------------------------------------------------------------------
    def insert_sweep(self, **values: Any) -> dict:
        values.setdefault("id", new_id("g-"))
        values.setdefault("created", utcnow())
        with self.engine.begin() as c:
            c.execute(sweeps.insert().values(**values))
        return self.sweep(values["id"])

    def sweep(self, sweep_id: str) -> dict:
        with self.engine.connect() as c:
            row = c.execute(sa.select(sweeps).where(sweeps.c.id == sweep_id)).first()
        if row is None:
            raise NotFoundError(f"no sweep {sweep_id!r}")
        return dict(row._mapping)

    def find_sweeps(self, owner: str | None = None) -> list[dict]:
        q = sa.select(sweeps).order_by(sweeps.c.created.desc())
        if owner is not None:
            q = q.where(sweeps.c.owner == owner)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    # -- schedules ------------------------------------------------------------------
    def insert_schedule(self, **values: Any) -> dict:
        values.setdefault("id", new_id("s-"))
        values.setdefault("created", utcnow())
        with self.engine.begin() as c:
            c.execute(schedules.insert().values(**values))
        return self.schedule(values["id"])

    def schedule(self, schedule_id: str) -> dict:
        with self.engine.connect() as c:
            row = c.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).first()
        if row is None:
            raise NotFoundError(f"no schedule {schedule_id!r}")
        return dict(row._mapping)

    def find_schedules(self, owner: str | None = None) -> list[dict]:
        q = sa.select(schedules).order_by(schedules.c.created)
        if owner is not None:
            q = q.where(schedules.c.owner == owner)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def update_schedule(self, schedule_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(schedules.update().where(schedules.c.id == schedule_id).values(**values))

    def delete_schedule(self, schedule_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(schedules.delete().where(schedules.c.id == schedule_id))
