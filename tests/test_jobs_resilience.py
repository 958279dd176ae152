"""Jobs on an external Dask cluster; crashes of a worker and of the jobs service lose nothing.

A platform of its own whose jobs service uses an external cluster started here as
separate ``dask scheduler`` / ``dask worker`` processes (3 single-threaded workers),
with a per-user limit of 2 running jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import fake_nvml_env
from jobs_helpers import jobs_api, notebook, put, submit, wait, wait_service, write_tls_files
from platform_helpers import Platform, new_prefix, own_platform_drop_ins

DASK = str(Path(sys.executable).with_name("dask"))

SLEEPER = notebook(
    "import os, time, aidc\n"
    "aidc.record('pid', os.getpid())\n"
    "aidc.record('zygote', os.getppid())\n"
    "print('started', flush=True)\n"
    "time.sleep(seconds)\n"
    "aidc.record('done', True)",
    parameters="seconds = 1.0",
)


@pytest.fixture(scope="module")
def cluster(tmp_root):
    workdir = tmp_root / "external-dask"
    workdir.mkdir()
    sched_file = workdir / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB")}
    # as hub_config/dask/README.md says: never the shared /tmp/dask-scratch-space
    env["DASK_TEMPORARY_DIRECTORY"] = str(workdir)
    tls = write_tls_files(workdir)  # mutual TLS, as an external cluster must have
    tls_args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--protocol", "tls", "--scheduler-file", str(sched_file), *tls_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=workdir)
    deadline = time.monotonic() + 60
    while not sched_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = subprocess.Popen(
        [DASK, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1", "--nworkers", "3",
         "--no-dashboard", "--local-directory", str(workdir), *tls_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=workdir)
    yield {"file": sched_file, "worker": worker, "scheduler": scheduler, "tls": tls,
           "workdir": workdir}
    for proc in (worker, scheduler):
        proc.send_signal(signal.SIGTERM)
    for proc in (worker, scheduler):
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def ext_platform(tmp_root, cluster):
    p = Platform(tmp_root / "ext-platform", prefix=new_prefix(), env=fake_nvml_env(tmp_root))
    own_platform_drop_ins(p.data_dir)
    (p.data_dir / "config.d" / "50-jobs.py").write_text(
        f"c.JobCluster.scheduler_file = {str(cluster['file'])!r}\n"
        f"c.JobCluster.tls_ca_file = {cluster['tls']['ca']!r}\n"
        f"c.JobCluster.tls_client_cert = {cluster['tls']['cert']!r}\n"
        f"c.JobCluster.tls_client_key = {cluster['tls']['key']!r}\n"
        "c.JobManager.max_running_per_user = 2\n"
        "c.JobManager.retry_backoff = 0.5\n")
    p.start()
    yield p
    p.stop()
    p.remove_users()


@pytest.fixture(scope="module")
def user(ext_platform):
    u = ext_platform.new_user("scientist")
    wait_service(ext_platform, u.token)
    put(ext_platform, u, "sleep.ipynb", SLEEPER)
    return u


def _tree(pid: int) -> set[int]:
    proc = psutil.Process(pid)
    return {proc.pid, *(c.pid for c in proc.children(recursive=True))}


def test_jobs_run_on_the_external_cluster_within_the_user_limit(ext_platform, user, cluster):
    admin_view = jobs_api(ext_platform, user.token, "GET", "/cluster")
    assert admin_view.status_code == 403  # scientists do not see the cluster
    jobs = [submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 3}) for _ in range(3)]
    deadline = time.monotonic() + 60
    while True:  # until the third is held back (the first two dispatched)
        states = [jobs_api(ext_platform, user.token, "GET", f"/jobs/{j['id']}").json() for j in jobs]
        if any("per-user limit" in (s.get("waiting") or "") for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(s["status"] == "running" for s in states) <= 2
    waiting = [s for s in states if s["status"] == "queued"]
    assert waiting and "per-user limit" in waiting[0]["waiting"], states
    done = [wait(ext_platform, user, j["id"]) for j in jobs]
    assert all(d["status"] == "completed" for d in done), done
    # the kernels ran under the external `dask worker` processes, not the service
    tree = _tree(cluster["worker"].pid)
    for d in done:
        assert d["metrics"]["zygote"] in tree or not psutil.pid_exists(d["metrics"]["zygote"])
    assert any(d["metrics"]["zygote"] in tree for d in done)


def test_higher_priority_runs_first(ext_platform, user):
    blockers = [submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 4}) for _ in range(2)]
    low = submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 0.1}, priority=0)
    high = submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 0.1}, priority=10)
    low_done, high_done = wait(ext_platform, user, low["id"]), wait(ext_platform, user, high["id"])
    assert high_done["started"] < low_done["started"], (high_done, low_done)
    for b in blockers:
        wait(ext_platform, user, b["id"])


def _working_outputs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("aidc-job-*"))


def test_worker_killed_mid_job_is_retried_and_completes(ext_platform, user, cluster):
    in_tmp = _working_outputs(Path(tempfile.gettempdir()))
    job = submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 6}, retries=1)
    running = wait(ext_platform, user, job["id"], until=lambda j: "zygote" in j["metrics"])
    # papermill writes the output as it goes in the worker's own scratch, not in /tmp
    (working,) = _working_outputs(cluster["workdir"])
    assert (working / "output.ipynb").exists()
    worker_pid = psutil.Process(running["metrics"]["zygote"]).ppid()
    os.kill(worker_pid, signal.SIGKILL)
    done = wait(ext_platform, user, job["id"], timeout=180)
    assert done["status"] == "completed", done
    # the killed worker's unfinished output is gone (Dask removes a dead worker's folder
    # as the next starts), the retry's with its end, and nothing was left in /tmp
    assert _working_outputs(cluster["workdir"]) == []
    assert _working_outputs(Path(tempfile.gettempdir())) == in_tmp
    assert done["attempt"] == 2 and done["metrics"]["done"] is True
    events = jobs_api(ext_platform, user.token, "GET", f"/jobs/{job['id']}/events").json()["events"]
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "queued", "running", "completed"], statuses
    requeued = [e for e in events if e["type"] == "status" and e["status"] == "queued"][1]
    assert "worker running the job died" in requeued["text"]
    # without retries the same loss fails the job and says why
    job = submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 6})
    running = wait(ext_platform, user, job["id"], until=lambda j: "zygote" in j["metrics"])
    os.kill(psutil.Process(running["metrics"]["zygote"]).ppid(), signal.SIGKILL)
    done = wait(ext_platform, user, job["id"], timeout=180)
    assert done["status"] == "failed" and "worker running the job died" in done["error"]


def _service_pid(platform: Platform) -> int:
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd = proc.info["cmdline"] or []
        env = proc.info["environ"] or {}
        # the service itself, not the launcher that wraps it (aidc.services.launch)
        if cmd[-2:] == ["-m", "aidc.jobs.service"] and "aidc.services.launch" not in cmd \
                and env.get("AIDC_DATA_DIR") == str(platform.data_dir):
            return proc.pid
    raise AssertionError("jobs service process not found")


def test_service_killed_with_queued_and_running_jobs_loses_nothing(ext_platform, user):
    jobs = [submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 2}, retries=1)
            for _ in range(5)]
    wait(ext_platform, user, jobs[0]["id"], until=lambda j: j["status"] == "running")
    pid = _service_pid(ext_platform)
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    wait_service(ext_platform, user.token, timeout=120)  # the hub starts it again
    assert _service_pid(ext_platform) != pid
    done = [wait(ext_platform, user, j["id"], timeout=240) for j in jobs]
    assert [d["status"] for d in done] == ["completed"] * 5, done
    assert any(d["attempt"] == 2 for d in done)  # the ones running at the crash ran again


def test_hub_restart_keeps_queued_jobs(ext_platform, user):
    jobs = [submit(ext_platform, user, "sleep.ipynb", parameters={"seconds": 3}, retries=1)
            for _ in range(4)]
    ext_platform.stop()
    ext_platform.start()
    wait_service(ext_platform, user.token)
    done = [wait(ext_platform, user, j["id"], timeout=240) for j in jobs]
    assert [d["status"] for d in done] == ["completed"] * 4, done
