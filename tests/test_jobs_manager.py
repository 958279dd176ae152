"""The jobs manager's state machine in-process: retries, cancel races, time-outs, recovery
after a restart, queue order, per-user caps and GPU claims, in seconds.

No hub, no root (development mode: homes under the data directory), no Dask processes:
the fakes of ``tests/mocking.py`` stand in for the Dask client and its workers, the
per-attempt hub tokens and the clock. The jobs store, the artifact store and the GPU
ledger (two simulated GPUs on node ``node-1``) are the real ones, on SQLite in a
temporary folder; where a test needs the worker side (time-outs, Dask's re-run of a task
whose worker died) the real :func:`aidc.jobs.execute.run_job` runs on a fake worker
thread with fake kernels. The same paths through real processes are tested in
``test_jobs.py`` and ``test_jobs_resilience.py``.
"""

from __future__ import annotations

import asyncio

import nbformat
import pytest
from traitlets.config import Config

from aidc.errors import ConflictError, UsageError
from aidc.gpu import inventory
from aidc.gpu.ledger import GPULedger
from aidc.hub import system_users
from aidc.jobs import manager as manager_module
from aidc.jobs.artifacts import ArtifactStore
from aidc.jobs.manager import JobManager
from aidc.jobs.store import JobStore
from jobs_helpers import notebook
from mocking import FakeClock, FakeDaskClient, FakeKernels, FakeTokens

NODE = "node-1"
GPU0, GPU1 = f"{NODE}/gpu0", f"{NODE}/gpu1"
LOST = "the worker running the job died (KilledWorker)"

TRAIN = notebook("print('training', epochs)", "loss = 1 / epochs", parameters="epochs = 1")


async def until(predicate, timeout: float = 5.0, what: str = ""):
    """Poll ``predicate`` (every 2 ms) until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.002)


class Jobs:
    """One jobs service's parts in a temporary data directory, and the managers started on them."""

    def __init__(self, data_dir, monkeypatch):
        self.data_dir = data_dir
        self.clock = FakeClock()
        monkeypatch.setattr(manager_module, "utcnow", self.clock.utcnow)
        self.tokens = FakeTokens()
        self.store, self.ledger = self._open()
        self.ledger.sync_inventory(inventory.simulated(2))
        self.artifacts = ArtifactStore(url=str(data_dir / "artifacts"))
        for user in ("alice", "bob"):
            home = data_dir / "homes" / user
            home.mkdir(parents=True)
            (home / "train.ipynb").write_text(nbformat.writes(TRAIN))
        self.manager: JobManager | None = None
        self.client: FakeDaskClient | None = None
        self.clients: list[FakeDaskClient] = []

    def _open(self) -> tuple[JobStore, GPULedger]:
        """The store and ledger as a (new) service process opens them."""
        store = JobStore(db_url=f"sqlite:///{self.data_dir / 'jobs.sqlite'}",
                         data_dir=str(self.data_dir))
        ledger = GPULedger(db_url=f"sqlite:///{self.data_dir / 'aidc.sqlite'}", node=NODE)
        return store, ledger

    async def start(self, client: FakeDaskClient | None = None, **traits) -> JobManager:
        """Start a JobManager (as the jobs service does) connected to ``client``."""
        client = client or FakeDaskClient()
        config = Config({"JobManager": {"tick": 0.01, "retry_backoff": 2.0, "cancel_grace": 0.05,
                                         **traits}})
        manager = JobManager(self.store, self.artifacts, self.ledger, str(self.data_dir),
                             capacity=lambda: client.threads, tokens=self.tokens, config=config,
                             threads=lambda: 3)  # what an embedded cluster would choose
        await manager.start(client)
        self.manager, self.client = manager, client
        self.clients.append(client)
        return manager

    async def restart(self, client: FakeDaskClient | None = None, **traits) -> JobManager:
        """The service process dies (writes nothing more) and a new one starts on the same files.

        The old process's follow-ups stay suspended on the old client, whose tasks never
        report again, as if its process had been killed.
        """
        await _stop(self.manager)
        self.store, self.ledger = self._open()
        return await self.start(client, **traits)

    # -- acting as a user ------------------------------------------------------------
    def submit(self, owner: str = "alice", **body) -> str:
        return self.manager.submit(owner, [], {"path": "train.ipynb", **body})["id"]

    # -- what a user sees ------------------------------------------------------------
    def job(self, job_id: str) -> dict:
        """The job as the API shows it."""
        return self.manager.view(self.store.job(job_id))

    def statuses(self, job_id: str) -> list[str]:
        return [e["status"] for e in self.store.events(job_id) if e["type"] == "status"]

    def gpus(self) -> dict[str, list[str]]:
        """GPU units held, per ledger holder (granted claims only)."""
        return {c.holder: [u["id"] for u in c.units]
                for c in self.ledger.claims() if c.state == "granted"}

    def gpu_queue(self) -> list[str]:
        return [c.holder for c in self.ledger.queue()]

    # -- waiting ---------------------------------------------------------------------
    async def passes(self, n: int = 2) -> None:
        """Let the manager's loop make ``n`` more passes over the queue (and what they start)."""
        for _ in range(n):
            seen = self.manager.waiting  # every pass sets a new dict
            self.manager.wake()
            await until(lambda: self.manager.waiting is not seen, what="a dispatch pass")
        for _ in range(5):
            await asyncio.sleep(0)

    async def status(self, job_id: str, status: str, timeout: float = 5.0) -> dict:
        await until(lambda: self.store.job(job_id)["status"] == status, timeout,
                    what=f"{job_id} {status} (now {self.store.job(job_id)['status']})")
        return self.job(job_id)

    async def task(self, job_id: str, attempt: int = 1):
        """The Dask task of ``job_id``'s attempt, once the manager has submitted it."""
        found = await until(
            lambda: [t for t in self.client.tasks_of(job_id) if t.attempt == attempt],
            what=f"attempt {attempt} of {job_id} on the cluster")
        return found[0]

    async def close(self) -> None:
        if self.manager is not None:
            await _stop(self.manager)
        for client in self.clients:
            client.close()
        await _cancel_all(asyncio.all_tasks() - {asyncio.current_task()})


