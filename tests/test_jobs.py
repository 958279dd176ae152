"""Notebook jobs end to end: real hub, jobs service, Dask workers, papermill, kernels."""

from __future__ import annotations

import os
import subprocess
import time

import nbformat
import psutil
import pytest

from jobs_helpers import home, jobs_api, notebook, put, submit, wait, wait_service

TRAIN = notebook(
    "import os, aidc\n"
    "print('training', epochs, 'epochs at', lr)\n"
    "for epoch in range(epochs):\n"
    "    aidc.record('loss', 1.0 / (epoch + 1), step=epoch)\n"
    "aidc.record('accuracy', 0.9 + lr)\n"
    "aidc.record('uid', os.getuid())\n"
    "aidc.record('pid', os.getpid())\n"
    "aidc.record('cwd', os.getcwd())\n"
    "aidc.record('cuda', os.environ['CUDA_VISIBLE_DEVICES'])\n"
    "aidc.record('has_hub_token', 'JUPYTERHUB_API_TOKEN' in os.environ)\n"
    "aidc.record('omp', os.environ.get('OMP_NUM_THREADS'))\n"
    "open('side-file.txt', 'w').write('made by the job')",
    parameters="epochs = 2\nlr = 0.01\nname = 'run'",
)


@pytest.fixture(scope="module")
def jobs_up(platform, scientist):
    wait_service(platform, scientist.token)
    return platform


