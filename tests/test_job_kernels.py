"""The jobs' kernel launcher (aidc.jobs.kernels): fresh, fast kernels from a fork server.

Real kernels throughout, run through nbclient and papermill as the jobs service does.
Tests that switch identity need root (they create Unix accounts ``aidc-kt-<random>``).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook

from aidc.errors import PlatformError, UsageError
from aidc.jobs.kernels import KernelLauncher, KernelLauncherPlugin, RunAs, kill_kernel
from aidc.jobs.kernels import sweep_conn_dirs

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching identity needs root")

BASE_ENV = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}


def notebook(*cells: str) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    nb.cells.extend(new_code_cell(src) for src in cells)
    return nb


def run(km, *cells: str, **kwargs) -> nbformat.NotebookNode:
    """Execute ``cells`` in the kernel of ``km`` with nbclient, shutting the kernel down after."""
    nb = notebook(*cells)
    NotebookClient(nb, km=km, timeout=60, **kwargs).execute(cleanup_kc=True)
    return nb


def probe(km, code: str) -> dict:
    """Run ``code`` (which sets ``result``) and return ``result`` (through stdout, as JSON)."""
    nb = run(km, code, "import json; print(json.dumps(result))")
    return json.loads(stdout(nb.cells[-1]))


def stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie (pid 1 of a container may not reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(*pids: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def conn_dir(km) -> str:
    """The kernel's own folder, ``<tmp>/aidc-kernel-*``, holding its connection file."""
    path = os.path.dirname(km.connection_file)
    assert os.path.basename(path).startswith("aidc-kernel-")
    assert os.path.dirname(path) == tempfile.gettempdir()
    return path


def wait_removed(*paths: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.lexists(p) for p in paths):
            return True
        time.sleep(0.05)
    return False


def wait_for_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear")


def zygote_children(launcher: KernelLauncher) -> list[psutil.Process]:
    return psutil.Process(launcher.zygote_pid).children()


@pytest.fixture(scope="module")
def launcher():
    os.environ["AIDC_KT_WORKER_SECRET"] = "worker-secret"  # what a job must never see
    launcher = KernelLauncher(pool_size=2)
    launcher.start()
    yield launcher
    zygote = launcher.zygote_pid
    launcher.close()
    del os.environ["AIDC_KT_WORKER_SECRET"]
    assert wait_gone(zygote)


# -- environment, directory, freshness ----------------------------------------------------

ENV_PROBE = """
import os, subprocess, time
result = {
    "environ": dict(os.environ),
    "tzname": time.tzname,
    "child": subprocess.run(["env", "-0"], capture_output=True, text=True).stdout,
    "proc": open("/proc/self/environ").read(),
}
"""


