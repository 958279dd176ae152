"""What a new user met on a first try (issue 12, items 8, 13, 14, 17): deployments' replicas
and readiness, sweeps without their metric, notebook display, ``aidc models predict``.

Each item has fast tests (the deployment runner with the fake replicas of
``test_deployments_runner.py``; the client and CLI against the small HTTP server of
``test_first_try_client.py``; the display functions on the services' JSON) and one test
through the session platform (a tiny ONNX model of ``test_models.py``'s ``scale_onnx``, a
sweep of the real jobs service).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import numpy as np
import pandas as pd
import pytest

import aidc
from aidc.cli.main import main
from aidc.client import Client, GPUInventory
from aidc.display import format_value, text_table
from aidc.errors import NotFoundError, UsageError
from aidc.jobs.client import Job, Sweep
from aidc.models.client import Deployment, ModelVersion
from jobs_helpers import notebook, put, wait_service
from test_deployments_runner import deployment, eventually, runner  # noqa: F401
from test_first_try_client import TINY_META, fake  # noqa: F401

URL = "http://aidc.example:8000"
DEPLOYMENT = "/services/models/api/models/tiny/deployment"


def dep_view(replicas: int = 2, ready: int = 2, canary: int | None = None, weight: float = 0.0) -> dict:
    """The models service's deployment view of tiny v1 (and a canary)."""
    def version(number: int, share: float) -> dict:
        return {"version": number, "weight": share,
                "replicas": [{"replica": i, "ready": i < ready, "restarts": 0, "pid": 100 + i,
                              "socket": None} for i in range(replicas)]}

    versions = [version(1, 1 - weight)] + ([version(canary, weight)] if canary else [])
    return {"version": 1, "previous_version": None, "canary_version": canary, "canary_weight": weight,
            "replicas": replicas, "gpus": 0, "max_batch_size": 32, "max_queue_delay_ms": 2.0,
            "updated": "2026-12-03T10:00:00Z", "ready": ready == replicas, "serving": ready > 0,
            "ready_replicas": ready, "versions": versions,
            "stats": {"1": {"requests": 7, "errors": 1, "mean_latency_ms": 1.23456}}}


# -- item 8: a canary change keeps the replicas; ready means every replica ---------------------

async def test_deploy_waits_for_every_replica_and_says_how_many_are_ready(runner):  # noqa: F811
    spawn = runner._spawn
    starting = []

    def second_replica_loads_slowly(served, replica):
        spawn(served, replica)
        starting.append(served)
        if len(served.replicas) == 1:  # the second of the version (appended after its start)
            runner.control(served.name, served.version).set("unready", pid=replica.process.pid)

    runner._spawn = second_replica_loads_slowly
    applying = asyncio.create_task(runner.apply(deployment(version=1, replicas=2)))
    await eventually(lambda: starting and starting[0].replicas[0].ready, what="first replica ready")
    assert not applying.done()  # before: returned as soon as one replica answered
    slow = runner.spawned[1].pid
    runner.control("m", 1).clear("unready", pid=slow)
    await asyncio.wait_for(applying, 10)
    status = runner.status("m")
    assert status["ready"] and status["serving"] and status["ready_replicas"] == 2

    # one replica out: the deployment still serves, but says it is not all there
    runner.control("m", 1).set("unready", pid=slow)
    await eventually(lambda: runner.status("m")["ready_replicas"] == 1, what="one replica out")
    status = runner.status("m")
    assert not status["ready"] and status["serving"]
    runner.control("m", 1).clear("unready", pid=slow)
    await eventually(lambda: runner.status("m")["ready"], what="back")

    # a replica that never loads: after the ready time-out the version serves with the other
    runner.ready_timeout = 1.0
    await runner.apply(deployment(version=2, replicas=2))
    status = runner.status("m")
    assert [v["version"] for v in status["versions"]] == [2]
    assert status["serving"] and not status["ready"] and status["ready_replicas"] == 1