def test_job_runs_as_owner_with_parameters_metrics_and_output(jobs_up, scientist, admin):
    platform = jobs_up
    put(platform, scientist, "work/train.ipynb", TRAIN)
    job = submit(platform, scientist, "work/train.ipynb", parameters={"epochs": 3, "lr": 0.05})
    assert job["status"] in ("queued", "running")
    done = wait(platform, scientist, job["id"])
    assert done["status"] == "completed", done
    m = done["metrics"]
    pw_uid = os.stat(home(platform, scientist)).st_uid
    assert m["accuracy"] == pytest.approx(0.95)
    assert m["uid"] == pw_uid  # the kernel ran as the owner's Unix account
    assert m["cwd"] == str(home(platform, scientist) / "work")
    assert m["cuda"] == ""  # no GPUs asked, none visible
    assert m["has_hub_token"] is False  # the service's credentials never reach a job
    # one worker per core on the embedded cluster: each kernel's math libraries get one
    # share of the cores, not a thread per core each (jobs side by side would oversubscribe)
    # the lineage route is the models service's alone: not even the job's owner or an admin
    # reads it (the owner's view of the job is /jobs/ID)
    for who in (scientist, admin):
        assert jobs_api(platform, who.token, "GET", f"/jobs/{job['id']}/lineage").status_code == 404
    workers = jobs_api(platform, admin.token, "GET", "/cluster").json()["workers"]
    assert m["omp"] == str(max(1, len(os.sched_getaffinity(0)) // workers))
    assert done["series"]["loss"] == [[0, 1.0], [1, 0.5], [2, pytest.approx(1 / 3)]]
    side = home(platform, scientist) / "work" / "side-file.txt"
    assert side.read_text() == "made by the job" and side.stat().st_uid == pw_uid
    # the output notebook: injected parameters, outputs, and the same metrics
    r = jobs_api(platform, scientist.token, "GET", f"/jobs/{job['id']}/output")
    assert r.status_code == 200
    out = nbformat.reads(r.text, as_version=4)
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "epochs = 3" in injected[0].source
    logs = jobs_api(platform, scientist.token, "GET", f"/jobs/{job['id']}/logs").text
    assert "training 3 epochs at 0.05" in logs
    # output notebook file belongs to the owner; on disk the output and the input snapshot
    # are ciphertext (under the job's own key), read back above as plaintext
    artifacts = platform.data_dir / "jobs" / "artifacts" / job["id"] / "output.ipynb"
    assert artifacts.stat().st_uid == pw_uid
    for stored in (artifacts, artifacts.with_name("input.ipynb")):
        raw = stored.read_bytes()
        assert raw.startswith(b"AIDCENC1") and b"training" not in raw and b"epochs" not in raw
    # every job gets a fresh kernel process
    again = wait(platform, scientist, submit(platform, scientist, "work/train.ipynb")["id"])
    assert again["status"] == "completed" and again["metrics"]["pid"] != m["pid"]
    assert again["metrics"]["accuracy"] == pytest.approx(0.91)  # defaults used


def test_job_gets_its_gpus_from_the_ledger(jobs_up, scientist, admin):
    platform = jobs_up
    put(platform, scientist, "gpu.ipynb", notebook(
        "import os, time, aidc\n"
        "aidc.record('cuda', os.environ['CUDA_VISIBLE_DEVICES'])\n"
        "aidc.record('nvidia', os.environ['NVIDIA_VISIBLE_DEVICES'])\n"
        "time.sleep(2)"))
    job = submit(platform, scientist, "gpu.ipynb", gpus=2)
    running = wait(platform, scientist, job["id"], until=lambda j: j["status"] != "queued")
    holders = {u["holder"] for u in platform.resources(admin.token)["units"] if u["holder"]}
    assert f"job:{job['id']}" in holders
    done = wait(platform, scientist, job["id"])
    assert done["status"] == "completed", done
    devices = done["metrics"]["cuda"].split(",")
    assert len(devices) == 2 and done["metrics"]["nvidia"] == done["metrics"]["cuda"]
    assert done["visible_devices"] == done["metrics"]["cuda"] == running["visible_devices"]
    holders = {u["holder"] for u in platform.resources(admin.token)["units"] if u["holder"]}
    assert f"job:{job['id']}" not in holders  # released when the job ended


@pytest.mark.parametrize("body, status, words", [
    ({"path": "bad.ipynb"}, 400, "not a valid notebook"),
    ({"path": "missing.ipynb"}, 404, "does not exist"),
    ({"path": "../../../etc/passwd"}, 400, "outside your home"),
    ({"path": "p.ipynb", "parameters": {"epoch": 3}}, 400, "unknown parameter 'epoch'"),
    ({"path": "p.ipynb", "parameters": {"epochs": "three"}}, 400, "expects an integer"),
    ({"path": "plain.ipynb", "parameters": {"x": 1}}, 400, "no cell tagged 'parameters'"),
    ({"path": "p.ipynb", "gpus": 64}, 400, "asked for 64 GPUs, but this platform has"),
    ({"path": "p.ipynb", "timeout": -5}, 400, "timeout must be a positive number"),
    ({"path": "p.ipynb", "gpus": "two"}, 400, "gpus must be an integer"),
    ({"path": "p.ipynb", "colour": "red"}, 400, "unknown field(s) colour"),
])
def test_bad_submissions_get_clear_4xx(jobs_up, scientist, body, status, words):
    platform = jobs_up
    put(platform, scientist, "bad.ipynb", "{not json")
    put(platform, scientist, "p.ipynb", notebook("print(epochs)", parameters="epochs = 1"))
    put(platform, scientist, "plain.ipynb", notebook("print(1)"))
    before = jobs_api(platform, scientist.token, "GET", "/jobs").json()["jobs"]
    r = jobs_api(platform, scientist.token, "POST", "/jobs", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["message"], r.json()
    assert "Traceback" not in r.text
    assert jobs_api(platform, scientist.token, "GET", "/jobs").json()["jobs"] == before


def test_non_json_and_oversized_bodies(jobs_up, scientist):
    r = jobs_api(jobs_up, scientist.token, "POST", "/jobs", data=b"path=x")
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = jobs_api(jobs_up, scientist.token, "POST", "/jobs", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["message"]


@pytest.mark.parametrize("code, words", [
    ("raise ValueError('bad learning rate')", "cell 3 raised ValueError: bad learning rate"),
    ("import os\nos._exit(3)", "the kernel died while running cell 3"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "the kernel died while running cell 3"),
])
def test_failing_notebooks_fail_with_the_cell_named(jobs_up, scientist, code, words):
    platform = jobs_up
    put(platform, scientist, "fail.ipynb", notebook("print('first cell ran')", code, "print('never')"))
    done = wait(platform, scientist, submit(platform, scientist, "fail.ipynb")["id"])
    assert done["status"] == "failed"
    assert words in done["error"], done["error"]


def test_sys_exit_and_infinite_loop(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "exit.ipynb", notebook("import sys\nsys.exit(2)", "print('after')"))
    put(platform, scientist, "loop.ipynb", notebook("print('start')", "while True:\n    pass"))
    exited = submit(platform, scientist, "exit.ipynb")
    looped = submit(platform, scientist, "loop.ipynb", cell_timeout=3)
    whole = submit(platform, scientist, "loop.ipynb", timeout=4)
    done = wait(platform, scientist, exited["id"])
    assert done["status"] == "failed" and "cell 2" in done["error"] and "SystemExit" in done["error"]
    done = wait(platform, scientist, looped["id"])
    assert done["status"] == "failed" and "cell 3 ran longer than the cell time limit of 3 s" in done["error"]
    done = wait(platform, scientist, whole["id"])
    assert done["status"] == "failed"
    assert "longer than its time limit of 4 s; stopped in cell 3" in done["error"]


def test_huge_output_is_capped_and_the_job_completes(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "loud.ipynb", notebook(
        "chunk = 'x' * (1024 * 1024)\nfor i in range(100):\n    print(chunk)", "print('the end')"))
    done = wait(platform, scientist, submit(platform, scientist, "loud.ipynb")["id"], timeout=300)
    assert done["status"] == "completed", done
    logs = jobs_api(platform, scientist.token, "GET", f"/jobs/{done['id']}/logs").text
    assert "output truncated" in logs and len(logs) < 10 * 1024 * 1024
    out = jobs_api(platform, scientist.token, "GET", f"/jobs/{done['id']}/output")
    assert len(out.content) < 20 * 1024 * 1024 and "the end" in out.text


def test_cancel_mid_cell_kills_the_kernel_releases_gpus_keeps_partial_output(jobs_up, scientist, admin):
    platform = jobs_up
    put(platform, scientist, "long.ipynb", notebook(
        "import os, aidc\naidc.record('pid', os.getpid())\nprint('before the long cell', flush=True)",
        "import time\ntime.sleep(600)", "print('never')"))
    job = submit(platform, scientist, "long.ipynb", gpus=1)
    wait(platform, scientist, job["id"], until=lambda j: j["progress"]["cell"] == 2)
    pid = wait(platform, scientist, job["id"], until=lambda j: "pid" in j["metrics"])["metrics"]["pid"]
    assert psutil.pid_exists(pid)
    r = jobs_api(platform, scientist.token, "POST", f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202
    done = wait(platform, scientist, job["id"], timeout=60)
    assert done["status"] == "cancelled"
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    holders = {u["holder"] for u in platform.resources(admin.token)["units"] if u["holder"]}
    assert f"job:{job['id']}" not in holders
    out = nbformat.reads(jobs_api(platform, scientist.token, "GET", f"/jobs/{job['id']}/output").text, 4)
    printed = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    assert "before the long cell" in printed and "never" not in printed
    again = jobs_api(platform, scientist.token, "POST", f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]


def test_cancel_queued_job(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "p.ipynb", notebook("print(epochs)", parameters="epochs = 1"))
    job = submit(platform, scientist, "p.ipynb", gpus=4, priority=-1000)
    r = jobs_api(platform, scientist.token, "POST", f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202
    assert wait(platform, scientist, job["id"])["status"] in ("cancelled", "completed")


def test_isolation_between_users_and_roles(jobs_up, scientist, other_scientist, viewer, admin):
    platform = jobs_up
    put(platform, scientist, "p.ipynb", notebook("print(epochs)", parameters="epochs = 1"))
    job = submit(platform, scientist, "p.ipynb")
    for path in ("", "/logs", "/output", "/events", "/input"):
        r = jobs_api(platform, other_scientist.token, "GET", f"/jobs/{job['id']}{path}")
        assert r.status_code == 404, (path, r.status_code)
    r = jobs_api(platform, other_scientist.token, "POST", f"/jobs/{job['id']}/cancel")
    assert r.status_code == 404
    assert job["id"] not in {j["id"] for j in jobs_api(platform, other_scientist.token, "GET", "/jobs").json()["jobs"]}
    # a job of someone else's file: the path is always inside the caller's own home
    r = jobs_api(platform, other_scientist.token, "POST", "/jobs", json={
        "path": str(home(platform, scientist) / "p.ipynb")})
    assert r.status_code == 400 and "outside your home" in r.json()["message"]
    # viewers: the summary only
    r = jobs_api(platform, viewer.token, "GET", "/jobs")
    assert r.status_code == 403 and "summary" in r.json()["message"]
    assert jobs_api(platform, viewer.token, "POST", "/jobs", json={"path": "p.ipynb"}).status_code == 403
    summary = jobs_api(platform, viewer.token, "GET", "/summary").json()
    assert set(summary["counts"]) == {"queued", "running", "completed", "failed", "cancelled"}
    # the admin sees everyone's
    assert jobs_api(platform, admin.token, "GET", f"/jobs/{job['id']}").status_code == 200
    assert jobs_api(platform, admin.token, "GET", "/cluster").json()["kind"] == "local"
    wait(platform, scientist, job["id"])


def test_a_job_cannot_read_another_users_home(jobs_up, scientist, other_scientist):
    platform = jobs_up
    secret = put(platform, other_scientist, "secret.txt", "other user's secret")
    put(platform, scientist, "snoop.ipynb", notebook(f"print(open({str(secret)!r}).read())"))
    done = wait(platform, scientist, submit(platform, scientist, "snoop.ipynb")["id"])
    assert done["status"] == "failed" and "PermissionError" in done["error"]


def test_cli_submit_follow_show_output(jobs_up, scientist, tmp_path):
    platform = jobs_up
    put(platform, scientist, "cli.ipynb", notebook(
        "import aidc\nfor i in range(3):\n    print('step', i, flush=True)\naidc.record('score', 7)",
        parameters="n = 1"))
    env = {"AIDC_URL": platform.url, "AIDC_TOKEN": scientist.token}
    r = platform.cli("jobs", "submit", "cli.ipynb", "-p", "n", "5", "--follow", env=env)
    assert r.returncode == 0, r.stderr
    assert "step 2" in r.stdout and "[metric] score = 7" in r.stdout
    assert "completed" in r.stderr
    job_id = r.stderr.split()[1]
    shown = platform.cli("jobs", "show", job_id, env=env)
    assert "completed" in shown.stdout and "score = 7" in shown.stdout and '"n": 5' in shown.stdout
    out = tmp_path / "out.ipynb"
    assert platform.cli("jobs", "output", job_id, "-o", str(out), env=env).returncode == 0
    assert "step 2" in out.read_text()
    listed = platform.cli("jobs", "list", env=env)
    assert job_id in listed.stdout
    bad = platform.cli("jobs", "submit", "cli.ipynb", "-p", "m", "1", env=env)
    assert bad.returncode != 0 and "unknown parameter 'm'" in bad.stderr and "Traceback" not in bad.stderr


def test_python_client_submit_wait_sweep(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "tune.ipynb", notebook(
        "import aidc\naidc.record('score', lr * 100 - epochs)", parameters="lr = 0.1\nepochs = 1"))
    code = (
        "import aidc, json\n"
        "job = aidc.jobs.submit('tune.ipynb', parameters={'lr': 0.5})\n"
        "status = job.wait(timeout=120)\n"
        "s = aidc.jobs.sweep('tune.ipynb', grid={'lr': [0.01, 0.2], 'epochs': [1, 3]}, metric='score')\n"
        "s.wait(timeout=300)\n"
        "print(json.dumps({'status': status, 'metrics': job.metrics, 'output_cells': len(job.output().cells),\n"
        "                  'runs': s.table().to_dict('records'), 'best': s.best}))\n"
    )
    env = {**os.environ, "AIDC_URL": platform.url, "AIDC_TOKEN": scientist.token}
    proc = subprocess.run([str(platform_python()), "-c", code], capture_output=True, text=True,
                          env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr
    import json
    result = json.loads(proc.stdout)
    assert result["status"] == "completed" and result["metrics"]["score"] == pytest.approx(49)
    assert result["output_cells"] >= 3
    runs = result["runs"]
    assert sorted((r["lr"], r["epochs"]) for r in runs) == [(0.01, 1), (0.01, 3), (0.2, 1), (0.2, 3)]
    assert all(r["status"] == "completed" for r in runs)
    assert result["best"]["parameters"] == {"lr": 0.2, "epochs": 1}
    assert result["best"]["metrics"]["score"] == pytest.approx(19)


def platform_python():
    import sys
    return sys.executable


def test_events_stream_as_server_sent_events(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "sse.ipynb", notebook("print('hello sse')", "import aidc\naidc.record('x', 1)"))
    job = submit(platform, scientist, "sse.ipynb")
    r = platform.api(scientist.token).get(
        f"{platform.url}/services/jobs/api/jobs/{job['id']}/events",
        headers={"Accept": "text/event-stream"}, stream=True, timeout=120)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    kinds = [line.split(":", 1)[1].strip() for line in r.iter_lines(decode_unicode=True)
             if line and line.startswith("event:")]
    assert kinds[0] == "status" and kinds[-1] == "status"
    for kind in ("cell_start", "cell_end", "stream", "metric"):
        assert kind in kinds
    plain = jobs_api(platform, scientist.token, "GET", f"/jobs/{job['id']}/events").json()
    assert plain["status"] == "completed"
    assert any(e["type"] == "stream" and "hello sse" in e["text"] for e in plain["events"])


def test_schedule_creates_jobs_and_can_be_paused(jobs_up, scientist):
    platform = jobs_up
    put(platform, scientist, "nightly.ipynb", notebook("print('scheduled')", parameters="x = 1"))
    r = jobs_api(platform, scientist.token, "POST", "/schedules", json={
        "path": "nightly.ipynb", "cron": "* * * * * */2", "timezone": "Europe/Berlin",
        "parameters": {"x": 2}})
    assert r.status_code == 201, r.text
    sched = r.json()
    assert sched["next_run"] and not sched["paused"]
    # a second schedule on the same clock, never paused: its runs show that time has passed
    witness = jobs_api(platform, scientist.token, "POST", "/schedules", json={
        "path": "nightly.ipynb", "cron": "* * * * * */2", "timezone": "UTC"}).json()

    def made(schedule=sched):
        return [j for j in jobs_api(platform, scientist.token, "GET", "/jobs").json()["jobs"]
                if j["schedule"] == schedule["id"]]

    def wait_for_runs(schedule, at_least):
        deadline = time.monotonic() + 30
        while len(made(schedule)) < at_least and time.monotonic() < deadline:
            time.sleep(0.25)
        assert len(made(schedule)) >= at_least, made(schedule)

    wait_for_runs(sched, 2)
    assert all(j["parameters"] == {"x": 2} for j in made())
    assert jobs_api(platform, scientist.token, "POST", f"/schedules/{sched['id']}/pause").json()["paused"]
    # a pass that read the schedule just before the pause may still submit once: count after
    # the witness has run once since, then let it run twice more (two more due times)
    wait_for_runs(witness, len(made(witness)) + 1)
    count = len(made())
    wait_for_runs(witness, len(made(witness)) + 2)
    assert len(made()) == count  # paused: no new jobs
    assert jobs_api(platform, scientist.token, "DELETE",
                    f"/schedules/{witness['id']}").status_code == 204
    resumed = jobs_api(platform, scientist.token, "POST", f"/schedules/{sched['id']}/resume").json()
    assert not resumed["paused"] and resumed["next_run"]
    deadline = time.monotonic() + 30
    while len(made()) == count and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(made()) > count
    assert jobs_api(platform, scientist.token, "DELETE", f"/schedules/{sched['id']}").status_code == 204
    bad = jobs_api(platform, scientist.token, "POST", "/schedules", json={
        "path": "nightly.ipynb", "cron": "every night", "timezone": "UTC"})
    assert bad.status_code == 400 and "invalid cron expression" in bad.json()["message"]
    bad = jobs_api(platform, scientist.token, "POST", "/schedules", json={
        "path": "nightly.ipynb", "cron": "0 3 * * *", "timezone": "Mars/Olympus"})
    assert bad.status_code == 400 and "unknown time zone" in bad.json()["message"]


def test_openapi_document_is_served(jobs_up, scientist):
    r = jobs_api(jobs_up, scientist.token, "GET", "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/jobs", "/jobs/{id}", "/jobs/{id}/cancel", "/jobs/{id}/events", "/sweeps", "/schedules"):
        assert path in doc["paths"], path
