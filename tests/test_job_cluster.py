"""aidc.jobs.cluster: the Dask cluster of the jobs service, with real processes.

Embedded clusters, an external ``dask scheduler`` with ``dask worker`` processes, a
SIGKILLed service, the admin examples in ``hub_config/dask/`` and the jobs API's
OpenAPI document. Nothing is mocked; Slurm, dask-gateway servers and Kubernetes are
not here, so their examples are checked as far as their client libraries go offline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cloudpickle
import dask
import pytest
import yaml
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from aidc.errors import PlatformError
from aidc.jobs.cluster import JobCluster, pdeathsig
from jobs_helpers import write_tls_files

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "hub_config" / "dask"
OPENAPI = ROOT / "extensions" / "aidc" / "jobs" / "openapi.yaml"
VENV_BIN = Path(sys.executable).parent
DASK = str(VENV_BIN / "dask")


# --- helpers -----------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_gone(pids, timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return set()
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


def load_example(name: str) -> Config:
    return PyFileConfigLoader(name, path=str(EXAMPLES)).load_config()


def about_this_process() -> dict:
    """Run on a worker (this module's functions are pickled by value, see below)."""
    import os
    import threading


    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "thread": threading.current_thread().name,
        "pdeathsig": pdeathsig(),
        "token": os.environ.get("JUPYTERHUB_API_TOKEN"),
    }


async def assert_nobody_else_gets_in(cluster: JobCluster) -> None:
    """What another account on the host finds: TLS ports that refuse it, HTTP servers serving nothing."""
    import urllib.error
    import urllib.request

    from distributed import Client
    from distributed.security import Security

    address = cluster.client.scheduler.address
    host_port = address.split("://", 1)[1]
    workers = (await cluster.client.scheduler.identity(n_workers=-1))["workers"]
    for target in [host_port, *(w.split("://", 1)[1] for w in workers)]:
        for attempt in (f"tcp://{target}", f"tls://{target}"):
            # over tcp:// the handshake never happens; over tls:// with a certificate of one's
            # own (not signed by the cluster's) the server refuses it
            security = Security.temporary() if attempt.startswith("tls") else None
            with pytest.raises((OSError, TimeoutError)):
                async with Client(attempt, asynchronous=True, set_as_default=False, timeout=3,
                                  security=security):
                    pass
    http_ports = [cluster.cluster.scheduler.http_server.port]
    http_ports += [w["services"]["dashboard"] for w in workers.values()]
    assert len(http_ports) == 1 + len(workers)
    for port in http_ports:
        for path in ("/info/main/workers.html", "/metrics", "/health", "/json/identity.json",
                     f"/proxy/{port}/127.0.0.1/health"):
            with pytest.raises(urllib.error.HTTPError) as answer:
                await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}{path}",
                                        timeout=5)
            assert answer.value.code == 404, (port, path)


# workers outside this test run (`dask worker`) cannot import this module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- embedded cluster ------------------------------------------------------------------------