def test_canary_deploy_keeps_the_replica_count_unless_asked(fake, capsys):  # noqa: F811
    sent = []

    def put_deployment(body):
        sent.append(json.loads(body))
        return 200, dep_view(canary=2, weight=0.1)

    fake.routes[("PUT", DEPLOYMENT)] = put_deployment
    dep = aidc.models.deploy("tiny", version=1, canary={"version": 2, "weight": 0.1})
    assert sent[-1] == {"version": 1, "canary": {"version": 2, "weight": 0.1}}  # no replicas=1
    aidc.models.deploy("tiny", version=1, replicas=3, gpus=0)
    assert sent[-1] == {"version": 1, "replicas": 3, "gpus": 0}
    # still the dict it was, with a summary
    assert isinstance(dep, dict) and dep["ready"] and dep["ready_replicas"] == 2
    assert json.loads(json.dumps(dep))["canary_version"] == 2
    assert dep.summary() == "serving v1 (ready, 2/2 replicas), canary v2 at 10%"
    assert Deployment(dep_view(ready=1), "tiny").summary() == "serving v1 (1/2 replicas ready)"
    assert Deployment(dep_view(ready=0), "tiny").summary() == "v1 not serving (0/2 replicas ready)"

    # the CLI sends no replica count either, and prints the canary
    assert main(["models", "deploy", "tiny", "--version", "1", "--canary", "2"]) == 0
    assert sent[-1] == {"version": "1", "canary": {"version": "2", "weight": 0.1}}
    assert capsys.readouterr().out.strip() == "tiny: serving v1 (ready, 2/2 replicas), canary v2 at 10%"

    # and `aidc models list` shows it in its table
    model = {"name": "tiny", "versions": [{"version": 1}, {"version": 2}], "aliases": {"prod": 1},
             "deployment": dep_view(canary=2, weight=0.1)}
    fake.routes[("GET", "/services/models/api/models")] = (200, {"models": [
        model, {**model, "name": "other-model", "deployment": None, "aliases": {}}]})
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "NAME         LATEST  DEPLOYMENT                                          ALIASES",
        "tiny         v2      serving v1 (ready, 2/2 replicas), canary v2 at 10%  prod=v1",
        "other-model  v2      not deployed",
    ]


# -- item 13: a sweep's missing metric, its table ---------------------------------------------

def _sweep(metric: str | None = "nosuchmetric", statuses=("completed", "completed")) -> dict:
    runs = [{"job": f"j-{i}", "status": status, "parameters": {"lr": lr, "epochs": 1},
             "metrics": {"score": lr * 7.1, "loss": 1 / 3} if status == "completed" else {},
             "error": None if status == "completed" else "cell 2 raised <ValueError>"}
            for i, (status, lr) in enumerate(zip(statuses, (0.1, 0.7)))]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    best = None
    if metric == "score" and statuses[1] == "completed":
        best = runs[1]
    return {"id": "s-1", "owner": "ann", "path": "tune.ipynb", "metric": metric, "mode": "max",
            "grid": {"lr": [0.1, 0.7]}, "created": "2026-12-03T10:00:00Z", "counts": counts,
            "done": True, "runs": runs, "best": best}