async def _cancel_all(tasks) -> None:
    """Cancel ``tasks`` until they are done: on Python 3.11 ``asyncio.wait_for`` (a job's
    follower waits with it) swallows a cancel that arrives as its wait ends."""
    tasks = set(tasks)
    for _ in range(100):
        tasks = {t for t in tasks if not t.done()}
        if not tasks:
            return
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=0.05)
    raise AssertionError(f"tasks that do not end: {tasks}")


async def _stop(manager: JobManager) -> None:
    """Stop the manager's loop for good (a dead service process dispatches nothing more)."""
    task = manager._task
    await manager.stop()
    assert task is None or task.done(), "JobManager.stop() returned with its loop running"


@pytest.fixture
async def jobs(tmp_path, monkeypatch):
    # development mode even where the tests run as root: jobs read their notebook from
    # <data-dir>/homes/<owner> and run as this account, no Unix users needed
    monkeypatch.setattr(system_users, "running_as_root", lambda: False)
    parts = Jobs(tmp_path, monkeypatch)
    yield parts
    await parts.close()


@pytest.fixture
def kernels(monkeypatch):
    """Fake kernels for the real run_job on fake workers (FakeDaskClient(execute=True))."""
    fake = FakeKernels()
    fake.install(monkeypatch)
    return fake


# -- retries -----------------------------------------------------------------------------

