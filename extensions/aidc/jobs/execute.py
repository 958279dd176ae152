"""Running one job attempt on a Dask worker: papermill with a fresh kernel, reporting live.

:func:`run_job` is the task the jobs service submits. It executes the snapshotted
notebook with papermill, in a fresh kernel from the worker's :mod:`~aidc.jobs.kernels`
launcher (its environment is exactly what the job is given: its GPUs, its owner's
home and Unix identity), and streams what happens (cell started and finished, stdout
and stderr, metrics) to the service as Dask events on :data:`TOPIC`. The service is
the only writer of the job record; this module never touches the database, so it
runs the same on the embedded cluster and on any external one.

Stopping is explicit: :func:`stop_job` (called through ``Client.run`` on the worker)
kills the kernel's whole process group, so a cancel or a job time-out really ends the
user's code; papermill has then already saved the partial output notebook.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from typing import Any

import nbformat
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.exceptions import PapermillExecutionError

from .. import artifacts
from . import jobkeys
from .metrics import DATASET_MIME, MIME
from ..security.folders import others_can_change
from ..security.redact import Redactor, StreamRedactor

#: Dask event topic of job progress
TOPIC = "aidc-jobs"

ENGINE = "aidc"

#: stream output kept in the output notebook per job; the rest is replaced by a note
MAX_NOTEBOOK_OUTPUT = 16 * 1024 * 1024

_running: dict[str, "_Attempt"] = {}
_running_lock = threading.Lock()


class _Attempt:
    """One running attempt on this worker: its kernel, why it was stopped, what it reported."""

    def __init__(self, spec: dict, emit):
        self.spec = spec
        self.emit = emit
        self.km = None
        self.stop_reason: str | None = None
        self.cell: int | None = None
        self.cells = 0
        self.metrics: dict[str, Any] = {}
        self.series: dict[str, list] = {}
        self.output_bytes = 0
        self._buffer: list[str] = []
        self._buffer_name = "stdout"
        self._buffer_size = 0
        self._flushed = time.monotonic()
        #: the job's secrets, replaced in everything it reports (aidc.security.redact)
        self.redactor = Redactor(spec.get("secrets"))
        #: per stream name: stderr may arrive between two pieces of a value printed to stdout
        self._streams: dict[str, StreamRedactor] = {}

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.km is not None:
            from .kernels import kill_kernel
            try:
                kill_kernel(self.km)
            except Exception:  # already gone
                pass

    # -- streaming -------------------------------------------------------------------
    def stream(self, name: str, text: str) -> None:
        if name != self._buffer_name:
            self.flush()
            self._buffer_name = name
        self._buffer.append(text)
        self._buffer_size += len(text)
        if self._buffer_size > 64 * 1024 or time.monotonic() - self._flushed > 0.2:
            self.flush()

    def flush(self, end: bool = False) -> None:
        """Send what was printed. The end of a stream's text that may begin a secret's value
        waits for that stream's next text, unless ``end`` (the cell or the attempt ended)."""
        if self._buffer:
            name = self._buffer_name
            stream = self._streams.setdefault(name, StreamRedactor(self.redactor))
            self._send(name, stream.feed("".join(self._buffer)))
        if end:
            for name, stream in self._streams.items():
                self._send(name, stream.release())
        self._buffer, self._buffer_size = [], 0
        self._flushed = time.monotonic()

    def _send(self, name: str, text: str) -> None:
        if text:
            self.emit({"type": "stream", "cell": self.cell, "name": name, "text": text})

    def metric(self, payload: dict) -> None:
        name, value, step = payload.get("name"), payload.get("value"), payload.get("step")
        if not isinstance(name, str):
            return
        self.metrics[name] = value
        if step is not None:
            self.series.setdefault(name, []).append([step, value])
        self.flush()
        self.emit({"type": "metric", "cell": self.cell, "name": name,
                   "value": {"value": value, "step": step}})

    def dataset(self, payload: dict) -> None:
        """A dataset version the notebook read (``aidc.data``): the job's lineage."""
        name, version = payload.get("name"), payload.get("version")
        if not isinstance(name, str) or isinstance(version, bool) or not isinstance(version, int):
            return
        self.flush()
        self.emit({"type": "dataset", "cell": self.cell, "name": name,
                   "value": {"name": name, "version": version, "sha256": str(payload.get("sha256") or "")}})