def test_sweep_best_names_the_missing_metric_and_table_is_a_dataframe(fake, capsys):  # noqa: F811
    client = Client(fake.url, "t")
    s = Sweep(_sweep(), client)
    with pytest.raises(UsageError) as e:
        s.best
    assert str(e.value) == ("no run of sweep s-1 recorded metric 'nosuchmetric'; "
                            "the runs recorded: loss, score")
    assert Sweep(_sweep("score"), client).best["job"] == "j-1"
    assert Sweep(_sweep(None), client).best is None  # no metric asked for: no best, no error
    running = _sweep()
    running["done"] = False
    assert Sweep(running, client).best is None  # not yet
    with pytest.raises(UsageError, match="none of its 2 runs completed"):
        Sweep(_sweep(statuses=("failed", "failed")), client).best

    table = s.table()
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["j-0", "j-1"]
    assert list(table.columns) == ["status", "lr", "epochs", "loss", "score"]
    assert table.loc["j-1", "score"] == pytest.approx(0.7 * 7.1)
    partly = Sweep(_sweep("score", ("completed", "failed")), client).table()
    assert np.isnan(partly.loc["j-1", "score"])  # a failed run recorded nothing

    # the CLI: aligned columns, rounded floats, the best marked; a missing metric is an error
    fake.routes[("GET", "/services/jobs/api/sweeps/s-1")] = (200, _sweep("score"))
    assert main(["jobs", "sweep-show", "s-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "JOB  STATUS      LR  EPOCHS    LOSS  SCORE",
        "j-0  completed  0.1       1  0.3333   0.71",
        "j-1  completed  0.7       1  0.3333   4.97  <- best",
    ]
    fake.routes[("GET", "/services/jobs/api/sweeps/s-1")] = (200, _sweep())
    assert main(["jobs", "sweep-show", "s-1"]) == 2
    out, err = capsys.readouterr()
    assert "<- best" not in out and len(out.splitlines()) == 3
    assert "aidc: error: no run of sweep s-1 recorded metric 'nosuchmetric'" in err


def test_text_table_and_number_format():
    assert format_value(0.7047549999999999) == "0.7048"
    assert format_value(49.0) == "49" and format_value(12345.678) == "12346"
    assert format_value(1.5e-7) == "1.500e-07" and format_value(None) == "-"
    assert format_value({"a": 1}) == '{"a": 1}'
    assert text_table(["NAME", "N"], [["a", 1], ["bbb", 10.25]], ["", "*"]).splitlines() == [
        "NAME      N", "a         1", "bbb   10.25  *"]


# -- item 14: notebook display ---------------------------------------------------------------

def _job(**extra) -> dict:
    return {"id": "j-1", "owner": "ann", "path": "train.ipynb", "parameters": {"lr": 0.1},
            "gpus": 0, "priority": 0, "timeout": None, "cell_timeout": None, "retries": 0,
            "attempt": 1, "status": "failed", "error": "cell 2 raised <script>alert(1)</script>",
            "created": "2026-12-03T10:00:00Z", "started": "2026-12-03T10:00:01Z",
            "finished": "2026-12-03T10:00:02Z", "progress": {"cell": 1, "cells": 3},
            "metrics": {"accuracy": 0.9123456789}, "series": {"loss": [[0, 1.0], [1, 0.5]]},
            "waiting": None, "notices": [], **extra}


def test_objects_render_as_escaped_html_tables_with_links(fake):  # noqa: F811
    client = Client(URL + "/hub", "t")
    html = Job(_job(), client)._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert f'href="{URL}/services/jobs/api/jobs/j-1/output"' in html
    assert ">failed</span>" in html and "0.9123" in html and "0.9123456789" not in html
    assert "cell 2 of 3" in html and "2 points, last 0.5" in html

    sweep = _sweep("score")
    sweep["runs"][0]["parameters"]["note"] = "<b>x</b>"
    html = Sweep(sweep, client)._repr_html_()
    assert f'href="{URL}/services/jobs/api/jobs/j-1/output"' in html
    assert '<tr style="font-weight:600">' in html and "4.97" in html and "<b>x</b>" not in html
    html = Sweep(_sweep(), client)._repr_html_()  # no best: the reason, not an exception
    assert "recorded metric &#x27;nosuchmetric&#x27;" in html

    version = {"name": "tiny", "version": 2, "format": "onnx", "filename": "model.onnx",
               "signature": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                             "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]},
               "metrics": {"loss": 0.25}, "tags": {}, "size": 1234, "created_by": "ann",
               "created": "2026-12-03T10:00:00Z",
               "lineage": {"job": "j-9", "notebook": "train.ipynb",
                           "output_notebook": "services/jobs/api/jobs/j-9/output"}}
    html = ModelVersion(version, url=URL)._repr_html_()
    assert f'href="{URL}/services/jobs/api/jobs/j-9/output"' in html
    assert "FP32" in html and "[-1, 2]" in html and "job j-9 (train.ipynb)" in html
    assert repr(ModelVersion(version)) == "<ModelVersion tiny v2 onnx>"

    dep = Deployment(dep_view(ready=1, canary=2, weight=0.25), "tiny", URL)
    html = dep._repr_html_()
    endpoint = f"{URL}/services/models/v2/models/tiny"
    assert f'href="{endpoint}"' in html and f"POST {endpoint}/infer" in html
    assert "serving v1 (1/2 replicas ready), canary v2 at 25% (1/2 replicas ready)" in html
    assert "1.235" in html and "1/2" in html
    assert repr(dep).startswith("<Deployment tiny: serving v1")

    unit = {"node": "n", "kind": "A100", "memory_mb": 81920, "simulated": True}
    data = {"simulated": True, "free": {"A100": 3},
            "mine": [{"holder": "server:ann", "units": ["gpu0"]}],
            "units": [{**unit, "id": "gpu0", "name": "NVIDIA A100 <80GB>", "visible_id": "GPU-0",
                       "free": False, "holder": "server:ann", "owner": "ann"},
                      {**unit, "id": "gpu1", "name": "NVIDIA A100", "visible_id": "GPU-1",
                       "free": True, "holder": None, "owner": None}]}
    fake.routes[("GET", "/services/resources/api/gpus")] = (200, data)
    gpus = aidc.gpus()
    assert isinstance(gpus, GPUInventory) and gpus == data  # the dict callers had
    html = gpus._repr_html_()
    assert "GPUs (simulated)" in html and "3 A100" in html and "80 GiB" in html
    assert "NVIDIA A100 &lt;80GB&gt;" in html and "server:ann" in html and ">free</span>" in html
    assert repr(gpus) == "<GPUs: 2 units, free: 3 A100>"


# -- item 17: aidc models predict -------------------------------------------------------------

def test_cli_predict_from_json_or_npy(fake, tmp_path, capsys):  # noqa: F811
    tiny = "/services/models/v2/models/tiny"
    sent = []

    def infer(body):
        request = json.loads(body)
        sent.append(request["inputs"][0])
        n = request["inputs"][0]["shape"][0]
        return 200, {"model_name": "tiny", "outputs": [
            {"name": "output", "datatype": "FP32", "shape": [n, 2], "data": [0.5, 1 / 3] * n}]}

    for path in (tiny, tiny + "/versions/2"):
        fake.routes[("GET", path)] = (200, TINY_META)
        fake.routes[("POST", path + "/infer")] = infer

    assert main(["models", "predict", "tiny", "--json", "[[1, 2, 3, 4]]"]) == 0
    assert sent[-1]["datatype"] == "FP32" and sent[-1]["data"] == [1.0, 2.0, 3.0, 4.0]
    assert capsys.readouterr().out.splitlines() == ["output: float32 [1, 2]", "[[0.5    0.3333]]"]

    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 4)))
    assert main(["models", "predict", "tiny", "--version", "2", "--input", str(x), "--json-output"]) == 0
    assert json.loads(capsys.readouterr().out) == [[0.5, pytest.approx(1 / 3)]] * 2
    assert sent[-1]["shape"] == [2, 4]

    # bad input is exit 2 with the reason; a model that is not there is refused, exit 1
    assert main(["models", "predict", "tiny", "--json", "[[1, 2"]) == 2
    assert "--json is not JSON" in capsys.readouterr().err
    assert main(["models", "predict", "tiny", "--input", str(tmp_path / "nope.npy")]) == 2
    assert "--input: " in capsys.readouterr().err
    assert main(["models", "predict", "tiny", "--json", '[["a", "b", "c", "d"]]']) == 2
    assert "pass numbers, not strings" in capsys.readouterr().err
    fake.routes[("GET", "/services/models/v2/models/gone")] = (404, {"error": "no model 'gone'"})
    assert main(["models", "predict", "gone", "--json", "[[1, 2, 3, 4]]"]) == 1
    assert capsys.readouterr().err.strip() == "aidc: error: no model 'gone'"