async def test_lost_worker_is_retried_with_doubling_backoff_then_fails_with_the_reason(jobs):
    await jobs.start()
    job = jobs.submit(retries=2, gpus=1)

    for attempt, backoff in ((1, 2.0), (2, 4.0)):
        task = await jobs.task(job, attempt)
        assert jobs.job(job)["status"] == "running" and jobs.job(job)["attempt"] == attempt
        assert jobs.gpus() == {f"job:{job}": [GPU0]}
        assert task.spec["visible_devices"] == "GPU-simulated-0000"
        task.lose_worker()
        view = await jobs.status(job, "queued")
        assert view["error"] == f"attempt {attempt} of 3: {LOST}; retrying in {backoff:g} s"
        assert jobs.gpus() == {}  # nothing held while it waits
        # not before its back-off is over
        jobs.clock.advance(backoff - 0.1)
        await jobs.passes()
        assert jobs.job(job)["waiting"].startswith("retrying after ")
        assert len(jobs.client.tasks_of(job)) == attempt
        jobs.clock.advance(0.2)

    task = await jobs.task(job, 3)
    task.lose_worker()
    view = await jobs.status(job, "failed")
    assert view["error"] == f"{LOST} (after 3 attempts)"
    assert view["attempt"] == 3 and view["finished"] is not None
    assert jobs.statuses(job) == ["queued", "running", "queued", "running", "queued", "running",
                                  "failed"]
    assert jobs.gpus() == {}
    # each attempt had its own token, none outlives its attempt
    assert [m["attempt"] for m in jobs.tokens.minted] == [1, 2, 3]
    assert [t.spec["token"] for t in jobs.client.tasks] == [m["token"] for m in jobs.tokens.minted]
    assert jobs.tokens.live() == []


async def test_retry_after_a_lost_worker_completes_and_ignores_the_dead_attempt(jobs):
    await jobs.start()
    job = jobs.submit(retries=1)
    first = await jobs.task(job)
    first.emit("metric", name="loss", value={"value": 9.0, "step": None})
    jobs.client.lose_worker()
    await jobs.status(job, "queued")
    jobs.clock.advance(2)
    second = await jobs.task(job, 2)
    second.emit("metric", name="loss", value={"value": 0.5, "step": None})
    # a late event of the dead attempt changes nothing
    first.emit("metric", name="loss", value={"value": 5.0, "step": None})
    first.emit("stream", cell=1, name="stdout", text="from the dead worker\n")
    assert jobs.job(job)["metrics"] == {"loss": 0.5}
    assert "dead worker" not in jobs.store.logs(job)
    second.complete(metrics={"loss": 0.25})
    view = await jobs.status(job, "completed")
    assert (view["attempt"], view["error"], view["metrics"]) == (2, None, {"loss": 0.25})
    assert jobs.statuses(job) == ["queued", "running", "queued", "running", "completed"]
    requeued = [e for e in jobs.store.events(job) if e["type"] == "status"][2]
    assert requeued["status"] == "queued" and LOST in requeued["text"]


async def test_dask_rerun_after_a_worker_died_becomes_an_aidc_retry(jobs, kernels):
    # Dask allowed to re-run the task (an external scheduler): the re-run must not run the
    # notebook again as the same attempt; aidc retries it as attempt 2
    kernels.behaviour = lambda env: "hang" if env["AIDC_JOB_ATTEMPT"] == "1" else "complete"
    kernels.metrics = {"accuracy": 0.9}
    await jobs.start(FakeDaskClient(execute=True))
    job = jobs.submit(retries=1)
    await until(lambda: jobs.job(job)["progress"]["cell"] == 0, what="the first cell started")
    jobs.client.lose_worker(rerun=True)
    view = await jobs.status(job, "queued")
    assert view["error"] == "attempt 1 of 2: the worker running the job died; retrying in 2 s"
    jobs.clock.advance(2)
    view = await jobs.status(job, "completed")
    assert view["attempt"] == 2 and view["metrics"] == {"accuracy": 0.9}
    # run_job started three times (attempt 1, Dask's re-run of it, attempt 2), but only
    # two notebooks ran: the re-run reported the loss without starting a kernel
    assert len(jobs.client.tasks_of(job)[0].workers) == 2
    assert [k.env["AIDC_JOB_ATTEMPT"] for k in kernels.started] == ["1", "2"]


async def test_failed_notebook_is_retried_while_retries_are_left(jobs):
    await jobs.start()
    job = jobs.submit(retries=1)
    (await jobs.task(job)).fail("cell 2 raised ValueError: bad data")
    view = await jobs.status(job, "queued")
    assert view["error"] == "attempt 1 of 2: cell 2 raised ValueError: bad data; retrying in 2 s"
    jobs.clock.advance(2)
    (await jobs.task(job, 2)).fail("cell 2 raised ValueError: bad data")
    view = await jobs.status(job, "failed")
    assert (view["attempt"], view["error"]) == (2, "cell 2 raised ValueError: bad data")
    # without retries the first failure is final
    once = jobs.submit()
    (await jobs.task(once)).fail("cell 2 raised ValueError: bad data")
    assert (await jobs.status(once, "failed"))["attempt"] == 1