class _ReportingManager(NotebookExecutionManager):
    """papermill's execution manager, also telling the service about each cell."""

    attempt: _Attempt

    def cell_start(self, cell, cell_index=None, **kwargs):
        super().cell_start(cell, cell_index, **kwargs)
        self.attempt.cell = cell_index
        self.attempt.emit({"type": "cell_start", "cell": cell_index, "value": {"cells": len(self.nb.cells)}})

    def cell_complete(self, cell, cell_index=None, **kwargs):
        _redact_split_streams(cell, self.attempt.redactor)  # before papermill saves the notebook
        super().cell_complete(cell, cell_index, **kwargs)
        self.attempt.flush(end=True)
        status = cell.metadata.get("papermill", {}).get("status")
        self.attempt.emit({"type": "cell_end", "cell": cell_index, "status": status})

    def cell_exception(self, cell, cell_index=None, **kwargs):
        _redact_split_streams(cell, self.attempt.redactor)
        super().cell_exception(cell, cell_index, **kwargs)
        self.attempt.flush(end=True)
        for out in cell.outputs:
            if out.get("output_type") == "error":
                self.attempt.emit({"type": "error", "cell": cell_index, "name": out.get("ename"),
                                   "text": f"{out.get('ename')}: {out.get('evalue')}\n"})


class _JobNotebookClient(PapermillNotebookClient):
    """Streams output and metrics as they arrive; caps what the output notebook keeps."""

    def process_message(self, msg, cell, cell_index):
        attempt: _Attempt = self.nb_man.attempt
        kind = msg.get("msg_type")
        if attempt.redactor:  # what the notebook keeps and the events say, without the secrets
            msg["content"] = attempt.redactor.scrub(msg.get("content", {}))
        content = msg.get("content", {})
        if kind == "stream":
            text = content.get("text", "")
            attempt.stream(content.get("name", "stdout"), text)
            attempt.output_bytes += len(text)
            if attempt.output_bytes > MAX_NOTEBOOK_OUTPUT:
                over_before = attempt.output_bytes - len(text) > MAX_NOTEBOOK_OUTPUT
                content["text"] = "" if over_before else (
                    "\n[aidc: output truncated: more than "
                    f"{MAX_NOTEBOOK_OUTPUT // 2**20} MiB printed; see the job's logs]\n")
        elif kind in ("display_data", "execute_result"):
            payload = (content.get("data") or {}).get(MIME)
            if isinstance(payload, dict):
                attempt.metric(payload)
            read = (content.get("data") or {}).get(DATASET_MIME)
            if isinstance(read, dict):
                attempt.dataset(read)
        return super().process_message(msg, cell, cell_index)


def _redact_split_streams(cell, redactor: Redactor) -> None:
    """A secret printed in pieces (several outputs of one stream, each without the whole
    value, maybe with the other stream's or a display between them): that stream's outputs
    become one, in the place of its first, redacted. Each output by itself was redacted as
    it arrived."""
    if not redactor or not cell.get("outputs"):
        return
    for name in ("stdout", "stderr"):
        parts = [o for o in cell.outputs if o.get("output_type") == "stream"
                 and o.get("name") == name and isinstance(o.get("text"), str)]
        if len(parts) < 2:
            continue
        joined = "".join(o["text"] for o in parts)
        redacted = redactor.text(joined)
        if redacted != joined:
            parts[0]["text"] = redacted
            merged = {id(o) for o in parts[1:]}
            cell.outputs = [o for o in cell.outputs if id(o) not in merged]


class AidcEngine(NBClientEngine):
    """papermill engine ``aidc``: NBClientEngine with reporting and a given kernel manager."""

    @classmethod
    def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=False,
                         log_output=False, autosave_cell_every=30, **kwargs):
        attempt: _Attempt = kwargs.pop("attempt")
        nb_man = _ReportingManager(nb, output_path=output_path, progress_bar=False,
                                   log_output=False, autosave_cell_every=autosave_cell_every)
        nb_man.attempt = attempt
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, start_timeout=60,
                                 execution_timeout=None, km=None, **kwargs):
        return _JobNotebookClient(
            nb_man, km=km, kernel_name=kernel_name, timeout=execution_timeout,
            startup_timeout=start_timeout, log_output=False,
        ).execute(cleanup_kc=True)  # a graceful shutdown: the notebook's atexit handlers run


papermill_engines.register(ENGINE, AidcEngine)


#: what OpenMP (torch), MKL, OpenBLAS and TensorFlow read for their thread pools' size
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                    "TF_NUM_INTEROP_THREADS")