# -- through the session platform -------------------------------------------------------------

TINY_MODEL = "first-try-tiny"
TUNE = notebook("import aidc\naidc.record('score', lr * 3)\naidc.record('loss', 1 / 3)",
                parameters="lr = 0.1")


@pytest.fixture(scope="module")
def tiny(platform, scientist, tmp_path_factory):
    """first-try-tiny v1 (y = 2x) and v2 (y = 3x), two-input-wide ONNX models, not deployed."""
    from test_models import scale_onnx

    wait_service(platform, scientist.token)
    client = Client(platform.url, scientist.token)
    folder = tmp_path_factory.mktemp("tiny")
    v1 = aidc.models.register(scale_onnx(folder / "x2.onnx", 2.0), name=TINY_MODEL, client=client)
    aidc.models.register(scale_onnx(folder / "x3.onnx", 3.0), name=TINY_MODEL, client=client)
    yield {"client": client, "v1": v1}
    try:
        aidc.models.undeploy(TINY_MODEL, client=client)
    except NotFoundError:
        pass


@pytest.fixture(scope="module")
def swept(platform, scientist):
    """A finished sweep of two runs, by a metric no run records."""
    wait_service(platform, scientist.token)
    put(platform, scientist, "first-try/tune.ipynb", TUNE)
    client = Client(platform.url, scientist.token)
    s = aidc.jobs.sweep("first-try/tune.ipynb", grid={"lr": [0.1, 0.7]}, metric="nosuchmetric",
                        client=client)
    s.wait(timeout=300, poll=0.3)
    # both runs complete (a fresh run once saw one fail: say why, if it happens again)
    assert all(r["status"] == "completed" for r in s.runs), [
        (j.id, j.status, j.error, j.data.get("attempts")) for j in s.jobs]
    return s


