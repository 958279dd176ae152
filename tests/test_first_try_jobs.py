"""What a new user met on a first try with jobs and the audit log (issue 12, items 3, 6, 12).

In-process, in the way of ``test_jobs_manager.py``: the real jobs manager, store,
artifact store and GPU ledger on SQLite in a temporary folder, with the fakes of
``tests/mocking.py`` for Dask and the hub's tokens; the audit log is written to a
temporary file directly.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import types

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from traitlets.config import Config

from aidc import jobs as jobs_api
from aidc.cli import jobs as jobs_cli
from aidc.jobs.manager import JobManager
from aidc.security import audit
from mocking import FakeDaskClient
from test_jobs_manager import jobs, until  # noqa: F401 (jobs: the in-process fixture)

NO_KERNEL = "the notebook names no kernel; ran it with python3"


def _bare_notebook() -> nbformat.NotebookNode:
    """What ``nbformat.v4.new_notebook()`` makes: no kernelspec, no language_info."""
    nb = new_notebook()
    params = new_code_cell("epochs = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells += [params, new_code_cell("print(epochs)")]
    return nb


# -- item 3: a notebook that names no kernel ---------------------------------------------
async def test_notebook_without_kernelspec_runs_with_the_platform_kernel_and_says_so(jobs):
    (jobs.data_dir / "homes" / "alice" / "bare.ipynb").write_text(nbformat.writes(_bare_notebook()))
    await jobs.start()
    job = jobs.submit(path="bare.ipynb", parameters={"epochs": 3})  # refused before the fix
    view = jobs.job(job)
    assert view["notices"] == [NO_KERNEL]
    assert [e["text"] for e in jobs.store.events(job) if e["type"] == "notice"] == [NO_KERNEL]
    snapshot = nbformat.reads(jobs.artifacts.read_bytes(jobs.store.job(job)["input_url"]).decode(),
                              as_version=4)
    assert snapshot.metadata.kernelspec.name == "python3"
    task = await jobs.task(job)
    assert task.spec["kernel_name"] == "python3" and task.spec["parameters"] == {"epochs": 3}
    task.complete()
    await jobs.status(job, "completed")
    # a notebook that names its kernel gets no notice
    assert jobs.job(jobs.submit())["notices"] == []


# -- item 6: audit timestamps ------------------------------------------------------------
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def test_audit_timestamps_are_rfc3339_utc(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    before = dt.datetime.now(dt.UTC)
    audit.record("user", path, actor="cli:root", action="add", target="ann", result="success")
    after = dt.datetime.now(dt.UTC)
    [line] = path.read_text().splitlines()
    event = json.loads(line)
    stamp = event["__timestamp__"]
    assert RFC3339.match(stamp), stamp
    when = dt.datetime.fromisoformat(stamp)
    assert when.utcoffset() == dt.timedelta(0)
    assert before - dt.timedelta(seconds=1) <= when <= after + dt.timedelta(seconds=1)
    # the rest of the line is as before
    assert {k: event[k] for k in ("actor", "action", "target", "result")} == {
        "actor": "cli:root", "action": "add", "target": "ann", "result": "success"}
    assert event["__schema__"] == audit.BASE_ID + "user" and "__schema_version__" in event


# -- item 12: the first job's wait for the cluster --------------------------------------
async def test_first_job_says_it_waits_for_the_cluster_in_api_cli_and_wait(jobs, monkeypatch, capsys):
    # the jobs service before the first job: no Dask yet, started by the first submit
    manager = JobManager(jobs.store, jobs.artifacts, jobs.ledger, str(jobs.data_dir),
                         tokens=jobs.tokens, config=Config({"JobManager": {"tick": 0.01}}))
    started = []
    manager.on_first_job = lambda: started.append(True)
    jobs.manager = manager
    job = jobs.submit()
    assert started == [True]
    view = jobs.job(job)
    assert view["status"] == "queued" and view["waiting"] == "starting the cluster"

    # the CLI's `aidc jobs show` and Job.wait()'s progress
    class FakeClient:
        def __init__(self):
            self.views = [view, view, {**view, "waiting": None, "status": "running"},
                          {**view, "waiting": None, "status": "completed"}]

        def get_json(self, url, **_):
            return self.views.pop(0) if len(self.views) > 1 else self.views[0]

    monkeypatch.setattr(jobs_api, "get", lambda job_id, client=None: jobs_api.Job(view, FakeClient()))
    jobs_cli.show(types.SimpleNamespace(id=job, json=False))
    assert "waiting    starting the cluster" in capsys.readouterr().out
    assert jobs_api.Job(view, FakeClient()).wait(poll=0.01) == "completed"
    assert capsys.readouterr().err.count(f"job {job}: starting the cluster") == 1

    # once the cluster is up the job runs (and waits for nothing)
    client = FakeDaskClient()
    await manager.start(client)
    jobs.client = client
    jobs.clients.append(client)
    await jobs.task(job)
    await until(lambda: jobs.job(job)["status"] == "running")
    assert jobs.job(job)["waiting"] is None