async def test_more_retries_than_the_maximum_are_refused_at_submit(jobs):
    await jobs.start(max_retries=3)
    with pytest.raises(UsageError, match="retries"):
        jobs.submit(retries=4)
    assert jobs.store.find_jobs() == []


async def test_an_attempt_the_hub_gives_no_token_fails_with_the_reason(jobs):
    jobs.tokens.fail = OSError("hub unreachable")
    await jobs.start()
    job = jobs.submit(gpus=1)
    view = await jobs.status(job, "failed")
    assert view["error"] == "the job could not be started (OSError: hub unreachable)"
    assert jobs.client.tasks == [] and jobs.gpus() == {}


# -- cancel races ------------------------------------------------------------------------

async def test_cancel_while_queued_for_gpus_drops_the_gpu_request(jobs):
    await jobs.start()
    big = jobs.submit(gpus=2)
    task = await jobs.task(big)
    waiting = jobs.submit(owner="bob", gpus=1)
    await jobs.passes()
    assert jobs.job(waiting)["waiting"] == "waiting for 1 GPU(s): position 1 in the GPU queue"
    assert jobs.gpu_queue() == [f"job:{waiting}"]

    view = await jobs.manager.cancel(waiting)
    assert view["status"] == "cancelled" and view["finished"] is not None
    assert jobs.gpu_queue() == []
    task.complete()
    await jobs.status(big, "completed")
    await jobs.passes()
    assert jobs.gpus() == {} and jobs.client.tasks_of(waiting) == []
    assert jobs.client.stops(waiting) == []  # nothing ran, nothing to stop


async def test_a_cancel_before_the_task_reaches_a_worker_starts_no_kernel(jobs, kernels):
    # the job runs (its task is on the cluster) but no worker has taken the task yet, so
    # the service's stop_job finds nothing to stop; the task then starts: it must find the
    # attempt cancelled and start no kernel (it used to run its whole notebook, holding a
    # worker, while the job already showed cancelled)
    kernels.behaviour = lambda env: "hang"
    await jobs.start(FakeDaskClient(execute=True, start_later=True), cancel_grace=30)
    job = jobs.submit()
    task = await jobs.task(job)
    await jobs.manager.cancel(job)
    assert jobs.client.stops(job) == ["cancel"]  # asked, and nobody had it
    task.start()
    view = await jobs.status(job, "cancelled")
    assert view["error"] is None and view["attempt"] == 1
    await until(lambda: task.done, what="the task ended")
    assert kernels.started == []


async def test_cancel_during_retry_backoff_ends_the_job(jobs):
    await jobs.start()
    job = jobs.submit(retries=3)
    (await jobs.task(job)).lose_worker()
    await jobs.status(job, "queued")
    assert (await jobs.manager.cancel(job))["status"] == "cancelled"
    jobs.clock.advance(60)
    await jobs.passes()
    assert jobs.job(job)["status"] == "cancelled" and len(jobs.client.tasks_of(job)) == 1


async def test_cancel_while_dispatching_never_reaches_the_cluster(jobs):
    # the job is running (GPU claimed) but its task is not on the cluster yet: the hub
    # is still making its token
    jobs.tokens.hold = True
    await jobs.start(cancel_grace=30)
    job = jobs.submit(gpus=1)
    await jobs.status(job, "running")
    assert jobs.gpus() == {f"job:{job}": [GPU0]}
    view = await jobs.manager.cancel(job)
    assert view["cancel_requested"] is True
    jobs.tokens.release_mints()
    view = await jobs.status(job, "cancelled")
    assert view["error"] is None and view["attempt"] == 1
    assert jobs.client.tasks == [] and jobs.gpus() == {}
    await until(lambda: jobs.tokens.live() == [], what="the token revoked")


