"""API tokens: `aidc token` issues them, `aidc whoami` checks them, bad ones fail clearly."""

import time

from platform_helpers import run_aidc

BAD = "the hub did not accept your token"


def whoami(platform, token):
    return run_aidc("whoami", env={"AIDC_URL": platform.url, "AIDC_TOKEN": token})


def test_token_identifies_its_user_and_role(platform, scientist):
    r = whoami(platform, scientist.token)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{scientist.name} (scientist)"


def test_malformed_token_is_refused(platform):
    r = whoami(platform, "not a token at all")
    assert r.returncode == 1
    assert BAD in r.stderr and "Traceback" not in r.stderr


def test_revoked_token_is_refused(platform, scientist):
    token = platform.token(scientist.name, "--note", "to-revoke")
    assert whoami(platform, token).returncode == 0
    tokens = platform.hub(scientist.token, "GET", f"/users/{scientist.name}/tokens").json()["api_tokens"]
    token_id = next(t["id"] for t in tokens if t["note"] == "to-revoke")
    r = platform.hub(scientist.token, "DELETE", f"/users/{scientist.name}/tokens/{token_id}")
    assert r.status_code == 204
    r = whoami(platform, token)
    assert r.returncode == 1 and BAD in r.stderr


def test_expired_token_is_refused(platform, scientist):
    token = platform.token(scientist.name, "--expires-in", "1")
    deadline = time.monotonic() + 30  # refused from its expiry on; it must not outlive it long
    while (r := whoami(platform, token)).returncode == 0:
        assert time.monotonic() < deadline, "the token still works 30 s after its 1 s expiry"
        time.sleep(0.25)
    assert r.returncode == 1 and BAD in r.stderr


def test_token_for_unknown_user_fails(platform):
    r = platform.cli("token", "ghost")
    assert r.returncode == 1 and "no user named 'ghost'" in r.stderr


def test_no_credentials_is_a_clear_error(platform):
    r = run_aidc("whoami", env={"AIDC_URL": platform.url, "AIDC_TOKEN": "", "JUPYTERHUB_API_TOKEN": ""})
    assert r.returncode == 2 and "AIDC_TOKEN" in r.stderr


def test_token_of_removed_user_stops_working(platform):
    user = platform.new_user("viewer")
    assert whoami(platform, user.token).returncode == 0
    assert platform.cli("user", "remove", user.name).returncode == 0
    platform.users.remove(user)
    assert BAD in whoami(platform, user.token).stderr
