"""Fakes at the boundaries of aidc's state machines, for fast in-process tests.

In the way JupyterHub's ``jupyterhub/tests/mocking.py`` keeps ``SlowSpawner``,
``NeverSpawner`` and ``BadSpawner``, these stand in for the parts that are slow, fail or
hang, so failure paths are tested in milliseconds without a hub, root or Dask processes.
Everything on the aidc side of a fake runs for real (the jobs store on SQLite, the GPU
ledger, :func:`aidc.jobs.execute.run_job` where a test asks for it).

- :class:`FakeClock`: the jobs manager's "now" (``aidc.jobs.manager.utcnow``, which
  decides retry back-offs). Tests :meth:`~FakeClock.advance` it instead of sleeping.
- :class:`FakeDaskClient`: what :class:`aidc.jobs.manager.JobManager` uses of a
  ``distributed.Client``: ``submit`` (the attempt's task), ``run`` (``stop_job`` on the
  workers), ``subscribe_topic`` (progress events on topic ``aidc-jobs``). Two modes:

  * scripted (default): each ``submit`` becomes a :class:`FakeTask` that the test drives:
    emit events as the worker would, finish with an outcome, lose its worker. A lost
    worker looks to the manager exactly as with Dask: with ``allowed-failures`` 0 (what
    the jobs service sets) awaiting the future raises ``KilledWorker``; with Dask allowed
    to re-run the task, the re-run returns ``{"status": "lost"}`` (what ``run_job``
    returns when it finds its attempt's start marker).
  * executing (``execute=True``): the submitted function (the real ``run_job``) runs on a
    thread that plays a :class:`FakeWorker`, with :class:`FakeKernels` installed; losing
    the worker kills its kernels and, with a re-run, starts the same task again on a new
    worker, so ``run_job``'s own start marker turns it into a loss.
- :class:`FakeTask`: one submitted attempt (its spec, key, future and what the manager
  asked the workers to do to it).
- :class:`FakeWorker`: the ``distributed.get_worker()`` of an executing task: its address,
  ``log_event`` delivering to the client's topic handler, the kernels it started.
- :class:`FakeKernels`: the worker side of ``run_job`` without Jupyter kernels: replaces
  the kernel launcher and papermill's ``execute_notebook``; each "kernel" completes, fails
  a cell, or hangs until it is killed (the ``NeverSpawner`` of jobs).
- :class:`FakeTokens`: the per-attempt hub tokens (:class:`aidc.jobs.tokens.JobTokens`):
  records what was minted (with the lifetime's time-out) and revoked, can refuse or hold
  a mint (an unreachable or slow hub).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import tempfile
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable

import nbformat
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError

TOPIC = "aidc-jobs"  # aidc.jobs.execute.TOPIC (aidc is imported only where a fake needs it)


class FakeClock:
    """A settable "now" in naive UTC, as ``aidc.db.utcnow`` returns it.

    Install with ``monkeypatch.setattr(aidc.jobs.manager, "utcnow", clock.utcnow)``.
    """

    def __init__(self, start: dt.datetime | None = None):
        self.now = start or dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def utcnow(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class FakeFuture:
    """An awaitable like ``distributed.Future``: resolved by its :class:`FakeTask`."""

    def __init__(self, key: str):
        self.key = key
        self._future = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def __await__(self):
        return self._future.__await__()

    def done(self) -> bool:
        return self._future.done()

    def cancel(self, reason: str | None = None) -> None:
        """As Dask does: the task is dropped, whoever awaits it gets ``FutureCancelledError``."""
        self.cancelled = True
        if not self._future.done():
            self._future.set_exception(FutureCancelledError(self.key, reason or "cancelled"))

    def _set_result(self, value: Any) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def _set_exception(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)


class FakeWorker:
    """One (pretend) Dask worker: ``get_worker()`` inside an executing task."""

    _local = threading.local()
    _numbers = itertools.count(1)

    def __init__(self, client: FakeDaskClient):
        self.client = client
        self.address = f"tcp://fake-worker-{next(self._numbers)}:8786"
        self.local_directory = tempfile.gettempdir()  # the worker's scratch
        self.alive = True
        self.kernels: list[FakeKernel] = []

    @classmethod
    def current(cls) -> FakeWorker:
        """The worker of the calling thread (what ``distributed.get_worker`` answers)."""
        worker = getattr(cls._local, "worker", None)
        if worker is None:
            raise ValueError("No worker found")  # as distributed says outside a task
        return worker

    def log_event(self, topic: str, msg: dict) -> None:
        if self.alive:  # a dead worker's events never reach the scheduler
            self.client._deliver_threadsafe(topic, msg)

    def die(self) -> None:
        """The worker process is gone: its events stop, its kernels die with it."""
        self.alive = False
        for km in self.kernels:
            km.kill()


class FakeTask:
    """One submitted task (a job attempt), driven by the test in scripted mode."""

    def __init__(self, client: FakeDaskClient, fn: Callable, args: tuple, key: str):
        self.client = client
        self.fn = fn
        self.args = args
        self.key = key
        self.future = FakeFuture(key)
        #: reasons ``stop_job`` was called with for this task (``cancel``, ``restart``)
        self.stops: list[str] = []
        #: whether the worker obeys ``stop_job`` (False: a worker that does not answer)
        self.responsive = client.responsive
        self.workers: list[FakeWorker] = []
        self._thread: threading.Thread | None = None

    @property
    def spec(self) -> dict:
        """The attempt's spec as ``run_job`` receives it (job_id, attempt, token, ...)."""
        return self.args[0]

    @property
    def job_id(self) -> str:
        return self.spec["job_id"]

    @property
    def attempt(self) -> int:
        return self.spec["attempt"]

    @property
    def done(self) -> bool:
        return self.future.done()

    # -- scripted mode ---------------------------------------------------------------
    def emit(self, type: str, **fields: Any) -> None:
        """An event from the worker on topic ``aidc-jobs`` (as ``run_job``'s ``emit`` sends).

        Delivered even after the task ended: events a worker sent before it died can reach
        the client after the task's outcome."""
        self.client._deliver(TOPIC, {"job": self.job_id, "attempt": self.attempt, "type": type,
                                     **fields})

    def finish(self, outcome: dict) -> None:
        """The task returns ``outcome`` (what ``run_job`` returns)."""
        self.future._set_result(outcome)

    def complete(self, metrics: dict | None = None, series: dict | None = None) -> None:
        self.finish({"status": "completed", "error": None, "metrics": metrics or {},
                     "series": series or {}, "output": True})

    def fail(self, error: str) -> None:
        """The notebook failed (a cell raised, a time limit): ``run_job``'s failed outcome."""
        self.finish({"status": "failed", "error": error, "metrics": {}, "series": {},
                     "output": True})

    def lose_worker(self, rerun: bool = False) -> None:
        """The worker running this task died.

        ``rerun=False``: Dask gives up on the task (``allowed-failures`` 0) and the
        future raises ``KilledWorker``. ``rerun=True``: Dask runs the task again on another
        worker; ``run_job`` finds its attempt's start marker and returns ``lost``.
        """
        for worker in self.workers:
            worker.die()
        if self._thread is not None:  # executing: the dead worker's thread ends
            self._thread.join(10)
        if rerun:
            if self.client.execute:
                self._start()
            else:
                self.finish({"status": "lost", "error": "the worker running the job died"})
        else:
            last = self.workers[-1].address if self.workers else "tcp://fake-worker:8786"
            self.future._set_exception(KilledWorker(self.key, SimpleNamespace(address=last), 0))

    def _stop(self, reason: str) -> bool:
        """``stop_job`` reached the worker running this task."""
        self.stops.append(reason)
        if not self.responsive or self.done:
            return False
        if self.client.execute:
            from aidc.jobs.execute import stop_job
            return stop_job(self.job_id, reason)
        if reason == "cancel":
            self.finish({"status": "cancelled", "error": None, "metrics": {}, "series": {}})
        else:  # the kernel was killed for another reason: run_job reports a dead kernel
            self.fail("the kernel died while running cell 1 (the notebook exited its kernel, "
                      "was killed, or ran out of memory): Kernel died")
        return True

    # -- executing mode --------------------------------------------------------------
    def start(self) -> None:
        """A worker takes the task now (``FakeDaskClient(start_later=True)``)."""
        self._start()

    def _start(self) -> None:
        worker = FakeWorker(self.client)
        self.workers.append(worker)
        loop = asyncio.get_running_loop()

        def run() -> None:
            FakeWorker._local.worker = worker
            try:
                result = self.fn(*self.args)
            except BaseException as e:  # the task raised: so does its future
                if worker.alive:
                    loop.call_soon_threadsafe(self.future._set_exception, e)
            else:
                if worker.alive:  # a dead worker's result never arrives
                    loop.call_soon_threadsafe(self.future._set_result, result)
            finally:
                FakeWorker._local.worker = None

        self._thread = threading.Thread(target=run, name=f"fake-dask-{self.key}", daemon=True)
        self._thread.start()