async def test_cancel_while_dispatching_with_a_hub_slower_than_the_grace(jobs):
    jobs.tokens.hold = True
    await jobs.start(cancel_grace=0.05)
    job = jobs.submit(gpus=1)
    await jobs.status(job, "running")
    await jobs.manager.cancel(job)
    await jobs.status(job, "cancelled", timeout=2)
    assert jobs.gpus() == {}  # released at the grace, the token still being made
    jobs.tokens.release_mints()
    await until(lambda: jobs.tokens.minted and jobs.tokens.live() == [],
                what="the late token revoked")
    await jobs.passes()
    assert jobs.client.tasks == [] and jobs.job(job)["status"] == "cancelled"


async def test_cancel_while_running_stops_the_task_and_releases_its_gpus(jobs):
    await jobs.start()
    job = jobs.submit(gpus=1, retries=2)
    task = await jobs.task(job)
    view = await jobs.manager.cancel(job)
    assert task.stops == ["cancel"]
    view = await jobs.status(job, "cancelled")
    assert (view["attempt"], view["error"]) == (1, None)  # no retry of a cancelled job
    assert jobs.gpus() == {} and jobs.tokens.live() == []
    assert jobs.statuses(job) == ["queued", "running", "cancelled"]


@pytest.mark.parametrize("then", ["nothing", "lose_worker", "complete", "fail"])
async def test_cancel_of_a_running_job_whose_worker_does_not_answer(jobs, then):
    # the worker ignores stop_job: after cancel_grace the job is cancelled anyway; whatever
    # the worker does next (or if it dies) changes nothing, a retry included
    await jobs.start(cancel_grace=0.05)
    job = jobs.submit(gpus=1, retries=3)
    task = await jobs.task(job)
    task.responsive = False
    await jobs.manager.cancel(job)
    assert jobs.job(job)["status"] == "running" and jobs.gpus() == {f"job:{job}": [GPU0]}
    if then == "lose_worker":
        task.lose_worker()
    elif then == "complete":
        task.complete(metrics={"loss": 0.1})
    elif then == "fail":
        task.fail("cell 2 raised ValueError: bad data")
    view = await jobs.status(job, "cancelled", timeout=2)
    assert (view["attempt"], view["error"]) == (1, None)
    assert jobs.gpus() == {}
    if then == "nothing":
        assert task.future.cancelled  # the task was dropped from the cluster
    jobs.clock.advance(60)
    await jobs.passes()
    assert jobs.client.tasks_of(job) == [task] and jobs.job(job)["status"] == "cancelled"


@pytest.mark.parametrize("ending", ["completed", "failed"])
async def test_cancel_of_a_finished_job_is_refused(jobs, ending):
    await jobs.start()
    job = jobs.submit(gpus=1)
    task = await jobs.task(job)
    if ending == "completed":
        task.complete()
    else:
        task.fail("cell 1 raised ValueError: x")
    await jobs.status(job, ending)
    with pytest.raises(ConflictError, match=f"already {ending}"):
        await jobs.manager.cancel(job)
    view = jobs.job(job)
    assert view["status"] == ending and view["cancel_requested"] is False
    assert jobs.client.stops(job) == [] and jobs.gpus() == {}


