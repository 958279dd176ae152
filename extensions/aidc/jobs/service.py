"""The jobs service at ``/services/jobs/``: a REST API over the :class:`JobManager`.

Who may do what (the caller's aidc role, from their hub groups):

* a scientist submits jobs and sees and acts on their own; anyone else's job is a 404;
* an admin sees and cancels everyone's jobs and sees the cluster;
* a viewer reads ``/api/summary`` (counts) and ``/api/stats`` (what jobs did over a range:
  durations, queue waits, failures by reason, recent jobs with their recorded metrics;
  no notebook contents) and nothing else; a scientist's ``/api/stats`` lists their own
  recent jobs only;
* secrets (``/api/secrets``) are each user's own, admins included: names and times are
  listed, a value is only ever written (:mod:`aidc.jobs.secrets`); when the hub removes a
  user it removes theirs (``DELETE /api/users/NAME/secrets``, the hub only).

The API is described by ``openapi.yaml`` beside this module, served at
``/api/openapi.json`` and ``/api/openapi.yaml``. Live progress is
``/api/jobs/{id}/events`` with ``Accept: text/event-stream`` (server-sent events).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path

from tornado.iostream import StreamClosedError

from .. import roles
from ..errors import NotFoundError, PermissionDeniedError, UsageError
from ..gpu.ledger import GPULedger
from ..gpu.platform import open_ledger
from ..paths import DataDir
from ..security import audit
from ..security.keys import KeyRing
from ..services.declare import ManagedService, python_command
from ..services.base import (
    OpenAPIHandler,
    ServiceApp,
    ServiceHandler,
    needs_role,
    run_service,
    signed_in,
)
from ..services import fields
from ..services.visibility import visible
from . import notebooks, parameters
from .artifacts import ArtifactStore
from .manager import JobManager
from .secrets import SecretStore, secret_view
from .store import FINAL, QUEUED, RUNNING, JobStore
from .tokens import JobTokens
from .views import event_view, schedule_view, stats_view

OPENAPI = Path(__file__).with_name("openapi.yaml")
MAX_BODY = 1024 * 1024

#: what a verb declares when it needs the scientist role (admins have it too)
scientist = needs_role(roles.SCIENTIST, refused=(
    "viewers see the jobs summary and statistics only (/services/jobs/api/summary, api/stats); "
    "running and reading jobs needs the scientist role"))


class JobsHandler(ServiceHandler):
    @property
    def manager(self) -> JobManager:
        return self.settings["manager"]

    @property
    def store(self) -> JobStore:
        return self.manager.store

    max_body_bytes = MAX_BODY

    def nesting_hint(self) -> str:
        return f"; job parameters may nest at most {self.manager.max_parameter_depth} levels"

    def visible_job(self, job_id: str) -> dict:
        return visible(self.caller, self.store.job(job_id), f"no job {job_id!r}")

    def owner_filter(self) -> str | None:
        owner = self.get_argument("owner", None)
        if self.is_admin:
            return owner
        if owner not in (None, self.user_name):
            raise NotFoundError(f"no jobs of {owner!r} visible to you")
        return self.user_name


class JobsCollection(JobsHandler):
    @scientist
    def get(self):
        status = self.get_argument("status", None)
        limit = self.get_argument("limit", None)
        try:
            limit_n = int(limit) if limit else None
        except ValueError:
            raise UsageError("limit must be a number") from None
        found = self.store.find_jobs(owner=self.owner_filter(), status=status,
                                     group_id=self.get_argument("group", None), limit=limit_n)
        self.write_json({"jobs": [self.manager.view(j) for j in found]})

    @scientist
    def post(self):
        job = self.manager.submit(self.user_name, self.groups, self.json_body())
        self.audit("job", "submit", job["id"], notebook=job.get("path"))
        self.write_json(self.manager.view(job), status=201)


class JobResource(JobsHandler):
    @scientist
    def get(self, job_id):
        self.write_json(self.manager.view(self.visible_job(job_id)))


class CancelHandler(JobsHandler):
    @scientist
    async def post(self, job_id):
        self.visible_job(job_id)
        job = await self.manager.cancel(job_id)
        self.audit("job", "cancel", job_id)
        self.write_json(self.manager.view(job), status=202)


class EventsHandler(JobsHandler):
    """Events after ``?after=SEQ``; as server-sent events with ``Accept: text/event-stream``."""

    @scientist
    async def get(self, job_id):
        job = self.visible_job(job_id)
        try:
            after = int(self.get_argument("after", "0"))
        except ValueError:
            raise UsageError("after must be an event sequence number") from None
        if "text/event-stream" not in self.request.headers.get("Accept", ""):
            self.write_json({"events": [event_view(e) for e in self.store.events(job_id, after)],
                             "status": job["status"]})
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        last = int(self.request.headers.get("Last-Event-ID") or after)
        idle = 0.0
        try:
            while True:
                batch = self.store.events(job_id, last)
                for e in batch:
                    last = e["seq"]
                    self.write(f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(event_view(e))}\n\n")
                if batch:
                    await self.flush()
                    idle = 0.0
                status = self.store.job(job_id)["status"]
                if status in FINAL and not self.store.events(job_id, last, limit=1):
                    break
                await self.manager.changed(job_id, timeout=1.0)
                idle += 1.0
                if idle >= 15:  # keep proxies from closing a quiet stream
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    idle = 0.0
        except StreamClosedError:
            return
        self.finish()


class LogsHandler(JobsHandler):
    @scientist
    def get(self, job_id):
        self.visible_job(job_id)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(self.store.logs(job_id))


class LineageHandler(JobsHandler):
    """A job as a model version's lineage records it, for the models service's own token.

    The models service checks itself that the job is its caller's before recording it
    (:mod:`aidc.models.lineage`); everyone else gets 404, as for a job they cannot see.
    """

    #: the services whose own token may read any job here
    readers = ("models",)

    @signed_in
    def get(self, job_id):
        user = self.current_user
        if user.get("kind") != "service" or user.get("name") not in self.readers:
            raise NotFoundError(f"no job {job_id!r}")
        self.write_json(self.manager.view(self.store.job(job_id)))


class NotebookHandler(JobsHandler):
    """The output notebook (``/output``) or the input snapshot (``/input``)."""

    @scientist
    def get(self, job_id, which):
        job = self.visible_job(job_id)
        url = job["output_url"] if which == "output" else job["input_url"]
        data = self.manager.artifacts.read_bytes(url) if url else None
        if data is None:
            raise NotFoundError(f"job {job_id} has no {which} notebook yet" if which == "output"
                                else f"job {job_id} has no input snapshot")
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.finish(data)


class ParametersHandler(JobsHandler):
    @scientist
    def get(self):
        path = self.get_argument("path", None)
        owner = notebooks.Owner.of(self.user_name, self.manager.data_dir)
        _, nb = notebooks.read(owner, path)
        self.write_json({"path": path, "has_parameters_cell": parameters.has_parameters_cell(nb),
                         "parameters": parameters.inspect(nb)})


class SummaryHandler(JobsHandler):
    @signed_in
    def get(self):
        self.write_json(self.store.summary())


class StatsHandler(JobsHandler):
    """Aggregates over ``?start=&end=`` (default: the last 24 h) and the ``?recent=`` newest
    jobs (default 20, at most 200); admins and viewers see everyone's recent jobs."""

    @signed_in
    async def get(self):
        now = time.time()
        end = fields.time_text(self.get_argument("end"), "end") if self.get_argument("end", "") else now
        start = (fields.time_text(self.get_argument("start"), "start") if self.get_argument("start", "")
                 else end - 86400)
        if end <= start:
            raise UsageError(f"the range is empty or inverted: end ({end:g}) must be after start ({start:g})")
        try:
            recent = fields.integer(int(self.get_argument("recent", "20")), "recent", 0, 200)
        except ValueError:
            raise UsageError("recent must be a number of jobs") from None
        try:
            begin, until = (dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None) for t in (start, end))
        except (OverflowError, ValueError, OSError):
            raise UsageError("start and end must be times between the years 1 and 9999") from None
        owner = None if self.role in (roles.ADMIN, roles.VIEWER) else self.user_name
        agg = await asyncio.to_thread(self.store.stats_between, begin, until, owner=owner, recent=recent)
        self.write_json(stats_view(agg, start, end, now))


