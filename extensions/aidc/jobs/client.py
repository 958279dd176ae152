"""``aidc.jobs.submit`` and friends: jobs through the one platform client.

Credentials as everywhere in aidc (:class:`aidc.client.Client`): inside a user's
server nothing needs configuring; elsewhere ``AIDC_URL`` and ``AIDC_TOKEN``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..client import Client
from ..errors import UsageError

if TYPE_CHECKING:
    import nbformat
    import pandas

API = "services/jobs/api"
FINAL = ("completed", "failed", "cancelled")


def _client(client: Client | None) -> Client:
    return client or Client()


class Job:
    """A submitted job. Attributes reflect the last refresh (``wait`` and ``refresh`` update them)."""

    def __init__(self, data: dict, client: Client):
        self._client = client
        self._data = data

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.path} {self.status}>"

    def _repr_html_(self) -> str:
        from ..display import job_html
        return job_html(self)

    @property
    def url(self) -> str:
        """The platform's address (the job's output notebook is under it)."""
        return self._client.url

    @property
    def id(self) -> str:
        return self._data["id"]

    @property
    def status(self) -> str:
        return self._data["status"]

    @property
    def path(self) -> str:
        return self._data["path"]

    @property
    def error(self) -> str | None:
        return self._data.get("error")

    @property
    def metrics(self) -> dict:
        return dict(self._data.get("metrics") or {})

    @property
    def series(self) -> dict:
        return dict(self._data.get("series") or {})

    @property
    def data(self) -> dict:
        """Everything the service says about the job (see the OpenAPI document)."""
        return dict(self._data)

    def refresh(self) -> Job:
        self._data = self._client.get_json(f"{API}/jobs/{self.id}")
        return self

    def wait(self, timeout: float | None = None, poll: float = 0.5, progress: bool = True) -> str:
        """Block until the job is completed, failed or cancelled; return that status.

        Polls quickly at first (a short job is done in well under a second) and then
        every ``poll`` seconds. With ``progress``, says on stderr what a queued job waits
        for (``starting the cluster``, a free worker, GPUs, ...) each time that changes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        said = None
        while self.refresh().status not in FINAL:
            waiting = self._data.get("waiting") if self.status == "queued" else None
            if progress and waiting and waiting != said:
                print(f"job {self.id}: {waiting}", file=sys.stderr, flush=True)
            said = waiting
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, poll)
        return self.status

    def cancel(self) -> Job:
        """Stop the job (its kernel is killed, its GPUs released, partial output kept)."""
        self._data = self._client.request("POST", f"{API}/jobs/{self.id}/cancel").json()
        return self

    def logs(self) -> str:
        """Everything the job's cells printed (stdout and stderr), so far."""
        return self._client.request("GET", f"{API}/jobs/{self.id}/logs").text

    def output(self) -> nbformat.NotebookNode:
        """The executed notebook (partial while running or after a cancel)."""
        import nbformat  # not at import time: `import aidc` in every job kernel stays fast

        raw = self._client.request("GET", f"{API}/jobs/{self.id}/output").text
        return nbformat.reads(raw, as_version=4)

    def events(self, follow: bool = True, after: int = 0) -> Iterator[dict]:
        """The job's events (cell started/finished, output, metrics, status); live with ``follow``."""
        if not follow:
            yield from self._client.get_json(f"{API}/jobs/{self.id}/events", params={"after": after})["events"]
            return
        r = self._client.request("GET", f"{API}/jobs/{self.id}/events", params={"after": after},
                                 headers={"Accept": "text/event-stream"}, stream=True, timeout=None)
        data: list[str] = []
        for line in r.iter_lines(decode_unicode=True):
            if line is None:
                continue
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                yield json.loads("\n".join(data))
                data = []