def test_environment_is_exactly_the_jobs(launcher, tmp_path):
    """Exactly ``env``, plus what ipykernel itself sets (TERM, PAGER, MPLBACKEND...)."""
    env = {**BASE_ENV, "CUDA_VISIBLE_DEVICES": "1,3", "AIDC_JOB_ID": "j-1", "TZ": "Asia/Tokyo",
           "ODD": "spaces and = signs\nand a newline"}
    stock = AsyncKernelManager(kernel_name="python3")
    run_sync(stock.start_kernel)(env=env)
    stock_result = probe(stock, ENV_PROBE)
    expected = stock_result["environ"]
    expected.pop("JPY_PARENT_PID")  # jupyter_client's launcher adds it; ipykernel needs not
    km = launcher.kernel_manager(env=env, cwd=str(tmp_path))
    result = probe(km, ENV_PROBE)
    assert result["environ"] == expected
    assert result["tzname"] == stock_result["tzname"] == ["JST", "JST"]
    assert result["environ"]["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert "AIDC_KT_WORKER_SECRET" in os.environ
    assert "AIDC_KT_WORKER_SECRET" not in result["environ"]
    # subprocesses get it too (the C-level environment, not just os.environ)
    child = dict(v.split("=", 1) for v in result["child"].split("\0")[:-1])
    assert child == expected
    # the fork server's own start-up environment never had the worker's secrets either
    assert "worker-secret" not in result["proc"]


def test_working_directory_and_python_path(launcher, tmp_path):
    """Modules import from the working directory and from the job's PYTHONPATH, as usual."""
    (tmp_path / "helper_mod_kt.py").write_text("VALUE = 42\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "lib_mod_kt.py").write_text("VALUE = 7\n")
    km = launcher.kernel_manager(env={**BASE_ENV, "PYTHONPATH": str(lib)}, cwd=str(tmp_path))
    result = probe(km, textwrap.dedent("""
        import os, sys, helper_mod_kt, lib_mod_kt
        result = {"cwd": os.getcwd(), "values": [helper_mod_kt.VALUE, lib_mod_kt.VALUE],
                  "argv0": os.path.basename(sys.argv[0])}
    """))
    assert result == {"cwd": str(tmp_path), "values": [42, 7], "argv0": "ipykernel_launcher.py"}


def test_every_kernel_is_a_new_process(launcher, tmp_path):
    first = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    a = probe(first, "import os, wave\nleaked = 1\nresult = {'pid': os.getpid(), "
                     "'ppid': os.getppid()}")
    second = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    b = probe(second, textwrap.dedent("""
        import os, sys
        result = {"pid": os.getpid(), "wave": "wave" in sys.modules,
                  "leaked": "leaked" in globals(), "pgid": os.getpgid(0), "sid": os.getsid(0)}
    """))
    assert a["pid"] != b["pid"]
    assert a["ppid"] == launcher.zygote_pid
    assert b == {"pid": b["pid"], "wave": False, "leaked": False, "pgid": b["pid"], "sid": b["pid"]}


def test_the_kernel_holds_nothing_of_the_fork_server(launcher, tmp_path):
    """No socket to the (root) fork server is left open in a kernel; the zygote has no threads."""
    zygote = launcher.zygote_pid
    ctl = os.readlink(f"/proc/{zygote}/fd/{launcher._zygote.ctl_fd}")
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    result = probe(km, textwrap.dedent("""
        import os
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        result = {"fds": fds}
    """))
    assert ctl.startswith("socket:")
    assert ctl not in result["fds"].values()
    assert psutil.Process(zygote).num_threads() == 1


def test_bad_arguments_are_usage_errors(launcher):
    with pytest.raises(UsageError, match="absolute"):
        launcher.kernel_manager(env=BASE_ENV, cwd="relative/dir")
    with pytest.raises(UsageError, match="environment"):
        launcher.kernel_manager(env={"A": 1}, cwd="/tmp")
    with pytest.raises(UsageError, match="no Unix account"):
        RunAs.of("aidc-kt-no-such-user")


def test_a_missing_working_directory_is_a_usage_error(launcher, tmp_path):
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="cannot run the job in .*missing.*No such file"):
        run_sync(km.start_kernel)()
    assert not km.has_kernel


# -- running as the job's owner -------------------------------------------------------------

@pytest.fixture(scope="module")
def accounts():
    """Two Unix accounts: the job's owner and another user (with a private home)."""
    from aidc.hub import system_users
    from aidc.platform import runtime_paths

    names = [f"aidc-kt-{secrets.token_hex(3)}" for _ in range(2)]
    # like the platform's own accounts: in aidc-users, which may traverse to the
    # environment even when the checkout sits in a closed folder (as in CI's clone)
    system_users.ensure_group()
    system_users.grant_runtime_access(runtime_paths())
    for name in names:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--groups",
                        f"users,{system_users.USERS_GROUP}", name], check=True)
    try:
        for name in names:
            os.chmod(pwd.getpwnam(name).pw_dir, 0o700)
        yield [RunAs.of(name) for name in names]
    finally:
        for name in names:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", "-r", name], capture_output=True)


@root_only
def test_runs_as_the_owner(launcher, accounts):
    owner, other = accounts
    env = {**BASE_ENV, "HOME": owner.home, "USER": owner.name, "LOGNAME": owner.name}
    km = launcher.kernel_manager(env=env, cwd=owner.home, run_as=owner)
    result = probe(km, textwrap.dedent(f"""
        import os, pathlib
        pathlib.Path("written.txt").write_text("x")
        try:
            os.listdir({other.home!r})
            other = "readable"
        except PermissionError:
            other = "PermissionError"
        result = {{"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                   "egid": os.getegid(), "groups": sorted(os.getgroups()),
                   "home": os.environ["HOME"],
                   "expanded": os.path.expanduser("~"), "other": other}}
    """))
    assert len(owner.groups) == 3  # its own group, "users" and "aidc-users"
    assert result == {"uid": owner.uid, "euid": owner.uid, "gid": owner.gid, "egid": owner.gid,
                      "groups": sorted(owner.groups), "home": owner.home, "expanded": owner.home,
                      "other": "PermissionError"}
    written = Path(owner.home, "written.txt").stat()
    assert (written.st_uid, written.st_gid) == (owner.uid, owner.gid)