async def test_embedded_cluster_runs_tasks_in_single_threaded_worker_processes(monkeypatch):
    # the service's hub token must not reach the workers (nor the kernels they start)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-secret")
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    cluster = JobCluster(n_workers=2)
    assert cluster.kind == "local"
    client = await cluster.start()
    try:
        assert client.asynchronous
        workers = await cluster.workers()
        assert len(workers) == 2
        assert [w["nthreads"] for w in workers.values()] == [1, 1]

        info = await client.run(about_this_process)
        pids = {i["pid"] for i in info.values()}
        assert len(pids) == 2 and os.getpid() not in pids
        for i in info.values():
            assert i["ppid"] == os.getpid()  # direct children of the service
            assert i["pdeathsig"] == signal.SIGKILL  # the guard is in place
            assert i["token"] is None  # scrubbed

        # a task (not just Client.run) runs in one of those processes, in a worker thread
        task = await client.submit(about_this_process, pure=False)
        assert task["pid"] in pids and task["thread"] != "MainThread"
        # two tasks at once run in two different processes (one thread each)
        both = await asyncio.gather(*client.map(lambda i: __import__("os").getpid() + 0 * i,
                                                [1, 2], pure=False))
        assert set(both) <= pids

        described = cluster.describe()
        assert described["kind"] == "local"
        assert described["address"].startswith("tls://127.0.0.1:")
        await assert_nobody_else_gets_in(cluster)
        assert described["workers"] == 2 and described["threads"] == 2
        assert described["dashboard"] is None and described["running"] is True
        # no dashboard, and the scheduler's HTTP server is on a random port, not 8787
        sockets = cluster.cluster.scheduler.http_server._sockets.values()
        assert 8787 not in {s.getsockname()[1] for s in sockets}
        assert {s.getsockname()[0] for s in sockets} == {"127.0.0.1"}

        # a restarted worker (the nanny starts a new process) is guarded as well
        await client.restart()
        after = await client.run(about_this_process)
        assert not {i["pid"] for i in after.values()} & pids
        for i in after.values():
            assert i["pdeathsig"] == signal.SIGKILL and i["ppid"] == os.getpid()
        pids |= {i["pid"] for i in after.values()}
        await asyncio.sleep(1.5)  # still alive: the guard does not fire spuriously
        assert (await client.submit(lambda: 42, pure=False)) == 42
    finally:
        await cluster.close()
    assert wait_gone(pids) == set()
    assert cluster.client is None and cluster.describe()["running"] is False


def _scratch_of(dask_worker):
    return dask_worker.local_directory


async def test_two_embedded_clusters_side_by_side_with_private_scratch_and_an_optional_dashboard(
        monkeypatch, tmp_path):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    # a: the platform's scratch folder (the jobs service passes <data dir>/jobs/scratch);
    # b: none given, a private temporary folder
    a = JobCluster(n_workers=1, dashboard_address="127.0.0.1:0",
                   scratch_root=str(tmp_path / "jobs" / "scratch"))
    b = JobCluster(n_workers=1, dashboard_address="127.0.0.1:0")
    await asyncio.gather(a.start(), b.start())
    try:
        da, db = a.describe(), b.describe()
        assert da["address"] != db["address"]
        assert da["dashboard"] and db["dashboard"] and da["dashboard"] != db["dashboard"]
        assert da["dashboard"].startswith("http://127.0.0.1:")
        assert await a.client.submit(lambda: 1, pure=False) == 1
        assert await b.client.submit(lambda: 2, pure=False) == 2

        # never Dask's shared /tmp/dask-scratch-space, which any account can create first
        (in_a,) = (await a.client.run(_scratch_of)).values()
        (in_b,) = (await b.client.run(_scratch_of)).values()
        assert Path(in_a).is_relative_to(tmp_path / "jobs" / "scratch")
        assert Path(a.cluster.scheduler.local_directory).is_relative_to(tmp_path / "jobs" / "scratch")
        temporary = Path(in_b).parents[1]
        assert temporary.name.startswith("aidc-dask-") and temporary.parent == Path(tempfile.gettempdir())
        for folder in (tmp_path / "jobs" / "scratch", temporary):
            info = folder.stat()
            assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700, folder
    finally:
        await asyncio.gather(a.close(), b.close())
    assert not temporary.exists()  # removed with its cluster
    assert (tmp_path / "jobs" / "scratch").is_dir()  # the platform's stays


async def test_a_scratch_folder_of_another_account_is_refused(monkeypatch, tmp_path):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    planted = tmp_path / "scratch"
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)  # nobody's
    with pytest.raises(PlatformError, match="not a folder of this account"):
        await JobCluster(n_workers=1, scratch_root=str(planted)).start()
    planted.rmdir()
    planted.symlink_to(tmp_path)  # a link is not the folder either, even to one of ours
    with pytest.raises(PlatformError, match="not a folder of this account"):
        await JobCluster(n_workers=1, scratch_root=str(planted)).start()


