"""The CLI face of resources: the same profiles and rules as the spawn form and the REST API."""

from platform_helpers import run_aidc


def aidc(platform, user, *args):
    return run_aidc(*args, env={"AIDC_URL": platform.url, "AIDC_TOKEN": user.token})


def test_profiles_come_from_the_one_declaration(platform, scientist):
    r = aidc(platform, scientist, "profiles", "--json")
    assert r.returncode == 0, r.stderr
    import json
    ids = [p["id"] for p in json.loads(r.stdout)]
    assert ids == ["cpu", "gpu-1", "gpu-2", "gpu-8", "mig-1"]  # the test platform's own list


def test_start_with_a_gpu_profile_then_stop(platform):
    user = platform.new_user("scientist")
    r = aidc(platform, user, "server", "start", "--profile", "gpu-1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"server ready: {platform.url}/user/{user.name}/")
    r = aidc(platform, user, "gpus")
    assert r.returncode == 0
    assert f"server:{user.name}/" in r.stdout and "SIMULATED" not in r.stdout
    assert aidc(platform, user, "server", "stop").returncode == 0
    platform.stop_server(user)  # waits until it is gone


def test_impossible_profile_is_refused_with_the_reason(platform):
    user = platform.new_user("scientist")
    r = aidc(platform, user, "server", "start", "--profile", "gpu-8")
    assert r.returncode == 2
    assert "asked for 8 whole GPUs, but this platform has 4" in r.stderr


def test_viewer_cannot_start_a_server_from_the_cli(platform, viewer):
    r = aidc(platform, viewer, "server", "start")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "servers" in r.stderr