class FakeDaskClient:
    """The part of ``distributed.Client`` the jobs manager uses, with workers on demand.

    ``threads``: how many tasks the cluster runs at once (give the manager
    ``capacity=lambda: client.threads``). ``execute``: run submitted functions on fake
    worker threads (see the module docstring) instead of leaving them to the test.
    """

    def __init__(self, threads: int = 8, execute: bool = False, responsive: bool = True,
                 start_later: bool = False):
        self.threads = threads
        self.execute = execute
        #: executing tasks wait for the test's ``task.start()`` (Dask's queue before a
        #: worker takes the task)
        self.start_later = start_later
        self.responsive = responsive
        self.tasks: list[FakeTask] = []
        #: every ``Client.run`` call: (function name, args)
        self.runs: list[tuple[str, tuple]] = []
        self.handlers: dict[str, Callable] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the Client API the manager calls -------------------------------------------------
    def subscribe_topic(self, topic: str, handler: Callable) -> None:
        self._loop = asyncio.get_running_loop()
        self.handlers[topic] = handler

    def submit(self, fn: Callable, *args: Any, key: str | None = None, pure: bool = True,
               **kwargs: Any) -> FakeFuture:
        key = key or f"{getattr(fn, '__name__', 'task')}-{len(self.tasks)}"
        task = FakeTask(self, fn, args, key)
        self.tasks.append(task)
        if self.execute and not self.start_later:
            task._start()
        return task.future

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> dict:
        """Run ``fn`` "on every worker": ``stop_job`` reaches the task it names."""
        name = getattr(fn, "__name__", str(fn))
        self.runs.append((name, args))
        results = {}
        if name == "stop_job":
            job_id, reason = args[0], (args[1] if len(args) > 1 else "cancel")
            for task in self.tasks:
                if task.job_id == job_id and not task.done:
                    results[task.key] = task._stop(reason)
        return results

    # -- for tests ------------------------------------------------------------------------
    def tasks_of(self, job_id: str) -> list[FakeTask]:
        return [t for t in self.tasks if t.job_id == job_id]

    def running(self) -> list[FakeTask]:
        return [t for t in self.tasks if not t.done]

    def stops(self, job_id: str) -> list[str]:
        """The reasons ``stop_job`` was called with for ``job_id`` (whether or not it ran)."""
        return [args[1] if len(args) > 1 else "cancel"
                for name, args in self.runs if name == "stop_job" and args[0] == job_id]

    def lose_worker(self, rerun: bool = False) -> list[FakeTask]:
        """The (one) worker dies under every task it runs; see :meth:`FakeTask.lose_worker`."""
        lost = self.running()
        for task in lost:
            task.lose_worker(rerun=rerun)
        return lost

    def close(self) -> None:
        """The client goes away: nothing it ran reports any more."""
        for task in self.tasks:
            for worker in task.workers:
                worker.die()
            if task._thread is not None:
                task._thread.join(10)
            if not task.done:
                task.future._future.cancel()

    def _deliver(self, topic: str, msg: dict) -> None:
        handler = self.handlers.get(topic)
        if handler is not None:
            handler((time.time(), msg))

    def _deliver_threadsafe(self, topic: str, msg: dict) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, topic, msg)