async def test_kernels_get_their_share_of_the_cores_for_math_libraries(jobs, kernels):
    await jobs.start(FakeDaskClient(execute=True))
    await jobs.status(jobs.submit(), "completed", timeout=5)
    env = kernels.started[0].env
    assert [env.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")] == ["3"] * 3
    # an admin's setting wins over the cluster's choice
    await jobs.restart(FakeDaskClient(execute=True), kernel_threads=5)
    await jobs.status(jobs.submit(), "completed", timeout=5)
    assert kernels.started[-1].env["OMP_NUM_THREADS"] == "5"


# -- time-outs ---------------------------------------------------------------------------

async def test_job_over_its_time_limit_is_stopped_and_fails_with_the_reason(jobs, kernels):
    kernels.behaviour = "hang"
    await jobs.start(FakeDaskClient(execute=True))
    job = jobs.submit(timeout=0.1, gpus=1)
    view = await jobs.status(job, "failed", timeout=5)
    assert view["error"] == "the job ran longer than its time limit of 0.1 s; stopped in cell 1"
    assert kernels.started[0].killed.is_set()  # the user's code really stopped
    assert kernels.started[0].env["CUDA_VISIBLE_DEVICES"] == "GPU-simulated-0000"
    assert jobs.gpus() == {}
    assert jobs.tokens.minted[0]["timeout"] == 0.1 and jobs.tokens.live() == []


async def test_timed_out_attempt_with_a_retry_left_runs_again(jobs, kernels):
    kernels.behaviour = lambda env: "hang" if env["AIDC_JOB_ATTEMPT"] == "1" else "complete"
    await jobs.start(FakeDaskClient(execute=True))
    job = jobs.submit(timeout=0.1, retries=1)
    await until(lambda: jobs.store.job(job)["error"] is not None,
                what="the first attempt timed out")
    view = jobs.job(job)
    assert view["error"] == ("attempt 1 of 2: the job ran longer than its time limit of 0.1 s; "
                             "stopped in cell 1; retrying in 2 s")
    jobs.clock.advance(2)
    view = await jobs.status(job, "completed")
    assert view["attempt"] == 2 and view["error"] is None


# -- recovery after a restart of the service --------------------------------------------

async def test_restart_requeues_or_fails_running_jobs_and_loses_no_queued_one(jobs):
    await jobs.start(max_running_per_user=1)
    retried = jobs.submit(retries=1, gpus=1)
    await jobs.task(retried)
    failed = jobs.submit(owner="bob", gpus=1)  # no retries: the restart ends it
    await jobs.task(failed)
    waiting = [jobs.submit(), jobs.submit(owner="bob", priority=5)]  # behind the per-user cap
    await jobs.passes()
    assert jobs.gpus() == {f"job:{retried}": [GPU0], f"job:{failed}": [GPU1]}
    # a claim a crashed service left behind for a job that is no longer there
    jobs.ledger.request("job:j-vanished", "alice", 0)
    old_client = jobs.client

    await jobs.restart(FakeDaskClient(), max_running_per_user=1)

    # the old process's tasks never reported; the re-queued job waits for its back-off
    assert old_client.running() and jobs.client.tasks_of(retried) == []
    # the cluster is told to stop what the old service ran; the attempts' tokens are revoked
    assert jobs.client.stops(retried) == ["restart"] and jobs.client.stops(failed) == ["restart"]
    assert ("alice", retried) in jobs.tokens.revoked and ("bob", failed) in jobs.tokens.revoked
    reason = "the jobs service restarted while the job was running"
    view = jobs.job(retried)
    assert view["status"] == "queued"
    assert view["error"] == f"attempt 1 of 2: {reason}; retrying in 2 s"
    view = jobs.job(failed)
    assert view["status"] == "failed" and view["error"] == reason
    assert "job:j-vanished" not in {c.holder for c in jobs.ledger.claims()}

    # the queued jobs were kept and run; the re-queued one runs after its back-off
    for job in waiting:
        (await jobs.task(job)).complete()
    jobs.clock.advance(2)
    (await jobs.task(retried, 2)).complete()
    for job in (*waiting, retried):
        await jobs.status(job, "completed")
    assert jobs.job(retried)["attempt"] == 2
    assert jobs.gpus() == {} and jobs.store.find_jobs(status=["queued", "running"]) == []


async def test_restart_ends_a_job_cancelled_while_running_as_cancelled(jobs):
    await jobs.start(cancel_grace=30)
    job = jobs.submit(retries=2, gpus=1)
    task = await jobs.task(job)
    task.responsive = False
    await jobs.manager.cancel(job)
    await jobs.restart(FakeDaskClient())
    view = jobs.job(job)
    assert (view["status"], view["attempt"]) == ("cancelled", 1)
    jobs.clock.advance(60)
    await jobs.passes()
    assert jobs.client.tasks == [] and jobs.gpus() == {}


# -- queue order and per-user caps ------------------------------------------------------

async def test_higher_priority_first_then_first_submitted(jobs):
    await jobs.start(FakeDaskClient(threads=1))
    blocker = jobs.submit()
    running = await jobs.task(blocker)
    low1 = jobs.submit(owner="bob")
    low2 = jobs.submit()
    high = jobs.submit(owner="bob", priority=5)
    mid = jobs.submit(priority=1)
    await jobs.passes()
    expected = [high, mid, low1, low2]
    assert [jobs.job(j)["queue_position"] for j in expected] == [1, 2, 3, 4]
    assert jobs.job(low2)["waiting"] == (
        "waiting for a free worker (every worker of the cluster is busy)")
    started = []
    for _ in expected:
        running.complete()
        running = (await until(jobs.client.running, what="the next job"))[0]
        started.append(running.job_id)
    assert started == expected


async def test_per_user_cap_holds_back_only_that_users_jobs(jobs):
    await jobs.start(max_running_per_user=2)
    first, second = jobs.submit(), jobs.submit()
    await jobs.task(first)
    await jobs.task(second)
    third = jobs.submit(priority=10)  # first in the queue, but alice is at her cap
    bobs = jobs.submit(owner="bob")
    await jobs.passes()
    assert {t.job_id for t in jobs.client.running()} == {first, second, bobs}
    view = jobs.job(third)
    assert view["status"] == "queued"
    assert view["waiting"] == "alice already runs 2 jobs (the per-user limit)"
    (await jobs.task(first)).complete()
    await jobs.task(third)
    assert jobs.job(third)["status"] == "running"


async def test_jobs_waiting_for_gpus_get_them_in_priority_order(jobs):
    await jobs.start()
    jobs.ledger.request("server:bob/", "bob", 1)  # a notebook server holds one GPU
    holder = jobs.submit(gpus=1)
    task = await jobs.task(holder)
    early = jobs.submit(gpus=1)
    await jobs.passes()
    urgent = jobs.submit(owner="bob", gpus=1, priority=5)
    await jobs.passes()
    assert jobs.job(urgent)["waiting"] == "waiting for 1 GPU(s): position 1 in the GPU queue"
    assert jobs.job(early)["waiting"] == "waiting for 1 GPU(s): position 2 in the GPU queue"
    task.complete()
    urgent_task = await jobs.task(urgent)
    assert urgent_task.spec["visible_devices"] == jobs.job(urgent)["visible_devices"]
    await jobs.passes()
    assert jobs.job(early)["status"] == "queued" and jobs.gpu_queue() == [f"job:{early}"]


# -- GPU claims and events ---------------------------------------------------------------

async def test_gpus_are_claimed_at_dispatch_and_released_at_the_end(jobs):
    await jobs.start()
    job = jobs.submit(gpus=2)
    assert jobs.job(job)["status"] == "queued" and jobs.gpus() == {}  # nothing before dispatch
    task = await jobs.task(job)
    assert jobs.gpus() == {f"job:{job}": [GPU0, GPU1]}
    view = jobs.job(job)
    assert view["units"] == [GPU0, GPU1]
    assert view["visible_devices"] == "GPU-simulated-0000,GPU-simulated-0001"
    assert task.spec["visible_devices"] == view["visible_devices"]  # what its kernel sees
    task.complete()
    view = await jobs.status(job, "completed")
    assert jobs.gpus() == {} and view["units"] == [GPU0, GPU1]  # what it had stays on record


async def test_more_gpus_than_the_platform_has_are_refused_at_submit(jobs):
    await jobs.start()
    with pytest.raises(UsageError,
                       match=r"asked for 3 GPUs, but this platform has 2 \(simulated\)"):
        jobs.submit(gpus=3)


async def test_progress_metrics_and_output_of_the_running_attempt_are_recorded(jobs):
    await jobs.start()
    job = jobs.submit()
    task = await jobs.task(job)
    task.emit("cell_start", cell=1, value={"cells": 3})
    task.emit("stream", cell=1, name="stdout", text="epoch 1\n")
    task.emit("metric", cell=1, name="loss", value={"value": 0.5, "step": 1})
    task.emit("metric", cell=1, name="loss", value={"value": 0.25, "step": 2})
    view = jobs.job(job)
    assert view["progress"] == {"cell": 1, "cells": 3}
    assert view["metrics"] == {"loss": 0.25} and view["series"] == {"loss": [[1, 0.5], [2, 0.25]]}
    assert jobs.store.logs(job) == "epoch 1\n"
    task.complete(metrics={"loss": 0.25}, series={"loss": [[1, 0.5], [2, 0.25]]})
    await jobs.status(job, "completed")
    task.emit("stream", cell=2, name="stdout", text="too late\n")  # after the end: dropped
    assert jobs.store.logs(job) == "epoch 1\n"
