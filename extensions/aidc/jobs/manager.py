"""The jobs service's engine: the queue, GPUs from the ledger, Dask, retries, schedules.

One :class:`JobManager` per service process owns every state change of a job:

``queued``  waits for its turn (priority, then submit time), its owner's concurrency
            cap, its back-off after a failed attempt, and its GPUs (a ledger claim for
            holder ``job:<id>``, queued in the ledger like a spawn);
``running`` runs on a Dask worker (:func:`aidc.jobs.execute.run_job`), reporting
            progress as Dask events that are recorded as they arrive;
``completed`` / ``failed`` / ``cancelled`` are final; a failed attempt with retries
            left goes back to ``queued`` with an exponential back-off.

Every transition is written to the store before anything else happens, and the
ledger claim is released on every way out, so a restart of the service (or the hub,
or a worker) loses no job and leaks no GPU: at start, jobs recorded as running are
treated as attempts whose worker died.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nbformat
from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from ..db import iso, utcnow
from ..errors import AidcError, ConflictError, UsageError
from ..gpu.inventory import WHOLE
from ..gpu.ledger import GRANTED, GPULedger, QuotaExceededError
from ..security import audit
from ..services.fields import integer, seconds
from . import notebooks, parameters
from .artifacts import ArtifactStore
from .execute import TOPIC, attempt_marker, run_job, stop_job
from ..security.redact import Redactor, SecretValues
from .store import CANCELLED, COMPLETED, FAILED, FINAL, QUEUED, RUNNING, JobStore
from .views import job_view, sweep_view

MAX_SWEEP_RUNS = 256

#: event type of what the service decided for a job at submit (e.g. which kernel runs a
#: notebook that names none); shown in the job's ``notices``
NOTICE = "notice"
MAX_NOTICES = 4

#: what the first job waits for on a platform that starts Dask only when work arrives
STARTING_CLUSTER = "starting the cluster"


class JobManager(LoggingConfigurable):
    """Queue, dispatch and follow jobs; the only writer of the jobs store."""

    max_running_per_user = Integer(
        4, help="How many of one user's jobs may run at the same time; the rest wait in the queue."
    ).tag(config=True)

    default_retries = Integer(
        0, help="Retries of a job that does not say (a failed attempt is re-run this many times)."
    ).tag(config=True)

    max_retries = Integer(5, help="The most retries a job may ask for.").tag(config=True)

    retry_backoff = Float(
        2.0, help="Seconds before the first retry of a failed attempt; doubles with each retry."
    ).tag(config=True)

    cancel_grace = Float(
        20.0, help="Seconds a cancelled job's worker gets to stop its kernel before the job is "
        "marked cancelled and its GPUs released regardless.",
    ).tag(config=True)

    wait_for_free_worker = Bool(
        True,
        help="""Start a job only when the cluster has a free worker thread, so a job shown as
        running really runs (and holds its GPUs only then). Turn off for adaptive clusters
        (dask-gateway, dask-jobqueue with adapt) that add workers when tasks wait.""",
    ).tag(config=True)

    kernel_name = Unicode("python3", help="Kernel that runs job notebooks.").tag(config=True)

    max_parameter_depth = Integer(
        parameters.MAX_DEPTH,
        help="""How deeply a job's parameter values may nest (lists and objects inside each
        other). Deeper parameters are refused at submit with 400: nesting thousands deep
        breaks JSON encoding and papermill's injection, and a job with such parameters
        could never start.""",
    ).tag(config=True)

    max_parameter_bytes = Integer(
        parameters.MAX_BYTES,
        help="""The largest a job's parameters may be, in bytes of compact JSON. Larger ones
        are refused at submit with 400 (parameters are stored with every job and injected
        into its notebook; pass data through files, not parameters).""",
    ).tag(config=True)

    min_schedule_interval = Float(
        60.0,
        help="""Seconds that must pass at least between two runs of one schedule. A cron
        expression that would run more often (``* * * * * *``, croniter's seconds field) is
        refused with 400 naming this minimum; schedules stored before it was raised are
        run no more often than this either.""",
    ).tag(config=True)

    tick = Float(0.5, help="Seconds between passes over the queue and the schedules.").tag(config=True)

    kernel_threads = Integer(
        0,
        help="""CPU threads a job's kernel gives its math libraries (``OMP_NUM_THREADS``,
        ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, TensorFlow's ``TF_NUM_INTRA/INTEROP_THREADS``).

        0: the cluster decides: on the embedded cluster, the machine's cores divided among
        its workers, so jobs running side by side do not oversubscribe the CPU; on an
        external cluster, the libraries' own defaults. A notebook may still set its own.""",
    ).tag(config=True)

    def __init__(self, store: JobStore, artifacts: ArtifactStore, ledger: GPULedger,
                 data_dir: str, url: str | None = None, capacity=None, tokens=None,
                 threads=None, secrets=None, **kwargs):
        super().__init__(**kwargs)
        #: SecretStore: the owners' secrets a job may name (None: jobs may name none)
        self.secrets = secrets
        #: job id -> the Redactor of its running attempt's secrets (what it reports is redacted
        #: here again before it is stored, whatever the worker did)
        self._redactors: dict[str, Redactor] = {}
        #: callable: the cluster's choice of kernel threads when kernel_threads is 0 (or None)
        self.threads = threads
        #: JobTokens: each attempt's own hub token of the job's owner (None: jobs get no token)
        self.tokens = tokens
        #: callable: how many jobs the cluster can run at once now (its worker threads)
        self.capacity = capacity
        self.store = store
        self.artifacts = artifacts
        self.ledger = ledger
        self.data_dir = data_dir
        self.url = url
        self.client = None
        self.waiting: dict[str, str] = {}  # job id -> why it still waits (shown in the API)
        self._futures: dict[str, Any] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        #: called once when a job or schedule arrives before the cluster was started
        self.on_first_job = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, client) -> None:
        self._stopping = False
        self.client = client
        client.subscribe_topic(TOPIC, self._on_event)
        await self._recover()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the dispatch loop and return once it has ended."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _recover(self) -> None:
        """Jobs a previous service process left running: their worker is gone (or orphaned)."""
        leftovers = self.store.find_jobs(status=RUNNING)
        for job in leftovers:
            try:  # an external cluster may still run it: stop it, it will be re-run
                await self.client.run(stop_job, job["id"], "restart")
            except Exception:
                pass
            self._attempt_failed(job, "the jobs service restarted while the job was running", lost=True)
            if self.tokens is not None:  # the token its kernel had
                await self.tokens.revoke(job["owner"], job["id"])
        keep = {f"job:{j['id']}" for j in self.store.find_jobs(status=[QUEUED, RUNNING])}
        for holder in self.ledger.reconcile(keep, "job"):
            self.log.info("aidc jobs: released leftover GPU claim %s", holder)
        if leftovers:
            self.log.warning("aidc jobs: %d job(s) were running when the service stopped; "
                             "re-queued or failed by their retry policy", len(leftovers))

    async def _loop(self) -> None:
        # asyncio.wait (not wait_for): on Python 3.11 wait_for can swallow a cancel that
        # arrives as the event fires, and stop() would leave the loop running
        while not self._stopping:
            try:
                self._dispatch()
                self._run_schedules()
            except Exception:
                self.log.exception("aidc jobs: dispatch pass failed; retrying")
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([waiter], timeout=self.tick)
            finally:
                waiter.cancel()
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- submit ---------------------------------------------------------------------
    def prepare(self, owner: str, body: dict) -> tuple[dict, nbformat.NotebookNode, notebooks.Owner]:
        """Validate a submission; every mistake is a UsageError naming what to fix."""
        allowed = {"path", "parameters", "gpus", "timeout", "cell_timeout", "priority", "retries",
                   "secrets"}
        unknown = set(body) - allowed
        if unknown:
            raise UsageError(f"unknown field(s) {', '.join(sorted(unknown))}; a job takes {', '.join(sorted(allowed))}")
        parameters.check_size(body.get("parameters") or {}, max_depth=self.max_parameter_depth,
                              max_bytes=self.max_parameter_bytes)
        who = notebooks.Owner.of(owner, self.data_dir)
        path = body.get("path")
        notes: list[str] = []  # e.g. the notebook names no kernel: which one runs it
        _, nb = notebooks.read(who, path, kernel_name=self.kernel_name, notes=notes)
        params = parameters.validate(nb, body.get("parameters") or {}, path,
                                     max_depth=self.max_parameter_depth,
                                     max_bytes=self.max_parameter_bytes)
        gpus = integer(body.get("gpus", 0), "gpus", minimum=0)
        self._check_gpus_possible(owner, gpus)
        spec = {
            "path": path,
            "parameters": params,
            "gpus": gpus,
            "timeout": seconds(body.get("timeout"), "timeout"),
            "cell_timeout": seconds(body.get("cell_timeout"), "cell_timeout"),
            "priority": integer(body.get("priority", 0), "priority", minimum=-1000, maximum=1000),
            "retries": integer(body.get("retries", self.default_retries), "retries", minimum=0,
                            maximum=self.max_retries),
            "secrets": self._secret_names(owner, body.get("secrets")),
        }
        if notes:
            spec["notes"] = notes  # recorded as the job's "notice" events, not a column
        return spec, nb, who

    def submit(self, owner: str, groups: list[str], body: dict, group_id: str | None = None,
               schedule_id: str | None = None) -> dict:
        spec, nb, _ = self.prepare(owner, body)
        return self._insert(owner, groups, spec, nb, group_id, schedule_id)

    def _insert(self, owner, groups, spec, nb, group_id=None, schedule_id=None) -> dict:
        from .store import new_id
        spec = dict(spec)
        notes = spec.pop("notes", None) or []
        job_id = new_id("j-")
        input_url = self.artifacts.job_url(job_id, "input.ipynb")
        self.artifacts.write_bytes(input_url, nbformat.writes(nb).encode())
        job = self.store.insert_job(
            id=job_id, owner=owner, groups=sorted(groups or []), input_url=input_url,
            output_url=self.artifacts.job_url(job_id, "output.ipynb"),
            group_id=group_id, schedule_id=schedule_id, cells=len(nb.cells), **spec)
        if notes:
            self.store.add_events(job_id, [{"type": NOTICE, "text": note} for note in notes])
        self.log.info("aidc jobs: %s submitted %s (%s)", owner, job_id, spec["path"])
        self._first_job()
        self.wake()
        return job

    def _secret_names(self, owner: str, names) -> list[str]:
        if self.secrets is None:
            if names:
                raise UsageError("this platform's jobs service keeps no secrets")
            return []
        return self.secrets.check_names(owner, names)

    def _secret_values(self, job: dict, attempt: int) -> dict[str, str]:
        """The values of the secrets ``job`` names, read now (so a retry, also after a
        restart of this service, gets them again; never stored with the job); each read audited."""
        values = {}
        for name in job.get("secrets") or []:
            target = f"{job['owner']}/{name}"
            read = {"actor": job["owner"], "action": "read", "target": target, "job": job["id"],
                    "attempt": attempt}
            try:
                if self.secrets is None:
                    raise UsageError("this platform's jobs service keeps no secrets")
                values[name] = self.secrets.value(job["owner"], name)
            except AidcError as e:
                audit.record("secret", result="failure", reason=str(e)[:500], **read)
                raise
            audit.record("secret", result="success", **read)
        return values

    def _first_job(self) -> None:
        if self.on_first_job is not None:
            start, self.on_first_job = self.on_first_job, None
            start()

    def _check_gpus_possible(self, owner: str, gpus: int) -> None:
        if not gpus:
            return
        per_node: dict[str, int] = {}
        simulated = False
        for unit in self.ledger.units():
            if unit["kind"] == WHOLE:
                per_node[unit["node"]] = per_node.get(unit["node"], 0) + 1
                simulated = simulated or unit["simulated"]
        most = max(per_node.values(), default=0)
        if gpus > most:
            raise UsageError(
                f"asked for {gpus} GPUs, but this platform has {most}"
                f"{' (simulated)' if simulated else ''}; ask for fewer")
        quota = self.ledger.quota_for(owner).get("max_gpus")
        if quota is not None and gpus > int(quota):
            raise QuotaExceededError(f"asked for {gpus} GPUs, but your quota is {quota} GPUs")

    # -- sweeps ---------------------------------------------------------------------
    def sweep(self, owner: str, groups: list[str], body: dict) -> dict:
        grid = body.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise UsageError('grid is required: an object of parameter name to a list of values, '
                             'e.g. {"lr": [0.01, 0.001]}')
        for name, values in grid.items():
            if not isinstance(values, list) or not values:
                raise UsageError(f"grid[{name!r}] must be a non-empty list of values")
        combos = list(itertools.product(*grid.values()))
        if len(combos) > MAX_SWEEP_RUNS:
            raise UsageError(f"the grid makes {len(combos)} runs; a sweep may have at most {MAX_SWEEP_RUNS}")
        mode = body.get("mode", "max")
        if mode not in ("max", "min"):
            raise UsageError("mode must be 'max' or 'min' (how the best run is chosen by metric)")
        metric = body.get("metric")
        if metric is not None and not isinstance(metric, str):
            raise UsageError("metric must be the name of a recorded metric")
        fixed = body.get("parameters") or {}
        job_body = {k: v for k, v in body.items() if k not in ("grid", "metric", "mode", "parameters")}
        prepared = []
        for combo in combos:  # validate every run before submitting any
            params = {**fixed, **dict(zip(grid.keys(), combo))}
            prepared.append(self.prepare(owner, {**job_body, "parameters": params}))
        sweep = self.store.insert_sweep(owner=owner, path=body.get("path"), metric=metric,
                                        mode=mode, grid=grid)
        for spec, nb, _ in prepared:
            self._insert(owner, groups, spec, nb, group_id=sweep["id"])
        return self.sweep_view(sweep["id"])

    def sweep_view(self, sweep_id: str) -> dict:
        return sweep_view(self.store.sweep(sweep_id), self.store.find_jobs(group_id=sweep_id))

    # -- schedules ------------------------------------------------------------------
    def create_schedule(self, owner: str, groups: list[str], body: dict) -> dict:
        cron = body.get("cron")
        tz = body.get("timezone") or "UTC"
        job_body = {k: v for k, v in body.items() if k not in ("cron", "timezone")}
        next_run = next_cron(cron, tz, dt.datetime.now(dt.UTC))
        check_interval(cron, tz, self.min_schedule_interval)
        self.prepare(owner, job_body)  # the notebook and parameters are valid now
        self._first_job()
        return self.store.insert_schedule(owner=owner, groups=sorted(groups or []), spec=job_body,
                                          cron=cron, timezone=tz, paused=False, next_run=next_run)

    def set_paused(self, schedule_id: str, paused: bool) -> dict:
        sched = self.store.schedule(schedule_id)
        values: dict[str, Any] = {"paused": paused}
        if not paused:  # resuming never replays the runs missed while paused
            values["next_run"] = next_cron(sched["cron"], sched["timezone"], dt.datetime.now(dt.UTC))
        self.store.update_schedule(schedule_id, **values)
        return self.store.schedule(schedule_id)

    def _run_schedules(self) -> None:
        now = utcnow()
        for sched in self.store.find_schedules():
            if sched["paused"] or sched["next_run"] is None or sched["next_run"] > now:
                continue
            # never more often than the minimum, even for a schedule stored before it was raised
            gap = dt.timedelta(seconds=max(self.min_schedule_interval, 0.0)) - dt.timedelta(milliseconds=1)
            after = max(now, sched["next_run"] + gap)
            values: dict[str, Any] = {"next_run": next_cron(sched["cron"], sched["timezone"],
                                                            after.replace(tzinfo=dt.UTC))}
            try:
                job = self.submit(sched["owner"], sched["groups"], dict(sched["spec"]),
                                  schedule_id=sched["id"])
                values.update(last_job=job["id"], last_error=None)
            except Exception as e:  # the notebook was moved or broken since: say so, keep the schedule
                values["last_error"] = str(e)
                self.log.warning("aidc jobs: schedule %s could not submit: %s", sched["id"], e)
            self.store.update_schedule(sched["id"], **values)

    # -- dispatch -------------------------------------------------------------------
    def _dispatch(self) -> None:
        if self.client is None:
            return
        now = utcnow()
        running: dict[str, int] = {}
        for job in self.store.find_jobs(status=RUNNING):
            running[job["owner"]] = running.get(job["owner"], 0) + 1
        waiting = {}
        slots = None
        if self.wait_for_free_worker and self.capacity is not None:
            slots = self.capacity() - sum(running.values())
        for job in self.store.queued_in_order():
            if job["cancel_requested"]:
                continue
            if slots is not None and slots <= 0:
                waiting[job["id"]] = "waiting for a free worker (every worker of the cluster is busy)"
                continue
            if job["not_before"] and job["not_before"] > now:
                waiting[job["id"]] = f"retrying after {iso(job['not_before'])}"
                continue
            if running.get(job["owner"], 0) >= self.max_running_per_user:
                waiting[job["id"]] = (f"{job['owner']} already runs {self.max_running_per_user} "
                                      "jobs (the per-user limit)")
                continue
            try:
                claim = self.ledger.request(f"job:{job['id']}", job["owner"], job["gpus"],
                                            groups=job["groups"], priority=job["priority"])
            except QuotaExceededError as e:
                waiting[job["id"]] = f"over quota: {e}"
                continue
            except UsageError as e:  # impossible now (GPUs removed since submit)
                self._finish(job, FAILED, str(e))
                continue
            if claim.state != GRANTED:
                waiting[job["id"]] = f"waiting for {job['gpus']} GPU(s): position {claim.position} in the GPU queue"
                continue
            self._launch(job, claim)
            running[job["owner"]] = running.get(job["owner"], 0) + 1
            if slots is not None:
                slots -= 1
        self.waiting = waiting

    def _launch(self, job: dict, claim) -> None:
        attempt = job["attempt"] + 1
        visible = claim.visible_devices
        if not self.store.update_job(
                job["id"], only_if={"status": QUEUED}, status=RUNNING, attempt=attempt,
                started=utcnow(), units=[u["id"] for u in claim.units], visible_devices=visible,
                cell=None, error=None, not_before=None):
            self.ledger.release(f"job:{job['id']}")
            return
        job = {**job, "status": RUNNING, "attempt": attempt}
        try:
            who = notebooks.Owner.of(job["owner"], self.data_dir)
            # the notebook's folder, lexically: the kernel enters it as the owner, so the
            # owner's own permissions apply; root never resolves a user's path (links the
            # user controls could be swapped while it does, see aidc.security.userfiles)
            cwd = str(notebooks.resolve(who, job["path"]).parent)
            spec = {
                "job_id": job["id"], "attempt": attempt, "input_url": job["input_url"],
                "output_url": job["output_url"], "parameters": job["parameters"], "cwd": cwd,
                "home": str(who.home), "run_as": who.unix_name, "visible_devices": visible,
                "timeout": job["timeout"], "cell_timeout": job["cell_timeout"],
                "kernel_name": self.kernel_name, "url": self.url,
                "threads": self.kernel_threads or (self.threads() if self.threads else None),
                "artifact_key": self.artifacts.worker_key(job["id"]),
            }
        except Exception as e:
            self._launch_failed(job, attempt, e)
            return
        asyncio.ensure_future(self._run_attempt(job, attempt, spec))
        self.log.info("aidc jobs: %s attempt %d started (GPUs: %s)", job["id"], attempt, visible or "none")

    def _launch_failed(self, job: dict, attempt: int, error: BaseException,
                       doing: str = "could not be started") -> None:
        """An attempt that broke outside the notebook ends with the reason (never stays running).

        The job's retry policy applies as for any failed attempt (a hub or scheduler that
        was briefly unreachable); with no retries left it ends ``failed``.
        """
        if isinstance(error, AidcError):
            reason = f"the job {doing}: {error}"
        else:
            self.log.error("aidc jobs: %s attempt %d %s", job["id"], attempt, doing, exc_info=error)
            reason = f"the job {doing} ({type(error).__name__}: {_first_line(error)})"
        try:
            current = self.store.job(job["id"])
            if current["status"] != RUNNING or current["attempt"] != attempt:
                return  # already decided (cancel after grace, restart)
            self._attempt_failed(current, reason)
        except Exception:
            self.log.exception("aidc jobs: %s: could not record that the attempt failed", job["id"])

    async def _run_attempt(self, job: dict, attempt: int, spec: dict) -> None:
        """Give the attempt its owner's token, run it on the cluster, record the outcome."""
        job_id = job["id"]
        token = None
        try:
            try:
                if self.tokens is not None:
                    token = await self.tokens.mint(job["owner"], job_id, attempt, job["timeout"])
                current = self.store.job(job_id)
                if current["status"] != RUNNING or current["attempt"] != attempt:
                    return  # decided while the token was made (cancel after grace, restart)
                if current["cancel_requested"]:
                    self._finish(current, CANCELLED, None)
                    return
                secrets = SecretValues(self._secret_values(job, attempt))
                if secrets:
                    self._redactors[job_id] = Redactor(secrets)
                future = self.client.submit(run_job, {**spec, "token": token, "secrets": secrets},
                                            key=f"aidc-job-{job_id}-{attempt}", pure=False)
                self._futures[job_id] = future
            except asyncio.CancelledError:
                raise
            except Exception as e:  # no token, the scheduler unreachable, arguments it cannot send
                self._launch_failed(job, attempt, e)
                return
            try:
                await self._follow(job_id, attempt, future)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug while following: still end the job, with the reason
                self._launch_failed(job, attempt, e, doing="could not be followed on the cluster")
        finally:
            self._redactors.pop(job_id, None)
            if token is not None:
                await self._revoke(job["owner"], job_id)

    async def _revoke(self, owner: str, job_id: str) -> None:
        try:
            await self.tokens.revoke(owner, job_id)
        except Exception as e:  # found and revoked again when the job is recovered
            self.log.warning("aidc jobs: could not revoke the token of %s: %s", job_id, e)

    async def _follow(self, job_id: str, attempt: int, future) -> None:
        try:
            outcome = await future
            lost = None
        except asyncio.CancelledError:
            outcome, lost = None, "the job's task was cancelled on the cluster"
        except Exception as e:  # KilledWorker, lost connection: the worker died under it
            outcome, lost = None, f"the worker running the job died ({type(e).__name__})"
        finally:
            self._futures.pop(job_id, None)
        if job_id in self._redactors:
            outcome = self._redactors[job_id].scrub(outcome)
        job = self.store.job(job_id)
        if job["status"] != RUNNING or job["attempt"] != attempt:
            return  # already decided (cancel after grace, restart)
        if outcome is None:
            if job["cancel_requested"]:
                self._finish(job, CANCELLED, None)
            else:
                self._attempt_failed(job, lost, lost=True)
            return
        if outcome.get("status") == "lost":  # Dask re-ran the attempt after its worker died
            if job["cancel_requested"]:
                self._finish(job, CANCELLED, None)
            else:
                self._attempt_failed(job, outcome["error"], lost=True)
            return
        values = {"metrics": outcome.get("metrics") or job["metrics"],
                  "series": outcome.get("series") or job["series"]}
        status = outcome["status"]
        if job["cancel_requested"]:
            status = CANCELLED
        if status == FAILED and job["attempt"] <= job["retries"]:
            self._attempt_failed(job, outcome.get("error") or "failed", **values)
        else:
            self._finish(job, status, outcome.get("error") if status == FAILED else None, **values)

    def _attempt_failed(self, job: dict, reason: str, lost: bool = False, **values) -> None:
        """Requeue with back-off while retries are left; otherwise the job fails with ``reason``."""
        self.ledger.release(f"job:{job['id']}")
        attempt = job["attempt"]
        if attempt <= job["retries"] and not job["cancel_requested"]:
            delay = self.retry_backoff * (2 ** max(attempt - 1, 0))
            self.store.update_job(
                job["id"], status=QUEUED, not_before=utcnow() + dt.timedelta(seconds=delay),
                error=f"attempt {attempt} of {job['retries'] + 1}: {reason}; retrying in {delay:g} s",
                **values)
            self.log.warning("aidc jobs: %s attempt %d failed (%s); retry in %g s", job["id"], attempt, reason, delay)
        else:
            tries = f" (after {attempt} attempts)" if attempt > 1 else ""
            self._finish(job, CANCELLED if job["cancel_requested"] else FAILED, reason + tries, **values)
        self._notify(job["id"])
        self.wake()

    def _finish(self, job: dict, status: str, error: str | None, **values) -> None:
        self.ledger.release(f"job:{job['id']}")
        self.store.update_job(job["id"], status=status, error=error, finished=utcnow(), **values)
        self.log.info("aidc jobs: %s %s%s", job["id"], status, f": {error}" if error else "")
        audit.record("job", actor=job["owner"], action="end", target=job["id"], state=status,
                     result="success" if status == COMPLETED else "failure", reason=(error or None) and error[:500])
        self._notify(job["id"])
        self.wake()

    # -- cancel ---------------------------------------------------------------------
    async def cancel(self, job_id: str) -> dict:
        job = self.store.job(job_id)
        if job["status"] in FINAL:
            raise ConflictError(f"job {job_id} is already {job['status']}")
        self.store.update_job(job_id, cancel_requested=True)
        if job["status"] == QUEUED:
            if self.store.update_job(job_id, only_if={"status": QUEUED}, status=CANCELLED,
                                     finished=utcnow()):
                self.ledger.release(f"job:{job_id}")
                audit.record("job", actor=job["owner"], action="end", target=job_id, state=CANCELLED,
                             result="failure", reason="cancelled while queued")
                self._notify(job_id)
                return self.store.job(job_id)
            job = self.store.job(job_id)
        # first the marker, then the workers: an attempt that registers on its worker after
        # stop_job looked there finds the marker before it starts its kernel
        try:
            self.artifacts.write_bytes(attempt_marker(job["output_url"], job["attempt"], "cancel"), b"")
        except Exception as e:  # noqa: BLE001 - the stop below and the deadline still apply
            self.log.warning("aidc jobs: could not mark %s cancelled: %s", job_id, e)
        if self.client is not None:
            try:
                await self.client.run(stop_job, job_id, "cancel")
            except Exception as e:
                self.log.warning("aidc jobs: could not reach the workers to stop %s: %s", job_id, e)
        asyncio.ensure_future(self._cancel_deadline(job_id, job["attempt"]))
        return self.store.job(job_id)

    async def _cancel_deadline(self, job_id: str, attempt: int) -> None:
        await asyncio.sleep(self.cancel_grace)
        job = self.store.job(job_id)
        if job["status"] == RUNNING and job["attempt"] == attempt:
            future = self._futures.pop(job_id, None)
            if future is not None:
                future.cancel()
            self._finish(job, CANCELLED, None)

    # -- events ---------------------------------------------------------------------
    def _on_event(self, event) -> None:
        _, msg = event
        try:
            job = self.store.job(msg["job"])
        except Exception:
            return
        if job["attempt"] != msg.get("attempt") or job["status"] != RUNNING:
            return
        item = {k: msg.get(k) for k in ("type", "cell", "name", "text", "value", "status")}
        if job["id"] in self._redactors:
            item = self._redactors[job["id"]].scrub(item)
        self.store.add_events(job["id"], [item])
        if item["type"] == "cell_start":
            cells = (item.get("value") or {}).get("cells") or job["cells"]
            self.store.update_job(job["id"], cell=item["cell"], cells=cells)
        elif item["type"] == "metric":
            value = item["value"] or {}
            metrics = dict(job["metrics"])
            metrics[item["name"]] = value.get("value")
            values: dict[str, Any] = {"metrics": metrics}
            if value.get("step") is not None:
                series = {k: list(v) for k, v in job["series"].items()}
                series.setdefault(item["name"], []).append([value["step"], value.get("value")])
                values["series"] = series
            self.store.update_job(job["id"], **values)
        self._notify(job["id"])

    def _notify(self, job_id: str) -> None:
        ev = self._changed.pop(job_id, None)
        if ev is not None:
            ev.set()

    async def changed(self, job_id: str, timeout: float) -> None:
        """Wait until ``job_id`` has news (or ``timeout``), for streaming followers."""
        ev = self._changed.setdefault(job_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- views ----------------------------------------------------------------------
    def view(self, job: dict) -> dict:
        position = None
        if job["status"] == QUEUED:
            queued = [j["id"] for j in self.store.queued_in_order()]
            position = queued.index(job["id"]) + 1 if job["id"] in queued else None
        return job_view(job, position=position, datasets=self.store.datasets_read(job["id"]),
                        waiting=self._waiting_for(job), notices=self._notices(job["id"]))

    def _waiting_for(self, job: dict) -> str | None:
        """What a queued job waits for (None once it runs or has ended)."""
        if job["status"] != QUEUED:
            return None
        if self.client is None:  # the first job starts the cluster: no dispatch pass has run
            return STARTING_CLUSTER
        return self.waiting.get(job["id"])

    def _notices(self, job_id: str) -> list[str]:
        """What the service decided for the job at submit (recorded first, right after it was queued)."""
        return [e["text"] for e in self.store.events(job_id, limit=1 + MAX_NOTICES)
                if e["type"] == NOTICE and e.get("text")]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else "no details"


def check_interval(cron: str, timezone: str, minimum: float, runs: int = 100) -> None:
    """Refuse ``cron`` if two of its next ``runs`` runs are closer than ``minimum`` seconds.

    A seconds field with more than one value fires more than once a minute, however its
    values are spread over a day, so it is checked over one whole minute as well.
    """
    from croniter import croniter

    if minimum <= 0:
        return
    start = dt.datetime.now(dt.UTC).astimezone(ZoneInfo(timezone))
    it = croniter(cron, start)
    prev = it.get_next(dt.datetime)
    closest = None
    for _ in range(runs):
        nxt = it.get_next(dt.datetime)
        gap = (nxt - prev).total_seconds()
        closest = gap if closest is None else min(closest, gap)
        prev = nxt
        if closest < minimum:
            break
    fields = croniter(cron).expanded
    seconds = fields[5] if len(fields) > 5 else [0]
    try:
        values = list(range(60)) if "*" in seconds else sorted(int(v) for v in seconds)
    except (TypeError, ValueError):
        values = []
    if len(values) > 1:  # several runs within one minute, on whichever day they fall
        spread = min(b - a for a, b in zip(values, values[1:]))
        closest = spread if closest is None else min(closest, spread)
    if closest is not None and closest < minimum:
        raise UsageError(
            f"the schedule {cron!r} would run {closest:g} s after a previous run; a schedule may run at most "
            f"once every {minimum:g} s")


def next_cron(cron: Any, timezone: str, after: dt.datetime) -> dt.datetime:
    """The next run time (naive UTC) of ``cron`` in ``timezone`` after ``after``."""
    from croniter import CroniterBadCronError, croniter

    if not isinstance(cron, str) or not cron.strip():
        raise UsageError('cron is required, e.g. "0 3 * * *" (every day at 03:00)')
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'") from None
    try:
        it = croniter(cron, after.astimezone(tz))
    except (CroniterBadCronError, ValueError, KeyError) as e:
        raise UsageError(f"invalid cron expression {cron!r}: {e}") from None
    return it.get_next(dt.datetime).astimezone(dt.UTC).replace(tzinfo=None)