class FakeKernel:
    """A job's "kernel": what ``run_job`` gave it, and whether it was killed."""

    def __init__(self, env: dict, cwd: str, run_as, behaviour: str):
        self.env = env
        self.cwd = cwd
        self.run_as = run_as
        self.behaviour = behaviour
        self.parameters: dict | None = None
        self.killed = threading.Event()
        # what aidc.jobs.kernels.kill_kernel reaches: provisioner.process.kill()
        self.provisioner = SimpleNamespace(process=SimpleNamespace(kill=self.kill), pgid=None)

    def kill(self) -> None:
        self.killed.set()


class FakeKernels:
    """Kernels for the real ``run_job``: each completes, fails a cell, or hangs until killed.

    ``behaviour``: ``"complete"``, ``"fail"``, ``"hang"``, or a callable of the kernel's
    environment (``AIDC_JOB_ATTEMPT``, ``AIDC_JOB_ID`` ...) returning one of those.
    ``metrics``: what a completing notebook records (name -> value, as metric outputs).
    Call :meth:`install` with pytest's ``monkeypatch``.
    """

    def __init__(self, behaviour: str | Callable[[dict], str] = "complete",
                 metrics: dict | None = None):
        self.behaviour = behaviour
        self.metrics = metrics or {}
        self.started: list[FakeKernel] = []

    def install(self, monkeypatch) -> None:
        import distributed
        import papermill

        from aidc.jobs import kernels

        monkeypatch.setattr(kernels, "get_launcher", lambda: self)
        monkeypatch.setattr(papermill, "execute_notebook", self._execute_notebook)
        monkeypatch.setattr(distributed, "get_worker", FakeWorker.current)

    # -- the launcher's API (aidc.jobs.kernels.KernelLauncher) ---------------------------
    def kernel_manager(self, *, env: dict, cwd: str, run_as=None) -> FakeKernel:
        behaviour = self.behaviour(env) if callable(self.behaviour) else self.behaviour
        km = FakeKernel(env, cwd, run_as, behaviour)
        self.started.append(km)
        worker = FakeWorker.current()
        worker.kernels.append(km)
        if not worker.alive:  # the worker died while the kernel was starting
            km.kill()
        return km

    # -- papermill.execute_notebook ------------------------------------------------------
    def _execute_notebook(self, nb, output_path, parameters=None, *, km: FakeKernel, attempt,
                          **kwargs) -> nbformat.NotebookNode:
        km.parameters = parameters
        cells = len(nb.cells)
        try:
            for index in range(cells):
                if km.killed.is_set():
                    raise DeadKernelError("Kernel died")
                attempt.cell = index
                attempt.emit({"type": "cell_start", "cell": index, "value": {"cells": cells}})
                if km.behaviour == "hang":  # runs until the kernel is killed (at most 10 s)
                    km.killed.wait(10)
                    raise DeadKernelError("Kernel died")
                if km.behaviour == "fail" and index == cells - 1:
                    raise PapermillExecutionError(index, 1, "raise ValueError('bad data')",
                                                  "ValueError", "bad data", [])
                attempt.emit({"type": "cell_end", "cell": index, "status": "completed"})
            for name, value in self.metrics.items():
                attempt.metric({"name": name, "value": value})
        finally:
            nbformat.write(nb, output_path)
        return nb