class SweepsCollection(JobsHandler):
    @scientist
    def get(self):
        found = self.store.find_sweeps(owner=self.owner_filter())
        self.write_json({"sweeps": [self.manager.sweep_view(s["id"]) for s in found]})

    @scientist
    def post(self):
        sweep = self.manager.sweep(self.user_name, self.groups, self.json_body())
        self.audit("job", "sweep", str(sweep.get("id")))
        self.write_json(sweep, status=201)


class SweepResource(JobsHandler):
    @scientist
    def get(self, sweep_id):
        visible(self.caller, self.store.sweep(sweep_id), f"no sweep {sweep_id!r}")
        self.write_json(self.manager.sweep_view(sweep_id))


class SchedulesCollection(JobsHandler):
    @scientist
    def get(self):
        self.write_json({"schedules": [schedule_view(s) for s in self.store.find_schedules(owner=self.owner_filter())]})

    @scientist
    def post(self):
        schedule = self.manager.create_schedule(self.user_name, self.groups, self.json_body())
        self.audit("job", "schedule", str(schedule["id"]))
        self.write_json(schedule_view(schedule), status=201)


class ScheduleResource(JobsHandler):
    def visible_schedule(self, schedule_id: str) -> dict:
        return visible(self.caller, self.store.schedule(schedule_id), f"no schedule {schedule_id!r}")

    @scientist
    def get(self, schedule_id):
        self.write_json(schedule_view(self.visible_schedule(schedule_id)))

    @scientist
    def delete(self, schedule_id):
        self.visible_schedule(schedule_id)
        self.store.delete_schedule(schedule_id)
        self.audit("job", "unschedule", schedule_id)
        self.set_status(204)
        self.finish()

    @scientist
    def post(self, schedule_id, action):
        self.visible_schedule(schedule_id)
        self.write_json(schedule_view(self.manager.set_paused(schedule_id, action == "pause")))