@root_only
def test_the_owner_cannot_enter_someone_elses_directory(launcher, accounts):
    owner, other = accounts
    km = launcher.kernel_manager(env=BASE_ENV, cwd=other.home, run_as=owner)
    with pytest.raises(UsageError, match=f"cannot run the job in {other.home} as {owner.name}: "
                                         "Permission denied"):
        run_sync(km.start_kernel)()


@root_only
def test_papermill_as_the_owner(launcher, accounts, tmp_path):
    """papermill hands ``km`` through its engine to nbclient; parameters and output work."""
    import papermill

    owner, _ = accounts
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nb = notebook("alpha = 1",
                  "import os\nprint(alpha * 2, os.getuid(), os.environ['AIDC_JOB_ID'])")
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, src)
    km = launcher.kernel_manager(env={**BASE_ENV, "HOME": owner.home, "AIDC_JOB_ID": "j-7"},
                                 cwd=owner.home, run_as=owner)
    papermill.execute_notebook(str(src), str(out), parameters={"alpha": 21}, kernel_name="python3",
                               km=km, progress_bar=False)
    pid = km.provisioner.pid
    assert stdout(nbformat.read(out, as_version=4).cells[-1]) == f"42 {owner.uid} j-7\n"
    # papermill leaves a kernel manager it was given running: stop it as the caller would
    run_sync(km.shutdown_kernel)()
    assert not run_sync(km.is_alive)()
    assert wait_gone(pid)


# -- lifetime -------------------------------------------------------------------------------

WORKER_SCRIPT = """
import asyncio, os, sys, threading, time
from aidc.jobs.kernels import KernelLauncher

launcher = KernelLauncher(pool_size=1)
# start the fork server from a thread that then ends: the zygote must outlive the thread
t = threading.Thread(target=launcher.start)
t.start(); t.join()
km = launcher.kernel_manager(env={"PATH": "/usr/bin:/bin"}, cwd="/tmp")
asyncio.run(km.start_kernel())
time.sleep(1)
print(launcher.zygote_pid, km.provisioner.pid, flush=True)
time.sleep(1000)
"""


def test_kernels_and_zygote_die_with_the_worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        zygote, kernel = map(int, worker.stdout.readline().split())
        assert not gone(zygote) and not gone(kernel)
        assert psutil.Process(kernel).ppid() == zygote
    finally:
        worker.kill()
        worker.wait()
    assert wait_gone(zygote, kernel, timeout=5)


def test_kernels_die_with_the_zygote(tmp_path):
    launcher = KernelLauncher(pool_size=0)  # no pool: forked on request
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    run_sync(km.start_kernel)()
    kernel, zygote = km.provisioner.pid, launcher.zygote_pid
    os.kill(zygote, signal.SIGKILL)
    assert wait_gone(kernel, timeout=5)
    # a kernel's main thread can show as a zombie while its other threads still exit; its
    # pidfd, which is_alive reads, turns readable once the last one has
    deadline = time.monotonic() + 5
    while run_sync(km.is_alive)() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_sync(km.is_alive)() is False
    # the launcher notices and starts a new zygote for the next kernel
    km2 = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    assert probe(km2, "result = 1") == 1
    assert launcher.zygote_pid != zygote
    launcher.close()


# -- nothing of a kernel outlives it: its folder, however it ends ----------------------------
#
# Each test kills a kernel at one stage and then leaves the worker side alone (no
# shutdown_kernel, whose clean-up would remove the folder anyway): whoever survives must
# remove the kernel's folder by itself.