class Sweep:
    """A group of jobs, one per combination of a parameter grid."""

    def __init__(self, data: dict, client: Client):
        self._client = client
        self._data = data

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {status}"
                           for status, n in sorted((self._data.get("counts") or {}).items()))
        return f"<Sweep {self.id} {len(self.runs)} runs" + (f": {counts}>" if counts else ">")

    def _repr_html_(self) -> str:
        from ..display import sweep_html
        return sweep_html(self)

    @property
    def id(self) -> str:
        return self._data["id"]

    @property
    def url(self) -> str:
        """The platform's address (each run's output notebook is under it)."""
        return self._client.url

    @property
    def data(self) -> dict:
        """Everything the service says about the sweep (see the OpenAPI document)."""
        return dict(self._data)

    @property
    def runs(self) -> list[dict]:
        """Each run's ``job``, ``status``, ``parameters`` and ``metrics``, side by side."""
        return list(self._data["runs"])

    @property
    def best(self) -> dict | None:
        """The completed run with the best value of the sweep's metric.

        None while no run has finished with it yet, or when the sweep names no metric. Once
        every run has ended, a metric that no completed run recorded (a typo, or a notebook
        that records it under another name) is a :class:`~aidc.errors.UsageError` that
        lists the metrics the runs did record, rather than a None that reads as "no winner".
        """
        best = self._data.get("best")
        if best is None:
            problem = self.no_best_reason()
            if problem:
                raise UsageError(problem)
        return best

    def no_best_reason(self) -> str | None:
        """Why a finished sweep has no best run (the message :attr:`best` raises), else None."""
        metric = self._data.get("metric")
        if not metric or self._data.get("best") is not None or not self._data.get("done"):
            return None
        completed = [r for r in self.runs if r["status"] == "completed"]
        if not completed:
            return (f"sweep {self.id} has no best run: none of its {len(self.runs)} runs completed "
                    f"({', '.join(sorted({r['status'] for r in self.runs}))}); see their errors in "
                    "sweep.table() or `aidc jobs sweep-show`")
        recorded = sorted({name for r in completed for name in r["metrics"]})
        numeric = sorted({name for r in completed for name, value in r["metrics"].items()
                          if isinstance(value, (int, float)) and not isinstance(value, bool)})
        if metric in recorded:
            return (f"sweep {self.id} has no best run: metric {metric!r} is not a number in any "
                    f"run (the numeric metrics are: {', '.join(numeric) or 'none'})")
        return (f"no run of sweep {self.id} recorded metric {metric!r}; the runs recorded: "
                + (", ".join(recorded) or "no metrics at all (aidc.record(name, value) records one)"))

    @property
    def jobs(self) -> list[Job]:
        return [get(r["job"], client=self._client) for r in self.runs]

    def refresh(self) -> Sweep:
        self._data = self._client.get_json(f"{API}/sweeps/{self.id}")
        return self

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Sweep:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh()._data.get("done"):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {self.id} is not done after {timeout:g} s")
            time.sleep(poll)
        return self

    def table(self) -> pandas.DataFrame:
        """One row per run (indexed by job id): its status, parameters and recorded metrics,
        as a pandas DataFrame (it renders as a table in a notebook; ``.to_dict("records")``
        gives plain rows). A metric a run did not record is missing (NaN)."""
        import pandas  # not at import time: `import aidc` in every job kernel stays fast

        rows = [{"job": r["job"], "status": r["status"], **r["parameters"], **r["metrics"]}
                for r in self.runs]
        return pandas.DataFrame(rows, columns=self.columns()).set_index("job")

    def columns(self) -> list[str]:
        """The table's columns: job, status, the grid's parameters, then the metrics (sorted)."""
        params = list(dict.fromkeys(k for r in self.runs for k in r["parameters"]))
        metrics = sorted({k for r in self.runs for k in r["metrics"]} - set(params))
        return ["job", "status", *params, *metrics]