def kernel_env(spec: dict, home: str, user: str) -> dict[str, str]:
    """Everything the job's kernel gets in its environment (nothing else leaks in)."""
    bindir = os.path.dirname(sys.executable)
    env = {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "SHELL": "/bin/bash",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "AIDC_JOB_ID": spec["job_id"],
        "AIDC_JOB_ATTEMPT": str(spec["attempt"]),
        "CUDA_VISIBLE_DEVICES": spec.get("visible_devices") or "",
        "NVIDIA_VISIBLE_DEVICES": spec.get("visible_devices") or "void",
    }
    for name, value in (spec.get("secrets") or {}).items():  # the owner's secrets the job names
        env.setdefault(name, value)
    if spec.get("threads"):  # one share of the host's cores (JobManager.kernel_threads)
        for name in THREAD_VARIABLES:
            env[name] = str(spec["threads"])
    if spec.get("url"):
        env["AIDC_URL"] = spec["url"]
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):  # an HTTPS platform's own certificate
            if os.environ.get(name):
                env[name] = os.environ[name]
    if spec.get("token"):  # the owner's own token for this attempt (aidc.jobs.tokens)
        env["AIDC_TOKEN"] = spec["token"]
    return env


def run_job(spec: dict) -> dict:
    """Execute one attempt of a job (the Dask task); returns its outcome, never raises for user errors.

    ``spec``: ``job_id``, ``attempt``, ``input_url``, ``output_url``, ``parameters``,
    ``cwd``, ``home``, ``run_as`` (Unix name or None), ``visible_devices``,
    ``timeout``, ``cell_timeout``, ``kernel_name``, ``secrets`` (name -> value: the kernel's
    environment gets them; everything the attempt reports is redacted of them).
    """
    from distributed import get_worker

    from ..accounts import tmpdir_env
    from .kernels import RunAs, get_launcher

    worker = get_worker()
    job_id = spec["job_id"]

    def emit(event: dict) -> None:
        worker.log_event(TOPIC, {"job": job_id, "attempt": spec["attempt"],
                                 **attempt.redactor.scrub(event)})

    attempt = _Attempt(spec, emit)
    with _running_lock:
        _running[job_id] = attempt
    timer = None
    output_url = spec["output_url"]
    # an encrypted store gets the output through aidc.artifacts (encrypted as published);
    # papermill then writes a private local file first
    encrypted = jobkeys.hold_for_attempt(spec)
    local_output = None if encrypted else artifacts.local_path(output_url)
    tmpdir = None
    try:
        # Dask re-runs a task whose worker died (``allowed-failures`` of an external
        # scheduler): aidc decides about retries itself, so a second start of the same
        # attempt only reports the loss and the service retries or fails the job.
        marker = attempt_marker(spec["output_url"], spec["attempt"], "started")
        if artifacts.read_bytes(marker) is not None:
            return {"status": "lost", "error": "the worker running the job died"}
        # cancelled before this task was registered above (the service's stop_job then
        # found nothing to stop here): its marker says so, and nothing runs
        if artifacts.exists(attempt_marker(spec["output_url"], spec["attempt"], "cancel")):
            attempt.stop("cancel")
            return _stopped(attempt, spec)
        artifacts.write_bytes(marker, worker.address.encode())
        raw = artifacts.read_bytes(spec["input_url"])
        if raw is None:
            return {"status": "failed", "error": "the job's input snapshot is missing from the artifact store"}
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        for cell in nb.cells:
            cell.metadata.setdefault("tags", [])
        attempt.cells = len(nb.cells)
        run_as = RunAs.of(spec["run_as"]) if spec.get("run_as") else None
        home = run_as.home if run_as else spec["home"]
        user = run_as.name if run_as else os.environ.get("USER", "aidc")
        if run_as is None:  # development mode: the home may not exist yet (as the owner, the launcher checks it)
            os.makedirs(spec["cwd"], exist_ok=True)
        env = kernel_env(spec, home, user)
        # the owner's private temporary folder, not the shared /tmp (accounts.private_tmp)
        env.update(run_as.environment({}) if run_as else tmpdir_env(home, os.getuid(), os.getgid()))
        km = get_launcher().kernel_manager(env=env, cwd=spec["cwd"], run_as=run_as)
        attempt.km = km
        if attempt.stop_reason is not None:  # stopped while the kernel was being prepared
            return _stopped(attempt, spec)
        if spec.get("timeout"):
            timer = threading.Timer(float(spec["timeout"]), attempt.stop, args=("timeout",))
            timer.daemon = True
            timer.start()
        if local_output is None:
            tmpdir = job_scratch(worker.local_directory)
            local_output = os.path.join(tmpdir, "output.ipynb")
        else:
            os.makedirs(os.path.dirname(local_output), exist_ok=True)
        import papermill

        outcome: dict[str, Any] = {"status": "completed", "error": None}
        try:
            papermill.execute_notebook(
                nb, local_output, parameters=spec.get("parameters") or {}, engine_name=ENGINE,
                kernel_name=spec.get("kernel_name") or "python3", progress_bar=False,
                execution_timeout=spec.get("cell_timeout"), km=km, attempt=attempt,
            )
        except PapermillExecutionError as e:
            outcome = {"status": "failed",
                       "error": f"cell {e.cell_index + 1} raised {e.ename}: {e.evalue}".strip()}
        except CellTimeoutError:
            outcome = {"status": "failed", "error": (
                f"cell {_cell(attempt)} ran longer than the cell time limit of "
                f"{_secs(spec.get('cell_timeout'))}; the kernel was stopped")}
        except (DeadKernelError, RuntimeError, OSError) as e:
            outcome = _stopped(attempt, spec) or {"status": "failed", "error": (
                f"the kernel died while running cell {_cell(attempt)} (the notebook exited its "
                f"kernel, was killed, or ran out of memory): {e}")}
        except Exception as e:  # anything else that papermill or nbclient raised
            outcome = _stopped(attempt, spec) or {
                "status": "failed", "error": f"cell {_cell(attempt)}: {type(e).__name__}: {e}"}
        else:
            outcome = _stopped(attempt, spec) or outcome
        attempt.flush(end=True)
        _finish_output(local_output, output_url, run_as)
        outcome.update(metrics=attempt.metrics, series=attempt.series,
                       output=os.path.exists(local_output))
        return attempt.redactor.scrub(outcome)
    finally:
        jobkeys.drop_after_attempt(spec)
        if timer:
            timer.cancel()
        with _running_lock:
            _running.pop(job_id, None)
        if attempt.km is not None:
            attempt.stop(attempt.stop_reason or "finished")
        if tmpdir:
            import shutil
            shutil.rmtree(tmpdir, ignore_errors=True)