def test_no_folder_left_when_killed_before_it_got_its_job(launcher, tmp_path, monkeypatch):
    """Killed right after the fork server handed it over, before it read its job."""
    real = launcher._zygote_for_spawn

    class KillingAtSpawn:
        def __init__(self, zygote):
            self.zygote = zygote

        def __getattr__(self, name):
            return getattr(self.zygote, name)

        def request(self, req, fds=0):
            reply = self.zygote.request(req, fds)
            if req["op"] == "spawn":
                self.zygote.request({"op": "signal", "pid": reply["pid"], "sig": signal.SIGKILL})
            return reply

    monkeypatch.setattr(launcher, "_zygote_for_spawn", lambda: KillingAtSpawn(real()))
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    with pytest.raises(PlatformError, match="exited while starting"):
        run_sync(km.start_kernel)()
    assert wait_removed(conn_dir(km))


def test_no_folder_left_when_killed_before_binding_its_sockets(launcher, tmp_path):
    """Killed in ``IPKernelApp.initialize``, loading its configuration (before its sockets)."""
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    marker = tmp_path / "initializing"
    (profile / "ipython_kernel_config.py").write_text(
        f"import os, pathlib, time\npathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)\n")
    km = launcher.kernel_manager(env={**BASE_ENV, "IPYTHONDIR": str(tmp_path / "ipython")},
                                 cwd=str(tmp_path))

    seen = []

    def killer():
        pid = int(wait_for_file(marker))
        seen.append(psutil.Process(pid).net_connections())  # none yet: no socket bound
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.raises(PlatformError, match="exited while starting"):
        run_sync(km.start_kernel)()
    thread.join()
    assert seen == [[]]
    assert wait_removed(conn_dir(km))


@pytest.mark.parametrize("how", ["SIGKILL", "kill_kernel"])
def test_no_folder_left_when_killed_while_running_a_cell(launcher, tmp_path, how):
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    run_sync(km.start_kernel)()
    kc = km.client()
    kc.start_channels()
    try:
        run_sync(kc.wait_for_ready)(timeout=30)
        busy = tmp_path / "busy"
        kc.execute(f"import pathlib, time; pathlib.Path({str(busy)!r}).write_text('1'); "
                   "time.sleep(1000)")
        wait_for_file(busy)
        pid, path = km.provisioner.pid, conn_dir(km)
        assert os.path.isdir(path)
        if how == "SIGKILL":  # as the OOM killer would
            os.kill(pid, signal.SIGKILL)
        else:
            kill_kernel(km)
        assert wait_gone(pid)
        assert wait_removed(path)
    finally:
        kc.stop_channels()


def test_no_folder_left_when_killed_during_its_clean_up(launcher, tmp_path):
    """Killed while it shuts down: after the shutdown request, in an atexit handler."""
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    run_sync(km.start_kernel)()
    kc = km.client()
    kc.start_channels()
    try:
        run_sync(kc.wait_for_ready)(timeout=30)
        marker = tmp_path / "exiting"
        reply = run_sync(kc.execute_interactive)(textwrap.dedent(f"""
            import atexit, pathlib, time
            def slow_exit():
                pathlib.Path({str(marker)!r}).write_text("1")
                time.sleep(1000)
            atexit.register(slow_exit)
        """), timeout=30)
        assert reply["content"]["status"] == "ok"
        pid, path = km.provisioner.pid, conn_dir(km)
        kc.shutdown()  # what shutdown_kernel() asks first
        wait_for_file(marker)
        assert not gone(pid) and os.path.isdir(path)
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        assert wait_removed(path)
    finally:
        kc.stop_channels()


def test_no_folder_left_when_the_zygote_is_killed(tmp_path):
    """The fork server SIGKILLed with kernels alive (one idle, one running a cell): the worker
    removes their folders, without being asked."""
    launcher = KernelLauncher(pool_size=1)
    try:
        kms = [launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path)) for _ in range(2)]
        for km in kms:
            run_sync(km.start_kernel)()
        kc = kms[1].client()
        kc.start_channels()
        run_sync(kc.wait_for_ready)(timeout=30)
        kc.execute("while True: pass")
        kc.stop_channels()
        paths = [conn_dir(km) for km in kms]
        pids = [km.provisioner.pid for km in kms]
        assert all(os.path.isdir(p) for p in paths)
        os.kill(launcher.zygote_pid, signal.SIGKILL)
        assert wait_gone(*pids, timeout=5)
        assert wait_removed(*paths)
    finally:
        launcher.close()