def test_platform_canary_keeps_replicas_and_ready_counts_them(platform, scientist, tiny):
    client = tiny["client"]
    dep = aidc.models.deploy(TINY_MODEL, version=1, replicas=2, client=client)
    assert dep["ready"] and dep["ready_replicas"] == dep["replicas"] == 2, dep
    [primary] = dep["versions"]
    assert [r["ready"] for r in primary["replicas"]] == [True, True]
    pids = [r["pid"] for r in primary["replicas"]]

    dep = aidc.models.deploy(TINY_MODEL, version=1, canary={"version": 2, "weight": 0.5}, client=client)
    assert dep["replicas"] == 2 and dep["ready"] and dep["ready_replicas"] == 2, dep
    assert [(v["version"], len(v["replicas"])) for v in dep["versions"]] == [(1, 2), (2, 2)]
    assert [r["pid"] for r in dep["versions"][0]["replicas"]] == pids  # v1 kept, not restarted

    # a replica dies: the deployment says 1 of 2 while it restarts, and keeps answering
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        now = aidc.models.deployment(TINY_MODEL, client=client)
        seen.append((now["ready"], now["ready_replicas"], now["serving"]))
        if now["ready"] and now["versions"][0]["replicas"][0]["pid"] != pids[0]:
            break
        time.sleep(0.05)
    assert (False, 1, True) in seen and seen[-1] == (True, 2, True), seen
    out = aidc.models.predict(TINY_MODEL, [[1.0, 2.0]], version=1, client=client)
    assert out.tolist() == [[2.0, 4.0]]