class SecretsCollection(JobsHandler):
    """The caller's own secrets: names and times, never a value (``aidc secrets list``)."""

    @scientist
    def get(self):
        found = self.manager.secrets.find(self.user_name)
        self.write_json({"secrets": [secret_view(r) for r in found]})


class SecretResource(JobsHandler):
    """One of the caller's secrets: ``PUT {"value": ...}`` sets it, ``GET`` its name and times,
    ``DELETE`` removes it. Secrets are per user: another user's of the same name is a 404."""

    @scientist
    def get(self, name):
        self.write_json(secret_view(self.manager.secrets.get(self.user_name, name)))

    @scientist
    def put(self, name):
        row, created = self.manager.secrets.put(self.user_name, name, self.json_body().get("value"))
        self.audit("secret", "set", f"{self.user_name}/{name}",
                   reason="created" if created else "replaced")
        self.write_json(secret_view(row), status=201 if created else 200)

    @scientist
    def delete(self, name):
        self.manager.secrets.delete(self.user_name, name)
        self.audit("secret", "delete", f"{self.user_name}/{name}")
        self.set_status(204)
        self.finish()


class RemovedUserSecrets(JobsHandler):
    """``DELETE /api/users/NAME/secrets``: the hub removed the user NAME, and their secrets
    go with them (rows and values), each removal audited, so that a new user of the same name
    finds none. Only the hub calls it, with this service's own token, which no user holds
    (:mod:`aidc.hub.removal`); anyone else gets 403. ``?by=`` names who removed the user (the
    hub's caller), the actor of each event; the hub vouches for it."""

    @signed_in
    def delete(self, name):
        caller = self.current_user
        if caller.get("kind") != "service" or caller.get("name") != audit.in_service():
            raise PermissionDeniedError("only the hub removes the secrets of a user it removed")
        actor = self.get_query_argument("by", "hub")[:200] or "hub"
        removed = self.manager.secrets.remove_owner(name)
        for secret in removed:
            audit.record("secret", actor=actor, action="delete", target=f"{name}/{secret}",
                         result="success", reason=f"the user {name} was removed")
        self.write_json({"removed": removed})


class ClusterHandler(JobsHandler):
    @needs_role(roles.ADMIN, refused="only admins see the jobs cluster")
    def get(self):
        info = self.settings["cluster"].describe()
        info["queued"] = self.store.summary()["queued"]
        self.write_json(info)


ROUTES = [
    (r"/api/jobs", JobsCollection),
    (r"/api/jobs/([^/]+)", JobResource),
    (r"/api/jobs/([^/]+)/cancel", CancelHandler),
    (r"/api/jobs/([^/]+)/events", EventsHandler),
    (r"/api/jobs/([^/]+)/logs", LogsHandler),
    (r"/api/jobs/([^/]+)/lineage", LineageHandler),
    (r"/api/jobs/([^/]+)/(output|input)", NotebookHandler),
    (r"/api/parameters", ParametersHandler),
    (r"/api/summary", SummaryHandler),
    (r"/api/stats", StatsHandler),
    (r"/api/sweeps", SweepsCollection),
    (r"/api/sweeps/([^/]+)", SweepResource),
    (r"/api/schedules", SchedulesCollection),
    (r"/api/schedules/([^/]+)", ScheduleResource),
    (r"/api/schedules/([^/]+)/(pause|resume)", ScheduleResource),
    (r"/api/secrets", SecretsCollection),
    (r"/api/secrets/([^/]+)", SecretResource),
    (r"/api/users/([^/]+)/secrets", RemovedUserSecrets),
    (r"/api/cluster", ClusterHandler),
    (r"/api/openapi\.(json|yaml)", OpenAPIHandler, {"document": OPENAPI}),
]