WORKER_KERNELS = """
import asyncio, os, sys, time
from aidc.jobs.kernels import KernelLauncher

launcher = KernelLauncher(pool_size=1)
launcher.start()
kms = [launcher.kernel_manager(env={"PATH": "/usr/bin:/bin"}, cwd="/tmp") for _ in range(2)]
for km in kms:
    asyncio.run(km.start_kernel())
kc = kms[1].client()
kc.start_channels()
kc.wait_for_ready(timeout=30)
kc.execute("while True: pass")
time.sleep(0.3)
print(launcher.zygote_pid, *[km.provisioner.pid for km in kms],
      *[os.path.dirname(km.connection_file) for km in kms], flush=True)
time.sleep(1000)
"""


@pytest.mark.parametrize("what", ["worker", "worker and zygote at once"])
def test_no_folder_left_when_the_worker_is_killed(tmp_path, what):
    """The worker SIGKILLed: its zygote (told by its parent-death signal) stops its kernels and
    removes their folders. Both killed at once (their process group): nobody is left, and the
    next launcher started on the machine removes them."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_KERNELS)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        zygote, *rest = worker.stdout.readline().split()
        pids, paths = [int(p) for p in rest[:2]], rest[2:]
        assert all(os.path.isdir(p) for p in paths)
    finally:
        if what == "worker":
            worker.kill()
        else:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert wait_gone(int(zygote), *pids, timeout=5)
    if what != "worker":
        assert all(os.path.isdir(p) for p in paths)  # nobody was left to remove them
        launcher = KernelLauncher(pool_size=0)
        launcher.start()
        launcher.close()
    assert wait_removed(*paths)


def test_the_sweep_removes_only_folders_of_gone_processes(tmp_path):
    ns = os.stat("/proc/self/ns/pid").st_ino
    with open(f"/proc/{os.getpid()}/stat") as f:
        ticks = f.read().rsplit(")", 1)[1].split()[19]  # this process's start time
    live = tmp_path / f"aidc-kernel-{ns}.{os.getpid()}.{ticks}-a"
    reused = tmp_path / f"aidc-kernel-{ns}.{os.getpid()}.1-b"  # its pid, another start time
    dead = tmp_path / f"aidc-kernel-{ns}.999999999.1-c"
    other_ns = tmp_path / "aidc-kernel-1.999999999.1-d"
    unnamed = tmp_path / "aidc-kernel-abcdefgh"
    for path in (live, reused, dead, other_ns, unnamed, tmp_path / "target"):
        path.mkdir()
    (dead / "kernel-1.json").write_text("{}")
    link = tmp_path / f"aidc-kernel-{ns}.999999999.1-link"
    link.symlink_to(tmp_path / "target")
    assert sorted(sweep_conn_dirs(str(tmp_path))) == sorted([str(reused), str(dead)])
    assert not reused.exists() and not dead.exists()
    assert live.is_dir() and other_ns.is_dir() and unnamed.is_dir()
    assert link.is_symlink() and (tmp_path / "target").is_dir()


SPAWNS = """
import os, subprocess, pathlib
group = subprocess.Popen(["sleep", "1000"])
escaped = subprocess.Popen(["sleep", "1001"], start_new_session=True)
pathlib.Path("pids").write_text(f"{os.getpid()} {group.pid} {escaped.pid}")
"""


@pytest.mark.parametrize("busy", ["import time; time.sleep(1000)", "while True: pass"])
def test_kill_kernel_stops_a_running_cell_and_its_processes(launcher, tmp_path, busy):
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    pids_file = tmp_path / "pids"

    def killer():
        deadline = time.monotonic() + 30
        while not pids_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # into the busy cell
        kill_kernel(km)

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(DeadKernelError):
        run(km, SPAWNS, busy)
    assert time.monotonic() - t0 < 20
    kernel, group, escaped = map(int, pids_file.read_text().split())
    assert wait_gone(kernel, group, escaped, timeout=5)
    kill_kernel(km)  # again: harmless


def test_a_killed_manager_starts_no_kernel(launcher, tmp_path):
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    kill_kernel(km)  # a job cancelled before its kernel started
    with pytest.raises(PlatformError, match="stopped before it started"):
        run_sync(km.start_kernel)()


def test_shutdown_leaves_nothing_behind(launcher, tmp_path):
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    nb = run(km, SPAWNS, "print('done')")
    assert stdout(nb.cells[-1]) == "done\n"
    kernel, group, escaped = map(int, (tmp_path / "pids").read_text().split())
    assert not run_sync(km.is_alive)()
    assert km.provisioner is None or km.provisioner.process is None
    assert wait_gone(kernel, group, escaped, timeout=5)
    # reaped by the zygote (not even a zombie), which keeps only its waiting pool
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(
            c.status() != psutil.STATUS_ZOMBIE for c in zygote_children(launcher)):
        time.sleep(0.05)
    children = zygote_children(launcher)
    assert kernel not in [c.pid for c in children]
    assert all(c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert len(children) == launcher.pool_size
    assert not Path(km.connection_file).parent.exists()


async def test_interrupt_and_restart_work_as_usual(launcher, tmp_path):
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        first = km.provisioner.pid
        msg_id = kc.execute("import time; time.sleep(100)")
        await asyncio.sleep(0.5)
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        await km.restart_kernel()
        assert km.provisioner.pid != first
        assert wait_gone(first)
        await kc.wait_for_ready(timeout=30)
        reply = await kc.execute_interactive("x = 1", timeout=10)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()


# -- errors and output, compared with a stock kernel -------------------------------------------

def outcome(km, *cells: str) -> dict:
    nb = notebook(*cells)
    client = NotebookClient(nb, km=km, timeout=60, allow_errors=True)
    try:
        client.execute(cleanup_kc=True)
        error = None
    except DeadKernelError:
        error = "DeadKernelError"
        run_sync(km.shutdown_kernel)(now=True)
    outputs = [[{k: o.get(k) for k in ("output_type", "name", "text", "ename")} for o in c.outputs]
               for c in nb.cells]
    return {"error": error, "outputs": outputs}


@pytest.mark.parametrize("cells", [
    ("print('hello')", "import sys; print('err', file=sys.stderr); 1 + 1"),
    ("raise ValueError('bad')", "print('after')"),
    ("import sys; sys.exit(3)", "print('still alive')"),
    ("import os; os.system('echo from a subprocess');",),
    ("import os; os._exit(1)", "print('never')"),
])
def test_errors_and_output_as_with_a_stock_kernel(launcher, tmp_path, cells):
    stock_km = AsyncKernelManager(kernel_name="python3")
    # the same environment (not pytest's: ipykernel looks at PYTEST_CURRENT_TEST)
    run_sync(stock_km.start_kernel)(env=BASE_ENV)
    stock = outcome(stock_km, *cells)
    ours = outcome(launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path)), *cells)
    assert ours == stock


# -- deep recursion: CPython's frame stack below a cell, as in a stock kernel ----------------

FRAME_PROBE = """
import inspect, sys

