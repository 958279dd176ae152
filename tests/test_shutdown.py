"""Stopping the platform stops everything it started, and leaves no process behind."""

import os
import signal
import time

import psutil
import pytest

from platform_helpers import edge_of


def _tree(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def _all_gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("sig,twice", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "Ctrl-C twice"])
def test_stop_leaves_no_process_behind(fresh_platform, sig, twice):
    """Also: while it runs, a second platform on the same data directory is refused (checked
    on one of the two platforms)."""
    p = fresh_platform(dask_at_start=True)
    p.start()
    # the login page answered before the services, and each line says so
    out = p.log()
    assert f"aidc is ready: {p.url}/" in out
    assert out.index("aidc is ready") < out.index("services are up")
    user = p.new_user("scientist")
    p.start_server(user)
    # the jobs service starts its Dask cluster with itself, not with the first job (none
    # here): its workers are running, and must be gone after the stop like the rest
    service = next(proc for proc in _tree(p.proc.pid)
                   if "aidc.jobs.service" in " ".join(proc.cmdline()))
    deadline = time.monotonic() + 60
    while not [c for c in service.children(recursive=True)
               if "multiprocessing" in " ".join(c.cmdline())]:
        assert time.monotonic() < deadline, "no Dask worker started with the jobs service"
        time.sleep(0.2)
    procs = _tree(p.proc.pid)

    def command(proc: psutil.Process) -> str:
        try:
            return " ".join(proc.cmdline())
        except psutil.NoSuchProcess:  # ended between the listing and now: not a leftover
            return ""

    def account(proc: psutil.Process) -> str | None:
        try:
            return proc.username()
        except psutil.NoSuchProcess:  # as above
            return None
    commands = " ".join(command(proc) for proc in procs)
    assert "configurable-http-proxy" in commands
    # the public edge (aidc.hub.edge): nginx, configured in a private folder that goes with it
    edge, edge_folder = edge_of(p)
    assert edge in procs
    assert os.stat(edge_folder).st_mode & 0o777 == 0o700
    assert "aidc.hub.singleuser" in commands
    user_procs = [proc for proc in procs if account(proc) == p.prefix + user.name]
    assert user_procs, "the user's server runs as the user's Unix account"
    from aidc.models.sandbox import run_root
    staging = run_root(str(p.data_dir))  # where model replicas get their artifact copies
    deadline = time.monotonic() + 60
    while not staging.is_dir():  # made by the models service as it starts
        assert time.monotonic() < deadline, "the models service did not start"
        time.sleep(0.2)
    if not twice:  # a second `aidc up` on the same data directory is refused, and says why
        r = p.cli("up", "--port", str(p.port + 1))
        assert r.returncode == 1 and "already running" in r.stderr, r.stderr

    if twice:  # an impatient Ctrl-C during the shutdown does not start a second one
        p.proc.send_signal(sig)
        deadline = time.monotonic() + 30
        while "initiating shutdown" not in p.log():
            assert time.monotonic() < deadline, p.log()[-3000:]
            time.sleep(0.05)
    assert p.stop(sig) == 0
    out = p.log()
    if twice:
        assert "Shutdown is in progress" in out, out[-3000:]
    for trouble in ("AttributeError", "Failed to stop user", "Traceback"):
        assert trouble not in out, out[-3000:]
    assert _all_gone(procs) == []
    assert not (p.data_dir / "platform.json").exists()
    assert not staging.exists()  # nothing of the platform is left in /tmp
    assert not os.path.exists(edge_folder)
    assert not any(proc.username() == p.prefix + user.name for proc in psutil.process_iter())


def test_port_in_use_is_a_clear_error(fresh_platform, platform):
    p = fresh_platform()
    r = p.cli("up", "--port", str(platform.port))
    assert r.returncode == 1
    assert f"port {platform.port}" in r.stderr and "in use" in r.stderr
