"""A hub crash loses no allocation and leaks none: the ledger is reconciled on restart."""

import os
import signal
import subprocess

import psutil

from conftest import fake_nvml_env
from platform_helpers import edge_of, visible_devices


def test_hub_sigkill_keeps_live_servers_gpus_and_frees_dead_ones(fresh_platform, tmp_path):
    p = fresh_platform(env=fake_nvml_env(tmp_path))
    p.start()
    admin = p.token("admin")
    alive, dead = p.new_user("scientist"), p.new_user("scientist")
    for u in (alive, dead):
        assert p.spawn(u, "gpu-1").status_code in (201, 202)
    for u in (alive, dead):
        p.wait_ready(u)
    before = {u["holder"]: u["id"] for u in p.resources(admin)["units"] if u["holder"]}
    assert set(before) == {f"server:{alive.name}/", f"server:{dead.name}/"}
    devices = visible_devices(p, alive)

    services = [proc for proc in psutil.Process(p.proc.pid).children()
                if any(m in " ".join(proc.cmdline())
                       for m in ("aidc.gpu.service", "aidc.gpu.culler", "jupyterhub_idle_culler"))]
    assert len(services) >= 3  # resources, idle-culler, gpu-culler

    edge, edge_folder = edge_of(p)
    p.proc.send_signal(signal.SIGKILL)  # the hub dies; servers and proxy are orphaned
    p.proc.wait()
    # the public edge (nginx) ends with it, and frees the port for the next hub
    _, alive_edge = psutil.wait_procs([edge], timeout=15)
    assert alive_edge == []
    # its services do not run on as orphans next to the ones the new hub starts
    _, alive_services = psutil.wait_procs(services, timeout=15)
    assert alive_services == []
    subprocess.run(["pkill", "-KILL", "-u", p.prefix + dead.name])  # one server dies too

    p.start()
    after = {u["holder"]: u["id"] for u in p.resources(admin)["units"] if u["holder"]}
    assert after == {f"server:{alive.name}/": before[f"server:{alive.name}/"]}
    assert visible_devices(p, alive) == devices  # the same server, still running, same GPU
    assert "stopped the proxy" in p.log()
    assert not os.path.exists(edge_folder)  # the dead hub's edge folder: removed by the new one

    # and the freed GPU is usable again: all three others can be had
    p.stop_server(alive)
    assert all(u["holder"] is None for u in p.resources(admin)["units"])