class Schedule:
    """A job definition run repeatedly on a cron schedule."""

    def __init__(self, data: dict, client: Client):
        self._client = client
        self._data = data

    def __repr__(self) -> str:
        return f"<Schedule {self.id} {self._data['cron']!r} {'paused' if self.paused else 'active'}>"

    @property
    def id(self) -> str:
        return self._data["id"]

    @property
    def paused(self) -> bool:
        return bool(self._data["paused"])

    @property
    def data(self) -> dict:
        return dict(self._data)

    def pause(self) -> Schedule:
        self._data = self._client.request("POST", f"{API}/schedules/{self.id}/pause").json()
        return self

    def resume(self) -> Schedule:
        self._data = self._client.request("POST", f"{API}/schedules/{self.id}/resume").json()
        return self

    def delete(self) -> None:
        self._client.request("DELETE", f"{API}/schedules/{self.id}")

    def jobs(self) -> list[Job]:
        found = self._client.get_json(f"{API}/jobs")["jobs"]
        return [Job(j, self._client) for j in found if j.get("schedule") == self.id]


def _job_body(path: str, parameters: dict | None, gpus: int, timeout: float | None,
              priority: int | None, cell_timeout: float | None, retries: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"path": path, "parameters": parameters or {}, "gpus": gpus}
    for key, value in (("timeout", timeout), ("priority", priority),
                       ("cell_timeout", cell_timeout), ("retries", retries)):
        if value is not None:
            body[key] = value
    return body


def submit(path: str, parameters: dict | None = None, gpus: int = 0, timeout: float | None = None,
           priority: int | None = None, *, cell_timeout: float | None = None,
           retries: int | None = None, secrets: list[str] | None = None,
           client: Client | None = None) -> Job:
    """Run the notebook at ``path`` (relative to your home) as a job; returns at once.

    ``secrets``: names of your secrets (:mod:`aidc.secrets`) the job's kernel gets as
    environment variables of the same names; what the job prints is redacted of them."""
    c = _client(client)
    body = _job_body(path, parameters, gpus, timeout, priority, cell_timeout, retries)
    if secrets:
        body["secrets"] = list(secrets)
    return Job(c.request("POST", f"{API}/jobs", json=body).json(), c)


def sweep(path: str, grid: dict[str, list], metric: str | None = None, mode: str = "max",
          parameters: dict | None = None, gpus: int = 0, timeout: float | None = None,
          priority: int | None = None, *, secrets: list[str] | None = None,
          client: Client | None = None, **job_options) -> Sweep:
    """One job per combination of ``grid``; the sweep reports them side by side and the best by ``metric``."""
    c = _client(client)
    body = {**_job_body(path, parameters, gpus, timeout, priority, job_options.pop("cell_timeout", None),
                        job_options.pop("retries", None)),
            "grid": grid, "mode": mode}
    if secrets:
        body["secrets"] = list(secrets)
    if job_options:
        raise TypeError(f"unknown option(s): {', '.join(job_options)}")
    if metric is not None:
        body["metric"] = metric
    return Sweep(c.request("POST", f"{API}/sweeps", json=body).json(), c)


def schedule(path: str, cron: str, timezone: str = "UTC", parameters: dict | None = None,
             gpus: int = 0, timeout: float | None = None, priority: int | None = None, *,
             secrets: list[str] | None = None, client: Client | None = None) -> Schedule:
    """Run the notebook at ``path`` on a cron schedule (e.g. ``"0 3 * * *"``) in ``timezone``;
    each run gets ``secrets`` as :func:`submit` says (a run finds a deleted one missing)."""
    c = _client(client)
    body = {**_job_body(path, parameters, gpus, timeout, priority, None, None),
            "cron": cron, "timezone": timezone}
    if secrets:
        body["secrets"] = list(secrets)
    return Schedule(c.request("POST", f"{API}/schedules", json=body).json(), c)


def get(job_id: str, client: Client | None = None) -> Job:
    c = _client(client)
    return Job(c.get_json(f"{API}/jobs/{job_id}"), c)


def list_jobs(status: str | None = None, client: Client | None = None) -> list[Job]:
    c = _client(client)
    params = {"status": status} if status else {}
    return [Job(j, c) for j in c.get_json(f"{API}/jobs", params=params)["jobs"]]