def test_platform_sweep_without_its_metric(platform, scientist, swept):
    with pytest.raises(UsageError) as e:
        swept.best
    assert str(e.value) == (f"no run of sweep {swept.id} recorded metric 'nosuchmetric'; "
                            "the runs recorded: loss, score")
    table = swept.table()
    assert isinstance(table, pd.DataFrame) and list(table["status"]) == ["completed"] * 2
    assert sorted(table["score"]) == [pytest.approx(0.3), pytest.approx(2.1)]
    env = {"AIDC_URL": platform.url, "AIDC_TOKEN": scientist.token}
    r = platform.cli("jobs", "sweep-show", swept.id, env=env)
    assert r.returncode == 2
    assert "recorded metric 'nosuchmetric'; the runs recorded: loss, score" in r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["JOB", "STATUS", "LR", "LOSS", "SCORE"]
    assert sorted(row.split()[2:] for row in rows) == [["0.1", "0.3333", "0.3"],
                                                       ["0.7", "0.3333", "2.1"]]
    assert len({len(row) for row in [header, *rows]}) == 1  # aligned: every line as wide


def test_platform_objects_render_in_a_notebook(platform, scientist, tiny, swept):
    client = tiny["client"]
    job = swept.jobs[0]
    html = job._repr_html_()
    assert f'href="{platform.url}/services/jobs/api/jobs/{job.id}/output"' in html
    assert ">completed</span>" in html and "0.3333" in html
    # the link works in a signed-in browser session too; with the token here
    r = platform.api(scientist.token).get(f"{platform.url}/services/jobs/api/jobs/{job.id}/output",
                                          timeout=60)
    assert r.status_code == 200 and "aidc.record" in r.text
    assert swept.id in swept._repr_html_() and "recorded metric" in swept._repr_html_()
    v1 = tiny["v1"]
    assert "FP32" in v1._repr_html_() and TINY_MODEL in v1._repr_html_()
    dep = aidc.models.deploy(TINY_MODEL, version=1, client=client)
    html = dep._repr_html_()
    endpoint = f"{platform.url}/services/models/v2/models/{TINY_MODEL}"
    assert f'href="{endpoint}"' in html and ">ready</span>" in html
    assert platform.api(scientist.token).get(f"{endpoint}/ready", timeout=60).json()["ready"]
    gpus = aidc.gpus(client=client)
    html = gpus._repr_html_()
    free = sum(1 for u in gpus["units"] if u["free"])
    assert gpus["units"] and html.count(">free</span>") == free
    assert all(u["id"] in html and u["name"] in html for u in gpus["units"])


def test_platform_cli_predict_and_canary_deploy(platform, scientist, tiny, tmp_path):
    env = {"AIDC_URL": platform.url, "AIDC_TOKEN": scientist.token}
    r = platform.cli("models", "deploy", TINY_MODEL, "--version", "1", "--replicas", "2",
                     "--canary", "2", "--canary-weight", "0.1", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{TINY_MODEL}: serving v1 (ready, 2/2 replicas), canary v2 at 10%"
    shown = platform.cli("models", "show", TINY_MODEL, env=env)
    assert "deployed: v1 (ready, 2/2 replicas), canary v2 at 10%" in shown.stdout

    r = platform.cli("models", "predict", TINY_MODEL, "--version", "1", "--json", "[[1, 2]]",
                     "--json-output", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [[2.0, 4.0]]
    x = tmp_path / "x.npy"
    np.save(x, np.array([[1.0, 2.0], [0.5, 0.25]]))  # float64: cast to the model's FP32
    r = platform.cli("models", "predict", TINY_MODEL, "--version", "2", "--input", str(x), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "output: float32 [2, 2]"
    assert re.sub(r"\s+", " ", " ".join(r.stdout.splitlines()[1:])) == "[[3. 6. ] [1.5 0.75]]"

    r = platform.cli("models", "predict", TINY_MODEL, "--json", "[[1, 2, 3]]", env=env)
    assert r.returncode == 2 and "shape" in r.stderr and "Traceback" not in r.stderr
    r = platform.cli("models", "predict", "first-try-nosuch", "--json", "[[1, 2]]", env=env)
    assert r.returncode == 1 and "first-try-nosuch" in r.stderr and "Traceback" not in r.stderr
