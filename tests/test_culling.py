"""Culling: idle servers are stopped by the hub's culler services, and their GPUs freed."""

import time

from conftest import fake_nvml_env


def _wait(predicate, timeout=120, every=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def _running(p, token, user) -> bool:
    model = p.hub(token, "GET", f"/users/{user.name}").json()
    return bool((model.get("servers") or {}).get(""))


def test_gpu_culler_stops_servers_whose_gpus_sit_unused(fresh_platform, tmp_path):
    layout = [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "utilization": 80},
              {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "utilization": 0}]
    p = fresh_platform(env=fake_nvml_env(tmp_path, layout),
                       config="c.GPUCulling.idle_timeout = 8\nc.GPUCulling.interval = 1\n")
    p.start()
    admin = p.token("admin")
    busy, idle = p.new_user("scientist"), p.new_user("scientist")
    # busy first: it gets GPU 0 (80 % utilised), idle then gets GPU 1 (unused), and the
    # idle one's clock starts only once it is ready, however slowly the first one started
    for u in (busy, idle):
        assert p.spawn(u, "gpu-1").status_code in (201, 202)
        p.wait_ready(u)
    held = {u["holder"]: u["id"] for u in p.resources(admin)["units"] if u["holder"]}
    assert held[f"server:{idle.name}/"].endswith("gpu1")
    assert held[f"server:{busy.name}/"].endswith("gpu0")

    assert _wait(lambda: not _running(p, admin, idle)), "the idle GPU server was not culled"
    assert all(u["holder"] != f"server:{idle.name}/" for u in p.resources(admin)["units"])
    # the culler looked at the busy server, saw its GPU in use and kept it: it never starts
    # that server's idle clock, however long it runs
    assert f"keeps {busy.name}/: its GPUs are in use" in p.log()
    assert f"keeps {idle.name}/: GPUs unused and kernels idle; stopped after 8 s" in p.log()
    assert _running(p, admin, busy)
    # the culler (a service) sends its event to the hub's audit writer in the background
    assert _wait(lambda: [e for e in p.audit_events() if e.get("actor") == "gpu-culler"])
    culls = [e for e in p.audit_events() if e.get("actor") == "gpu-culler"]
    assert [(e["action"], e["target"], e["result"], e["service"]) for e in culls] == [
        ("stop", f"{idle.name}/", "success", "gpu-culler")]
    assert "GPUs unused" in culls[0]["reason"]


def test_idle_culler_runs_as_a_hub_service_and_frees_gpus(fresh_platform, tmp_path):
    p = fresh_platform(env=fake_nvml_env(tmp_path),
                       config="c.IdleCulling.timeout = 10\nc.IdleCulling.cull_every = 3\n")
    p.start()
    admin = p.token("admin")
    services = p.hub(admin, "GET", "/services").json()
    assert {"idle-culler", "gpu-culler", "resources"} <= set(services)
    user = p.new_user("scientist")
    assert p.spawn(user, "gpu-1").status_code in (201, 202)
    p.wait_ready(user)
    assert any(u["holder"] == f"server:{user.name}/" for u in p.resources(admin)["units"])
    assert _wait(lambda: not _running(p, admin, user), timeout=90), "idle server not culled"
    assert all(u["holder"] is None for u in p.resources(admin)["units"])