class FakeTokens:
    """Per-attempt hub tokens without a hub: what :class:`aidc.jobs.tokens.JobTokens` does.

    ``fail``: ``mint`` raises (the hub unreachable). ``hold``: ``mint`` waits until
    :meth:`release_mints` (a slow hub: the attempt is running but not yet on the cluster).
    """

    def __init__(self):
        #: every mint: {"owner", "job", "attempt", "timeout", "token"}
        self.minted: list[dict] = []
        #: every revoke: (owner, job id)
        self.revoked: list[tuple[str, str]] = []
        self.fail: Exception | None = None
        self.hold = False
        self._gate = asyncio.Event()
        self._live: dict[str, tuple[str, str]] = {}  # token -> (owner, job id)

    async def mint(self, owner: str, job_id: str, attempt: int,
                   timeout: float | None) -> str | None:
        if self.hold:
            await self._gate.wait()
        if self.fail is not None:
            raise self.fail
        token = f"token-{job_id}-{attempt}"
        self.minted.append({"owner": owner, "job": job_id, "attempt": attempt, "timeout": timeout,
                            "token": token})
        self._live[token] = (owner, job_id)
        return token

    def release_mints(self) -> None:
        self.hold = False
        self._gate.set()

    async def revoke(self, owner: str, job_id: str) -> int:
        """Revoke every token of ``owner`` made for ``job_id`` (every attempt's)."""
        self.revoked.append((owner, job_id))
        gone = [t for t, holder in self._live.items() if holder == (owner, job_id)]
        for token in gone:
            del self._live[token]
        return len(gone)

    def live(self) -> list[str]:
        """Tokens minted and not revoked since."""
        return list(self._live)