async def test_a_scratch_folder_others_can_change_on_the_way_is_refused(monkeypatch, tmp_path):
    """The folder itself may be root's: a folder above it that others can write lets them
    rename it away and put a link there. Checked before the folder is made, so nothing is
    created through such a place either."""
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by every account, not sticky
    with pytest.raises(PlatformError, match=r"shared can be written by every account"):
        await JobCluster(n_workers=1, scratch_root=str(shared / "jobs" / "scratch")).start()
    assert list(shared.iterdir()) == []  # nothing made below it
    (shared / "dask").mkdir(mode=0o700)  # made by root beforehand: the place is still unsafe
    with pytest.raises(PlatformError, match=r"c\.JobCluster\.local_directory.*every account"):
        await JobCluster(n_workers=1, local_directory=str(shared / "dask")).start()
    group = tmp_path / "group"
    group.mkdir()
    os.chown(group, 0, 65534)
    group.chmod(0o770)  # another group's members may write
    with pytest.raises(PlatformError, match=r"group can be written by its group"):
        await JobCluster(n_workers=1, local_directory=str(group / "dask")).start()

    # accepted: a sticky folder on the way (as /tmp), a link nobody else can change
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert JobCluster(local_directory=str(sticky / "dask"))._scratch() == str(sticky / "dask")
    assert (sticky / "dask").stat().st_mode & 0o777 == 0o700
    (tmp_path / "link").symlink_to(sticky / "dask")
    assert JobCluster(local_directory=str(tmp_path / "link"))._scratch() == str(tmp_path / "link")
    # ... but not a link to a place others can change
    (tmp_path / "link-to-shared").symlink_to(shared / "dask")
    with pytest.raises(PlatformError, match=r"shared can be written by every account"):
        JobCluster(local_directory=str(tmp_path / "link-to-shared"))._scratch()


