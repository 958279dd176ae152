"""GPUs come back whatever ends a server: stop, a wait that runs out, user removal, a failed spawn.

These platforms have no NVML at all, so they run on a simulated inventory, which must say so.
"""

import re
import time

from platform_helpers import visible_devices

WAIT_LIMIT = """
c.GPUAllocationMixin.gpu_queue_timeout = 4
c.GPUAllocationMixin.gpu_poll_interval = 0.2
"""


def test_simulated_inventory_is_labelled_and_sized_by_the_flag(fresh_platform):
    p = fresh_platform(config=WAIT_LIMIT)
    p.up_args = ["--simulated-gpus", "1"]
    p.start()
    assert "GPUs (SIMULATED): 1 devices" in p.log()
    admin = p.token("admin")
    gpus = p.resources(admin)
    assert gpus["simulated"] is True and len(gpus["units"]) == 1
    assert gpus["units"][0]["simulated"] is True

    user = p.new_user("scientist")
    session, _ = p.login(user.name, user.password)
    form = session.get(p.url + "/hub/spawn", timeout=30).text
    assert 'id="aidc-simulated-note"' in form
    assert re.search(r"1 free, simulated", form)

    # a kernel is told its GPU is simulated
    assert p.spawn(user, "gpu-1").status_code in (201, 202)
    p.wait_ready(user)
    cuda, _nvidia, simulated = visible_devices(p, user).split()
    assert cuda == "GPU-simulated-0000" and simulated == "1"

    # the only GPU is taken: the next spawn waits, then gives up with a clear message
    other = p.new_user("scientist")
    r = p.spawn(other, "gpu-1")
    assert r.status_code == 503
    assert r.json()["message"] == (
        "No GPU became free within 4 seconds (you were number 1 in the queue). "
        "Try again later, or choose a smaller profile."
    )
    assert p.resources(admin, "queue")["queue"] == []

    # removing the user stops the server and frees the GPU
    assert p.cli("user", "remove", user.name).returncode == 0
    p.users.remove(user)
    assert p.resources(admin)["units"][0]["free"] is True
    assert p.spawn(other, "gpu-1").status_code in (201, 202)
    p.wait_ready(other)


def test_bad_simulated_gpus_flag_is_a_clear_error(fresh_platform):
    p = fresh_platform()
    r = p.cli("up", "--port", str(p.port), "--simulated-gpus", "lots")
    assert r.returncode == 2
    assert "--simulated-gpus must be a number of GPUs" in r.stderr
    assert not (p.data_dir / "initial-admin-password").exists()  # refused before anything was made


def test_failed_spawn_releases_its_gpu(fresh_platform):
    p = fresh_platform(config='c.Spawner.cmd = ["/bin/false"]\nc.Spawner.http_timeout = 5\n')
    p.start()
    admin = p.token("admin")
    user = p.new_user("scientist")
    p.spawn(user, "gpu-1")  # the server process exits at once
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        model = p.hub(admin, "GET", f"/users/{user.name}").json()
        if not (model.get("servers") or {}).get("") and all(
            u["free"] for u in p.resources(admin)["units"]
        ):
            break
        time.sleep(0.5)
    assert all(u["free"] for u in p.resources(admin)["units"])
    events = [e["action"] for e in p.audit_events()
              if e["__schema__"].endswith("/server") and e["target"] == f"{user.name}/"]
    assert events == ["start", "stop"]  # the end of a server that died is recorded too


def test_time_sliced_shares_of_one_gpu(fresh_platform):
    p = fresh_platform(env={"AIDC_SIMULATED_GPUS": '[{"name": "Simulated L4", "memory_mb": 24000}]',
                            "AIDC_GPU_SHARES": "0=2"})
    p.start()
    a, b, c = (p.new_user("scientist") for _ in range(3))
    for u in (a, b):
        assert p.spawn(u, "share-1").status_code in (201, 202)
    for u in (a, b):
        p.wait_ready(u)
    seen = [visible_devices(p, u).split()[0] for u in (a, b)]
    assert seen == ["GPU-simulated-0000", "GPU-simulated-0000"]  # the same GPU, time-sliced
    from platform_helpers import execute
    assert execute(p, a, "import os; print(os.environ['AIDC_GPU_MEMORY_LIMIT_MB'])").strip() == "12000"
    units = p.resources(p.token("admin"))["units"]
    assert sorted(u["holder"] for u in units) == sorted([f"server:{a.name}/", f"server:{b.name}/"])
    r = p.spawn(c, "gpu-1")  # the only GPU is offered as shares: no whole GPU exists
    assert r.status_code == 400 and "has 0" in r.json()["message"]