def stack():
    # the frames below this cell that take room on CPython's frame stack, bottom first, with
    # the words each takes (less the fixed part of every frame); generators and coroutines
    # keep their frames in themselves
    own = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
    frames, f = [], sys._getframe(1)
    while f is not None:
        code = f.f_code
        if not code.co_flags & own:
            words = (len(set(code.co_varnames) | set(code.co_cellvars)) + len(code.co_freevars)
                     + code.co_stacksize)
            frames.append([code.co_name, words])
        f = f.f_back
    return frames[::-1]

result = stack()
"""

cpython_311 = pytest.mark.skipif(sys.implementation.name != "cpython" or sys.version_info < (3, 11),
                                 reason="CPython's chunked frame stack came with 3.11")


@cpython_311
def test_cells_run_where_a_stock_kernels_do(launcher, tmp_path):
    """Below a cell lie as many words of CPython's frame stack as in a stock kernel.

    CPython keeps frames in 16 KiB chunks and allocates and frees one (mmap, munmap) each
    time a recursion crosses a chunk's end; where the ends lie depends on the frames below.
    Kernels forked deep in the fork server's loop had different ends (deep recursions ran
    many times slower at some depths than in a stock kernel, faster at others; the first
    kernels of a server differed from later ones). Now: the same frames from
    ``IPKernelApp.start`` up, and below it four frames of the same total size.
    """
    stock_km = AsyncKernelManager(kernel_name="python3")
    run_sync(stock_km.start_kernel)(env=BASE_ENV)
    stock = probe(stock_km, FRAME_PROBE)
    assert [name for name, _ in stock[:5]] == [
        "_run_module_as_main", "_run_code", "<module>", "launch_instance", "start"]
    for _ in range(3):  # from the pool (forked at start-up), then forked on request
        ours = probe(launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path)), FRAME_PROBE)
        assert [name for name, _ in ours[:5]] == [
            "<module>", "_bottom_1", "_bottom_2", "_bottom_3", "start"]
        assert sum(w for _, w in ours[:4]) == sum(w for _, w in stock[:4])
        assert ours[4:] == stock[4:]


@cpython_311
def test_frame_words_are_what_cpython_allocates():
    """The size model behind the above (``zygote._frame_words``) against ``sys.getsizeof``."""
    import importlib.util

    from aidc.jobs.kernels import ZYGOTE

    spec = importlib.util.spec_from_file_location("aidc_test_zygote", ZYGOTE)
    zygote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zygote)

    def here():
        frame = sys._getframe(1)
        return sys.getsizeof(frame), frame.f_code

    def plain():
        return here()

    def many(a, b=1, *args, c, **kwargs):
        x, y = [a, b], {c: args}
        return here()

    def cells(a, b):  # a: an argument that is a cell; b: a cell; inner: a free variable
        def inner():
            return a + b, here()
        return here(), inner()[1]

    sizes = [plain(), many(1, c=2), *cells(1, 2)]
    fixed = {size - 8 * zygote._frame_words(code) for size, code in sizes}
    assert len(fixed) == 1


def test_a_raising_cell_is_a_cell_execution_error(launcher, tmp_path):
    km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
    with pytest.raises(CellExecutionError) as raised:
        run(km, "print('before')", "raise ValueError('bad')")
    assert (raised.value.ename, raised.value.evalue) == ("ValueError", "bad")
    assert not run_sync(km.is_alive)()


# -- Dask -----------------------------------------------------------------------------------

def _job_in_worker(cwd: str) -> dict:
    from aidc.jobs.kernels import get_launcher

    launcher = get_launcher()
    km = launcher.kernel_manager(env=BASE_ENV, cwd=cwd)
    result = probe(km, "import os\nresult = {'pid': os.getpid(), 'ppid': os.getppid()}")
    return {**result, "zygote": launcher.zygote_pid}


def test_worker_plugin(tmp_path):
    from distributed import Client, LocalCluster

    import dask

    with dask.config.set({"temporary-directory": str(tmp_path)}), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                         worker_dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(KernelLauncherPlugin())
        results = client.gather([client.submit(_job_in_worker, str(tmp_path), pure=False)
                                 for _ in range(3)])
        zygotes = {r["zygote"] for r in results}
        assert len(zygotes) == 1 and all(r["ppid"] == r["zygote"] for r in results)
        assert len({r["pid"] for r in results}) == 3
        client.unregister_worker_plugin(KernelLauncherPlugin.name)
        assert wait_gone(*zygotes, timeout=10)


# -- latency ------------------------------------------------------------------------------------

def test_start_latency(launcher, tmp_path, capsys):
    """Print (not assert) how long until a kernel answers kernel_info: stock vs. zygote."""

    async def ready(km) -> float:
        t0 = time.monotonic()
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        await kc.kernel_info(reply=True, timeout=60)
        elapsed = time.monotonic() - t0
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        return elapsed

    times: dict[str, list[float]] = {"stock": [], "zygote": []}
    for _ in range(3):
        times["stock"].append(run_sync(ready)(AsyncKernelManager(kernel_name="python3")))
        km = launcher.kernel_manager(env=BASE_ENV, cwd=str(tmp_path))
        times["zygote"].append(run_sync(ready)(km))
        time.sleep(0.2)  # pool refill
    z = launcher.timings
    with capsys.disabled():
        print("\nkernel_info reply after start_kernel(): "
              + ", ".join(f"{k} {' '.join(f'{t * 1000:.0f}' for t in v)} ms"
                          for k, v in times.items())
              + f"; zygote start: python {z['python_start'] * 1000:.0f} ms, "
              f"imports {z['imports'] * 1000:.0f} ms, pool {z['pool'] * 1000:.0f} ms")
    assert min(times["zygote"]) < 5  # sanity only