class JobsApp(ServiceApp):
    """The jobs service's configuration (its classes' settings from the drop-ins)."""

    name = "aidc-jobs"

    @property
    def classes(self):
        from .cluster import JobCluster
        return [JobManager, JobStore, ArtifactStore, JobCluster, GPULedger, JobTokens,
                SecretStore]


def main() -> None:
    import dask

    from .cluster import JobCluster
    from .kernels import KernelLauncherPlugin

    app = JobsApp.for_platform()
    data_dir = app.data_dir
    store = JobStore(config=app.config, data_dir=data_dir)
    artifact_store = ArtifactStore(config=app.config)
    keys = KeyRing.for_data_dir(data_dir, app.config)
    if keys is not None:  # snapshots and outputs encrypted at rest, each job under its own key
        keys.check(create=True)
        artifact_store.encrypt_with(keys)
    secrets = SecretStore(store, config=app.config, data_dir=data_dir)
    secrets.encrypt_at_rest(app.config)
    ledger = open_ledger(data_dir, config=app.config)
    cluster = JobCluster(config=app.config,  # workers write only below the private data directory
                         scratch_root=str(DataDir(Path(data_dir)).jobs_scratch))
    manager = JobManager(store, artifact_store, ledger, data_dir, url=os.environ.get("AIDC_URL"),
                         capacity=lambda: cluster.describe().get("threads") or 0,
                         threads=cluster.kernel_threads,
                         tokens=JobTokens(config=app.config), secrets=secrets,
                         config=app.config)
    # aidc decides about retries itself (attempts, back-off, reasons): an embedded
    # scheduler must not silently re-run a task whose worker died
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    cluster.worker_plugins = [*cluster.worker_plugins, KernelLauncherPlugin()]

    connecting: list[asyncio.Task] = []
    stopping = asyncio.Event()

    async def connect() -> None:
        # the hub gives a service a few seconds to answer: listen first, reach Dask after
        delay = 1.0
        while True:
            try:
                client = await cluster.start()
                break
            except Exception as e:  # keep the API up (jobs queue) and keep trying
                if stopping.is_set():
                    # a stop during the start: distributed may turn the cancellation into
                    # an error of its own; starting again would only delay the stop
                    return
                app.log.error("aidc jobs: cannot start or reach the Dask cluster (%s); retrying in %g s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        await manager.start(client)

    def start_cluster() -> None:
        if not connecting:
            connecting.append(asyncio.ensure_future(connect()))

    async def on_start():
        # the cluster starts in the background (the API answers meanwhile); an embedded
        # one may wait for the first job instead (JobCluster.start_with), unless jobs or
        # schedules are waiting from before
        waiting = store.find_jobs(status=[QUEUED, RUNNING], limit=1) or store.find_schedules()
        try:
            lazy = cluster.kind == "local" and cluster.start_with == "first-job"
        except Exception:  # a config error: connect() reports it (and keeps retrying)
            lazy = False
        if waiting or not lazy:
            start_cluster()
        else:
            manager.on_first_job = start_cluster

    async def on_stop():
        stopping.set()
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        await manager.stop()
        await cluster.close()

    run_service(ROUTES, on_start=on_start, on_stop=on_stop, manager=manager, cluster=cluster)


def managed_service() -> ManagedService:
    """Entry point (group ``aidc.services``): the jobs service declaration."""
    return ManagedService(
        name="jobs",
        command=python_command("aidc.jobs.service"),
        # a job's kernel gets its owner's own narrow token (aidc.jobs.tokens); the hub calls
        # the service with its own token when it removes a user (aidc.hub.removal)
        hub_scopes=["tokens", "access:services!service=jobs"],
        roles=[roles.SCIENTIST, roles.VIEWER],
        info={"description": "Run parameterized notebooks as batch jobs"},
        display=False,
    )


if __name__ == "__main__":
    main()
