"""A hub crash loses no allocation and leaks none: the ledger is reconciled on restart."""

import os
import signal
import subprocess

from conftest import fake_nvml_env
from platform_helpers import visible_devices


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

    p.proc.send_signal(signal.SIGKILL)  # the hub dies; servers and proxy are orphaned
    p.proc.wait()
    subprocess.run(["pkill", "-KILL", "-u", p.prefix + dead.name])  # one server dies too

    p.start()
    after = {u["holder"]: u["id"] for u in p.resources(admin)["units"] if u["holder"]}
    assert after == {f"server:{alive.name}/": before[f"server:{alive.name}/"]}
    assert visible_devices(p, alive) == devices  # the same server, still running, same GPU
    assert "stopped the proxy" in p.log()

    # and the freed GPU is usable again: all three others can be had
    p.stop_server(alive)
    assert all(u["holder"] is None for u in p.resources(admin)["units"])
