"""GPU-backed servers: profiles, one ledger, exactly the granted GPUs visible, quotas, queue.

The session platform's GPUs come from the fake NVML (conftest.GPU_LAYOUT): four whole
GPUs (GPU-fake-0000..0003) and one A100 in MIG mode with two instances.
"""

import concurrent.futures
import json
import time

import requests
from platform_helpers import User, execute, visible_devices

WHOLE = {f"GPU-fake-{i:04d}" for i in range(4)}


def spawn(platform, user, profile):
    return platform.spawn(user, profile)


def wait_ready(platform, user):
    platform.wait_ready(user)


def resources(platform, token, what="gpus"):
    return platform.resources(token, what)


def progress_message(platform, user, needle: str, timeout: float = 60) -> str:
    """The first spawn progress message (the spawn page's event stream) containing needle."""
    r = platform.api(user.token).get(
        f"{platform.url}/hub/api/users/{user.name}/server/progress",
        headers={"Accept": "text/event-stream"}, stream=True, timeout=timeout,
    )
    deadline = time.monotonic() + timeout
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            if needle in event.get("message", ""):
                r.close()
                return event["message"]
        if time.monotonic() > deadline:
            break
    r.close()
    raise AssertionError(f"no progress message with {needle!r}")


def test_kernel_sees_exactly_its_gpu(platform, admin):
    user = platform.new_user("scientist")
    assert spawn(platform, user, "gpu-1").status_code in (201, 202)
    wait_ready(platform, user)
    cuda, nvidia, simulated = visible_devices(platform, user).split()
    assert cuda == nvidia and cuda in WHOLE and simulated == "0"
    # the gpu-1 profile of the test platform: 1 CPU core, 4 GB
    cores, data_limit = execute(
        platform, user,
        "import os, resource; print(len(os.sched_getaffinity(0)), resource.getrlimit(resource.RLIMIT_DATA)[0])",
    ).split()
    assert int(cores) == 1 and int(data_limit) == 4 * 2**30
    held = [u for u in resources(platform, admin.token)["units"] if u["holder"] == f"server:{user.name}/"]
    assert len(held) == 1 and held[0]["name"] == "NVIDIA H100 80GB HBM3"
    platform.stop_server(user)
    after = resources(platform, admin.token)["units"]
    assert not any(u["holder"] == f"server:{user.name}/" for u in after)


def test_cpu_profile_sees_no_gpu_and_mig_profile_sees_one_slice(platform):
    user = platform.new_user("scientist")
    assert spawn(platform, user, "cpu").status_code in (201, 202)
    wait_ready(platform, user)
    out = execute(platform, user, "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))")
    assert out.strip() == "''"
    platform.stop_server(user)
    assert spawn(platform, user, "mig-1").status_code in (201, 202)
    wait_ready(platform, user)
    assert visible_devices(platform, user).split()[0] in {"MIG-fake-04-0", "MIG-fake-04-1"}
    platform.stop_server(user)


def test_unknown_profile_is_refused_with_the_choices(platform):
    user = platform.new_user("scientist")
    r = spawn(platform, user, "gpu-99")
    assert r.status_code == 400
    assert "unknown profile 'gpu-99'" in r.json()["message"] and "gpu-1" in r.json()["message"]


def test_more_gpus_than_exist_is_refused_at_once(platform):
    user = platform.new_user("scientist")
    started = time.monotonic()
    r = spawn(platform, user, "gpu-8")
    assert r.status_code == 400
    assert r.json()["message"] == "asked for 8 whole GPUs, but this platform has 4; ask for fewer"
    assert time.monotonic() - started < 10  # answered, not queued until a timeout
    model = platform.hub(user.token, "GET", f"/users/{user.name}").json()
    assert not (model.get("servers") or {}).get("")


def test_over_quota_is_refused_with_the_quota(platform):
    r = platform.cli("user", "add", "quotauser", "--role", "scientist", "--password-stdin",
                     input="quota-password\n")
    assert r.returncode == 0, r.stderr
    user = User("quotauser", "quota-password", "scientist", platform.token("quotauser"))
    platform.users.append(user)
    r = spawn(platform, user, "gpu-2")
    assert r.status_code == 403
    assert r.json()["message"] == (
        "over quota: user quotauser may use at most 1 GPUs; 0 in use, this request needs 2 more"
    )


def test_resources_api_hides_other_peoples_claims(platform, admin):
    owner = platform.new_user("scientist")
    other = platform.new_user("scientist")
    assert spawn(platform, owner, "gpu-1").status_code in (201, 202)
    wait_ready(platform, owner)
    mine = resources(platform, owner.token)
    theirs = resources(platform, other.token)
    everything = resources(platform, admin.token)
    holder = f"server:{owner.name}/"
    assert mine["simulated"] is False
    assert [m["holder"] for m in mine["mine"]] == [holder]
    assert any(u["holder"] == holder for u in everything["units"])
    assert not any(u["holder"] == holder for u in theirs["units"])
    assert theirs["free"] == everything["free"]
    r = requests.get(f"{platform.url}/services/resources/api/gpus", timeout=30)
    assert r.status_code in (401, 302, 403)
    platform.stop_server(owner)


def test_twenty_concurrent_spawns_share_four_gpus(platform, admin):
    users = [platform.new_user("scientist") for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda u: spawn(platform, u, "gpu-1").status_code, users))
    assert all(c in (201, 202) for c in codes), codes

    served: dict[str, str] = {}
    saw_queue_position = False
    deadline = time.monotonic() + 900
    while len(served) < 20:
        assert time.monotonic() < deadline, f"only {len(served)} of 20 served"
        units = resources(platform, admin.token)["units"]
        holders = [u["holder"] for u in units if u["holder"]]
        assert len(holders) == len(set(holders))  # the ledger never hands a unit out twice
        queue = resources(platform, admin.token, "queue")["queue"]
        if queue:
            assert [q["position"] for q in queue] == list(range(1, len(queue) + 1))
            if not saw_queue_position:
                waiting = next(u for u in users if f"server:{u.name}/" == queue[-1]["holder"])
                message = progress_message(platform, waiting, "in the queue")
                assert message.startswith("Waiting for 1 GPU(s): number ")
                saw_queue_position = True
        ready = []
        for u in users:
            if u.name in served:
                continue
            model = platform.hub(u.token, "GET", f"/users/{u.name}").json()
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                ready.append(u)
        assert len(ready) <= 4
        # what each running server's kernel sees, asked of all of them at once (a kernel
        # start each), then their GPUs freed together so the queue moves on
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            running_devices = list(pool.map(lambda u: visible_devices(platform, u).split()[0], ready))
            served.update({u.name: d for u, d in zip(ready, running_devices)})
            assert len(running_devices) == len(set(running_devices)), running_devices
            list(pool.map(platform.stop_server, ready))
        if not ready:
            time.sleep(1)
    assert saw_queue_position
    assert set(served.values()) <= WHOLE
    assert all(u["holder"] is None for u in resources(platform, admin.token)["units"]
               if u["kind"] == "whole")