def test_a_job_writes_its_output_in_the_worker_scratch_only_where_others_cannot_change_it(
        tmp_path, caplog):
    """An external worker started without --local-directory keeps its scratch in
    /tmp/dask-scratch-space, which any account may have made first: the job's plaintext
    output then goes to a private folder in the system's temporary folder instead."""
    from aidc.jobs.execute import job_scratch

    own = tmp_path / "scratch" / "worker-1"
    own.mkdir(parents=True, mode=0o700)
    made = Path(job_scratch(str(own)))
    assert made.parent == own and made.name.startswith("aidc-job-")
    assert made.stat().st_mode & 0o777 == 0o700 and made.stat().st_uid == os.getuid()

    planted = tmp_path / "dask-scratch-space"  # as another account would plant it
    planted.mkdir(mode=0o755)
    os.chown(planted, 65534, 65534)
    (planted / "worker-2").mkdir()  # the worker's own folder inside, root's
    caplog.set_level(logging.WARNING, logger="distributed.worker")
    for _ in range(2):
        made = Path(job_scratch(str(planted / "worker-2")))
        assert made.parent == Path(tempfile.gettempdir()) and made.name.startswith("aidc-job-")
        assert made.stat().st_mode & 0o777 == 0o700
        made.rmdir()
    assert list((planted / "worker-2").iterdir()) == []  # nothing written where it steers
    warnings = [r.getMessage() for r in caplog.records if "aidc: jobs' working output" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per worker process and folder
    assert "belongs to another account (uid 65534)" in warnings[0]
    assert "--local-directory" in warnings[0]


async def test_worker_plugins_are_registered_on_every_worker(monkeypatch, tmp_path):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    from distributed import WorkerPlugin

    class Mark(WorkerPlugin):
        name = "aidc-test-mark"

        def setup(self, worker):
            worker.aidc_mark = "marked"

    cluster = JobCluster(n_workers=2, worker_plugins=[Mark])  # a class: instantiated
    client = await cluster.start()
    try:
        marks = await client.run(lambda dask_worker: dask_worker.aidc_mark)
        assert list(marks.values()) == ["marked", "marked"]
    finally:
        await cluster.close()


async def test_gpu_inventory_decides_local_cuda_and_falls_back_without_cuda(monkeypatch, caplog):
    """A real-NVML inventory asks for LocalCUDACluster; without CUDA here it falls back."""
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    from aidc.gpu.inventory import Inventory, simulated

    fake_real = Inventory(simulated(1).devices, simulated=False, source="nvml")
    cluster = JobCluster(n_workers=1, inventory=fake_real)
    with caplog.at_level(logging.WARNING):
        await cluster.start()
    try:
        assert cluster.describe()["kind"] == "local"
        assert "LocalCUDACluster failed to start" in caplog.text
    finally:
        await cluster.close()

    # a simulated inventory never tries CUDA; use_cuda=True without real GPUs is an error
    cluster = JobCluster(n_workers=1, use_cuda=True, inventory=simulated(2))
    with pytest.raises(PlatformError, match="no real GPUs"):
        await cluster.start()
    assert cluster.client is None


def test_importing_the_module_imports_no_cuda():
    # (cuda-bindings' .pth file imports the empty `cuda` namespace at interpreter start)
    code = textwrap.dedent("""
        import sys
        def cuda():
            names = ('dask_cuda', 'cuda', 'numba', 'rmm', 'cupy')
            return {m for m in sys.modules if m.split('.')[0] in names}
        before = cuda()
        import aidc.jobs.cluster
        import distributed
        print(sorted(cuda() - before))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_configuration_choices(monkeypatch):
    monkeypatch.setenv("AIDC_DASK_SCHEDULER", "tcp://10.0.0.5:8786")
    assert JobCluster().scheduler_address == "tcp://10.0.0.5:8786"
    assert JobCluster().kind == "external"
    # config wins over the environment
    c = Config()
    c.JobCluster.scheduler_address = "tcp://10.0.0.6:8786"
    assert JobCluster(config=c).scheduler_address == "tcp://10.0.0.6:8786"
    monkeypatch.delenv("AIDC_DASK_SCHEDULER")
    assert JobCluster().kind == "local"
    assert JobCluster(gateway_address="https://gw").kind == "gateway"
    assert JobCluster(cluster_class="dask_jobqueue.SLURMCluster").kind == "managed"
    with pytest.raises(PlatformError, match="not both"):
        JobCluster(scheduler_address="tcp://a:1", gateway_address="https://gw").kind
    assert JobCluster(n_workers=3).embedded_workers() == 3
    assert JobCluster().embedded_workers() >= 1
    # every configurable trait says what it does
    for name, trait in JobCluster.class_traits(config=True).items():
        assert trait.help and len(trait.help) > 20, name


# --- SIGKILL of the service --------------------------------------------------------------------

SERVICE_SCRIPT = """
import asyncio, json, os, re, sys
from aidc.jobs.cluster import JobCluster

def hog_the_gil():
    # a long C call that never releases the GIL: distributed's own watchdog thread in
    # the worker (exit when the parent's pipe closes) cannot run; PDEATHSIG still works
    re.match(r"(a+)+$", "a" * 64 + "b")

async def main():
    cluster = JobCluster(n_workers=2, scratch_root=sys.argv[1])  # as the jobs service does
    client = await cluster.start()
    pids = await client.run(os.getpid)
    hog = client.submit(hog_the_gil, pure=False)
    await asyncio.sleep(1)
    print(json.dumps(sorted(pids.values())), flush=True)
    await asyncio.sleep(3600)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_sigkill_of_the_service_leaves_no_worker_behind(tmp_path, monkeypatch):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    script = tmp_path / "service.py"
    script.write_text(SERVICE_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "scratch")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    everything: set[int] = set()
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        workers = set(json.loads(line))
        everything = descendants(proc.pid)
        assert len(workers) == 2 and workers <= everything
        assert all(alive(p) for p in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_gone(everything, timeout=10) == set()
    finally:
        if proc.poll() is None:
            everything |= descendants(proc.pid)
            proc.kill()
            proc.wait()
        for pid in everything:  # only if the test failed: do not leave them running
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- an external scheduler ---------------------------------------------------------------------


@pytest.fixture
def external_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes (one with 2 threads), real ones, on TLS."""
    scheduler_file = tmp_path / "scheduler.json"
    procs = []
    tls = write_tls_files(tmp_path)
    tls_args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]

    # their scratch as hub_config/dask/README.md says: never the shared /tmp/dask-scratch-space
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}

    def spawn(*args):
        p = subprocess.Popen([DASK, *args], stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / f"log{len(procs)}", "w"),
                             start_new_session=True, cwd=tmp_path, env=env)
        procs.append(p)
        return p

    spawn("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--protocol", "tls",
          "--scheduler-file", str(scheduler_file), *tls_args)
    deadline = time.monotonic() + 30
    while not scheduler_file.exists() or not scheduler_file.read_text().strip():
        assert time.monotonic() < deadline, (tmp_path / "log0").read_text()
        time.sleep(0.2)
    time.sleep(0.2)
    address = json.loads(scheduler_file.read_text())["address"]
    # worker "two" is misconfigured: 2 threads, and its scratch in a folder anyone can change
    shared = tmp_path / "shared-scratch"
    shared.mkdir()
    os.chown(shared, 65534, 65534)
    shared.chmod(0o777)
    for name, threads, scratch in (("one", "1", []), ("two", "2", ["--local-directory", str(shared)])):
        spawn("worker", address, "--nthreads", threads, "--no-dashboard", "--host", "127.0.0.1",
              "--name", name, *scratch, *tls_args)
    yield {"address": address, "scheduler_file": str(scheduler_file), "procs": procs, "tls": tls}
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


async def test_external_scheduler_is_used_and_left_running(external_cluster, caplog, monkeypatch):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    from distributed import Client

    address = external_cluster["address"]
    assert address.startswith("tls://")
    tls = external_cluster["tls"]
    settings = dict(tls_ca_file=tls["ca"], tls_client_cert=tls["cert"], tls_client_key=tls["key"])
    cluster = JobCluster(scheduler_address=address, **settings)
    with caplog.at_level(logging.WARNING):
        client = await cluster.start()
        await client.wait_for_workers(2, timeout=60)
        await cluster._warn_threads()
        await cluster._warn_scratch()
    try:
        assert "has 2 threads" in caplog.text  # the misconfigured worker is named
        scratch = [r.getMessage() for r in caplog.records if "keeps its scratch" in r.getMessage()]
        # (once more if the worker had joined when start() asked): worker two's only
        assert scratch and all("shared-scratch belongs to another account (uid 65534)" in m
                               and "--local-directory" in m for m in scratch), scratch
        info = await client.run(about_this_process)
        assert len(info) == 2 and os.getpid() not in {i["pid"] for i in info.values()}
        assert all(i["pdeathsig"] == 0 for i in info.values())  # not ours to guard
        assert (await client.submit(lambda x: x * 2, 21, pure=False)) == 42
        await asyncio.sleep(2.2)  # the client's cached scheduler info refreshes every 2 s
        described = cluster.describe()
        assert described["kind"] == "external" and described["address"] == address
        assert described["workers"] == 2 and described["threads"] == 3
    finally:
        await cluster.close()
    assert all(p.poll() is None for p in external_cluster["procs"])
    # the scheduler and its workers still answer
    async with Client(address, asynchronous=True, set_as_default=False,
                      security=cluster.security()) as other:
        assert (await other.submit(lambda: "still here", pure=False)) == "still here"
        assert len((await other.scheduler.identity())["workers"]) == 2

    # the same scheduler through its scheduler file
    cluster = JobCluster(scheduler_file=external_cluster["scheduler_file"], **settings)
    client = await cluster.start()
    try:
        assert cluster.describe()["address"] == address
    finally:
        await cluster.close()
    assert all(p.poll() is None for p in external_cluster["procs"])


async def test_plain_tcp_scheduler_is_refused_unless_an_admin_allows_it(monkeypatch, tmp_path):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    for settings in ({"scheduler_address": "tcp://127.0.0.1:1"},
                     {"scheduler_address": "127.0.0.1:1"}):  # no scheme: distributed's tcp
        cluster = JobCluster(**settings)
        with pytest.raises(PlatformError, match="without TLS.*allow_insecure_tcp"):
            await cluster.start()
        assert cluster.client is None
    # a scheduler file naming a tcp:// scheduler: refused before anything connects
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": "tcp://127.0.0.1:1"}))
    with pytest.raises(PlatformError, match="without TLS"):
        await JobCluster(scheduler_file=str(scheduler_file)).start()


async def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    cluster = JobCluster(scheduler_address="tcp://127.0.0.1:1", connect_timeout=3,
                         allow_insecure_tcp=True)
    with pytest.raises(PlatformError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        await cluster.start()
    assert cluster.client is None


# --- hub_config/dask examples --------------------------------------------------------------------


def test_external_example_config():
    cluster = JobCluster(config=load_example("external.py"))
    assert cluster.kind == "external"
    assert cluster.scheduler_address.startswith("tls://")
    assert cluster.tls_ca_file and cluster.tls_client_cert and cluster.tls_client_key
    assert not cluster.allow_insecure_tcp


def jobqueue_config() -> dict:
    loaded = yaml.safe_load((EXAMPLES / "jobqueue.yaml").read_text())
    return dask.config.merge(dask.config.config, loaded)


async def test_slurm_example_renders_a_batch_script_without_slurm(monkeypatch, tmp_path):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    from dask_jobqueue import SLURMCluster

    config = load_example("slurm.py")
    jc = JobCluster(config=config)
    assert jc.kind == "managed" and jc.cluster_class == "dask_jobqueue.SLURMCluster"
    assert jc.cluster_kwargs["security"] is True  # the example is TLS
    # the certificate's copy for the workers goes to the shared folder (here: a local one)
    jc.cluster_kwargs = {**jc.cluster_kwargs, "shared_temp_directory": str(tmp_path)}
    jc.scratch_root = str(tmp_path / "jobs" / "scratch")  # as the jobs service sets it
    with dask.config.set(jobqueue_config()):
        # rendering needs neither sbatch nor a running scheduler (its object, made here,
        # keeps a scratch folder: not the shared /tmp/dask-scratch-space)
        with dask.config.set({"temporary-directory": str(tmp_path / "render")}):
            script = SLURMCluster(asynchronous=True, **jc.cluster_kwargs).job_script()
        assert script.startswith("#!/usr/bin/env bash")
        for directive in ("#SBATCH -J aidc-dask-worker", "#SBATCH -p gpu", "#SBATCH -A aidc",
                          "#SBATCH -n 1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                          "#SBATCH -t 24:00:00", "#SBATCH --gres=gpu:1"):
            assert directive in script.splitlines(), (directive, script)
        assert "source /shared/aidc/worker-env.sh" in script
        worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
        assert worker.startswith("/opt/aidc/venv/bin/python -m distributed.cli.dask_worker")
        assert "--nthreads 1" in worker and "--nworkers" not in worker  # one process
        assert "--death-timeout 120" in worker and "--interface ib0" in worker

        # the service runs the scheduler itself (here on 127.0.0.1: no ib0 on this host);
        # adaptive scaling with nothing queued submits no Slurm job
        jc.cluster_kwargs = {**jc.cluster_kwargs, "scheduler_options": {
            "host": "127.0.0.1", "dashboard": False, "dashboard_address": "127.0.0.1:0"}}
        client = await jc.start()
        try:
            described = jc.describe()
            assert described["kind"] == "managed" and described["workers"] == 0
            # its scheduler runs in the service's process (as root): its scratch is the
            # platform's private folder, not Dask's shared default in /tmp
            assert Path(jc.cluster.scheduler.local_directory).is_relative_to(tmp_path / "jobs" / "scratch")
            assert described["address"].startswith("tls://127.0.0.1:")
            script = jc.cluster.job_script()
            assert "--tls-ca-file" in script and str(tmp_path) in script
            assert f"distributed.cli.dask_worker {described['address']}" in jc.cluster.job_script()
            assert client.status == "running"
        finally:
            await jc.close()
        assert jc.describe()["running"] is False


#: what a dask-gateway server configured as in README.md answers at /api/v1/options
GATEWAY_OPTIONS_SPEC = [
    {"field": "worker_cores", "label": "Worker cores", "default": 1,
     "spec": {"type": "int", "min": 1, "max": 16}},
    {"field": "worker_memory", "label": "Worker memory (GiB)", "default": 4.0,
     "spec": {"type": "float", "min": 1.0, "max": 128.0}},
    {"field": "image", "label": "Image", "default": "registry.example.org/aidc/worker:latest",
     "spec": {"type": "string"}},
]


async def test_gateway_example_is_accepted_by_the_gateway_client(monkeypatch):
    monkeypatch.delenv("AIDC_DASK_SCHEDULER", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-token")
    from dask_gateway.auth import JupyterHubAuth
    from dask_gateway.options import Options

    jc = JobCluster(config=load_example("gateway.py"))
    assert jc.kind == "gateway" and jc.gateway_adaptive and jc.gateway_workers == 4
    gateway = jc.make_gateway()
    try:
        assert isinstance(gateway.auth, JupyterHubAuth)
        assert gateway.auth.api_token == "service-token"
        assert gateway.address == jc.gateway_address
        assert gateway.proxy_address == "gateway://dask-gateway.example.org:8786"
    finally:
        await gateway.close()
    options = Options._from_spec(GATEWAY_OPTIONS_SPEC)
    options.update(jc.gateway_cluster_options)  # validated field by field
    assert dict(options) == jc.gateway_cluster_options
    with pytest.raises(TypeError):
        options.update({"worker_cores": "four"})

    # a gateway that does not answer: a clear error, nothing left open
    jc = JobCluster(gateway_address="http://127.0.0.1:1", connect_timeout=3)
    with pytest.raises(PlatformError, match="cannot reach the dask-gateway"):
        await jc.start()
    assert jc.client is None and jc.cluster is None


def test_kubernetes_example_parses_and_points_workers_at_the_scheduler():
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "kubernetes.yaml").read_text()) if d]
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert kinds == [("Service", "aidc-dask-scheduler"), ("Deployment", "aidc-dask-scheduler"),
                     ("Deployment", "aidc-dask-gpu-worker")]
    service, scheduler, worker = docs
    port = service["spec"]["ports"][0]["port"]
    for d in (scheduler, worker):
        assert d["apiVersion"] == "apps/v1"
        assert d["spec"]["selector"]["matchLabels"] == d["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == scheduler["spec"]["template"]["metadata"]["labels"]
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["dask", "worker", f"tls://{service['metadata']['name']}:{port}"]
    assert command[command.index("--nthreads") + 1] == "1"
    # both sides speak mutual TLS with the certificates of one Secret
    scheduler_command = scheduler["spec"]["template"]["spec"]["containers"][0]["command"]
    assert scheduler_command[scheduler_command.index("--protocol") + 1] == "tls"
    for d, cmd in ((scheduler, scheduler_command), (worker, command)):
        pod = d["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"]}
        assert secrets["dask-tls"] == "aidc-dask-tls"
        for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
            assert cmd[cmd.index(flag) + 1].startswith(mounts["dask-tls"] + "/")
    limits = worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_examples_and_readme_name_only_real_settings():
    traits = set(JobCluster.class_traits(config=True))
    text = "\n".join(p.read_text() for p in EXAMPLES.iterdir() if p.suffix in (".py", ".md"))
    named = set(re.findall(r"JobCluster\.(\w+)", text))
    assert named and named <= traits, named - traits
    readme = (EXAMPLES / "README.md").read_text()
    for needle in ("AIDC_DASK_SCHEDULER", "config.d", "--nthreads 1", "dask cuda worker"):
        assert needle in readme


# --- the jobs REST API's OpenAPI document ----------------------------------------------------


def test_openapi_document_is_valid():
    from jsonschema import Draft202012Validator

    doc = yaml.safe_load(OPENAPI.read_text())
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["servers"][0]["url"].endswith("/services/jobs/api")
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}

    def refs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    def resolve(ref):
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not exist"
            node = node[part]
        return node

    for ref in set(refs(doc)):
        resolve(ref)
    operation_ids = []
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        params_in_path = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if method not in methods:
                continue
            assert op.get("responses"), f"{method} {path} has no responses"
            for status in op["responses"]:
                assert re.fullmatch(r"[1-5]\d\d|default", str(status)), (path, status)
            operation_ids.append(op["operationId"])
            declared = {
                (resolve(p["$ref"]) if "$ref" in p else p)["name"]
                for p in [*item.get("parameters", []), *op.get("parameters", [])]
                if (resolve(p["$ref"]) if "$ref" in p else p)["in"] == "path"
            }
            assert declared == params_in_path, (method, path)
    assert len(operation_ids) == len(set(operation_ids))
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    for scheme in doc["security"]:
        for name in scheme:
            assert name in doc["components"]["securitySchemes"]

    # the contract's essentials
    paths = doc["paths"]
    expected = {
        ("/jobs", "post"), ("/jobs", "get"), ("/jobs/{id}", "get"), ("/jobs/{id}/cancel", "post"),
        ("/jobs/{id}/events", "get"), ("/jobs/{id}/logs", "get"), ("/jobs/{id}/output", "get"),
        ("/jobs/{id}/input", "get"), ("/parameters", "get"), ("/summary", "get"),
        ("/sweeps", "post"), ("/sweeps", "get"), ("/sweeps/{id}", "get"),
        ("/schedules", "post"), ("/schedules", "get"), ("/schedules/{id}", "get"),
        ("/schedules/{id}", "delete"), ("/schedules/{id}/pause", "post"),
        ("/schedules/{id}/resume", "post"), ("/cluster", "get"),
    }
    assert expected <= {(p, m) for p, item in paths.items() for m in item if m in methods}
    assert "201" in paths["/jobs"]["post"]["responses"]
    assert "202" in paths["/jobs/{id}/cancel"]["post"]["responses"]
    assert "text/event-stream" in paths["/jobs/{id}/events"]["get"]["responses"]["200"]["content"]
    output = paths["/jobs/{id}/output"]["get"]["responses"]["200"]["content"]
    assert "application/x-ipynb+json" in output
    job = doc["components"]["schemas"]["Job"]
    assert job["properties"]["status"] == {"$ref": "#/components/schemas/Status"}
    assert set(doc["components"]["schemas"]["Status"]["enum"]) == {
        "queued", "running", "completed", "failed", "cancelled"}
    for field in ("id", "owner", "path", "parameters", "gpus", "priority", "timeout",
                  "cell_timeout", "retries", "attempt", "status", "error", "created", "started",
                  "finished", "units", "visible_devices", "group", "schedule", "progress",
                  "metrics", "series", "queue_position"):
        assert field in job["properties"], field
    event = doc["components"]["schemas"]["Event"]
    assert set(event["properties"]["type"]["enum"]) == {
        "status", "notice", "cell_start", "cell_end", "stream", "metric", "error"}
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"status", "message"}
    # examples in the document are valid instances of their schemas
    for name, schema in doc["components"]["schemas"].items():
        validator = Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                          "components": doc["components"]})
        for example in schema.get("examples", []):
            errors = list(validator.iter_errors(example))
            assert not errors, (name, errors[0].message)