def job_scratch(local_directory: str | None) -> str:
    """A new private folder (0700) for an attempt's working output.

    In the worker's own scratch folder when only root can change it and the folders above
    it: Dask removes a dead worker's folder when the next one starts, so a killed worker
    leaves no plaintext behind. Otherwise in the system's temporary folder, with a warning
    in the worker's log once: an external worker started without ``--local-directory``
    keeps its scratch in ``/tmp/dask-scratch-space``, which any account can create first
    and then steer root's writes inside it (``hub_config/dask/README.md``)."""
    reason = (others_can_change(local_directory) if local_directory
              else "the worker has no scratch folder")
    if reason is None:
        return tempfile.mkdtemp(prefix="aidc-job-", dir=local_directory)
    if local_directory not in _unsafe_scratch_warned:
        _unsafe_scratch_warned.add(local_directory)
        logging.getLogger("distributed.worker").warning(
            "aidc: jobs' working output goes to %s, not this worker's scratch folder %s: %s. "
            "Start the worker with --local-directory on a folder only root can change",
            tempfile.gettempdir(), local_directory, reason)
    return tempfile.mkdtemp(prefix="aidc-job-")


#: scratch folders already warned about in this worker process
_unsafe_scratch_warned: set[str | None] = set()


def attempt_marker(output_url: str, attempt: int, what: str) -> str:
    """The artifact-store marker ``what`` of a job's attempt, beside its output: ``started``
    (written by the worker that runs it: a second start means the first worker died) and
    ``cancel`` (written by the service before it asks the workers to stop the attempt)."""
    return output_url.rsplit("/", 1)[0] + f"/attempt-{attempt}.{what}"


def _stopped(attempt: _Attempt, spec: dict) -> dict | None:
    if attempt.stop_reason == "cancel":
        return {"status": "cancelled", "error": None}
    if attempt.stop_reason == "timeout":
        return {"status": "failed", "error": (
            f"the job ran longer than its time limit of {_secs(spec.get('timeout'))}; "
            f"stopped in cell {_cell(attempt)}")}
    return None


def _cell(attempt: _Attempt) -> str:
    return str(attempt.cell + 1) if attempt.cell is not None else "1"


def _secs(value) -> str:
    return f"{float(value):g} s" if value else "(none)"


def _finish_output(local_output: str, output_url: str, run_as) -> None:
    """Publish the output notebook when papermill wrote it elsewhere (a remote or an
    encrypted store), and give the stored file to its owner."""
    if not os.path.exists(local_output):
        return
    stored = artifacts.local_path(output_url)
    if stored != local_output:
        with open(local_output, "rb") as f:
            artifacts.write_bytes(output_url, f.read())
    if run_as is not None and stored is not None:
        try:
            # never through a link: the file first, its folder (which keeps others out
            # until then) last
            os.chown(stored, run_as.uid, run_as.gid, follow_symlinks=False)
            os.chown(os.path.dirname(stored), run_as.uid, run_as.gid, follow_symlinks=False)
        except OSError:
            pass


def stop_job(job_id: str, reason: str = "cancel") -> bool:
    """Stop ``job_id`` if it runs on this worker (run on workers with ``Client.run``)."""
    with _running_lock:
        attempt = _running.get(job_id)
    if attempt is None:
        return False
    attempt.stop(reason)
    return True
