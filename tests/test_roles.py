"""Roles: what admin, scientist and viewer may do, through the real hub and proxy."""

import pytest


def test_viewer_cannot_start_a_server(platform, viewer):
    r = platform.hub(viewer.token, "POST", f"/users/{viewer.name}/server")
    assert r.status_code == 403
    model = platform.hub(viewer.token, "GET", f"/users/{viewer.name}").json()
    assert not (model.get("servers") or {}).get("")


def test_viewer_can_read_own_identity(platform, viewer):
    r = platform.hub(viewer.token, "GET", "/user")
    assert r.status_code == 200
    assert r.json()["name"] == viewer.name
    assert "viewer" in r.json()["groups"]


def test_scientist_can_start_own_server(platform, scientist):
    server = platform.start_server(scientist)
    assert server["ready"]


@pytest.mark.parametrize("path", ["", "/server", "/tokens"])
def test_scientist_gets_404_for_another_users_api(platform, scientist, other_scientist, path):
    method = "POST" if path == "/server" else "GET"
    r = platform.hub(scientist.token, method, f"/users/{other_scientist.name}{path}")
    assert r.status_code == 404


def test_scientist_gets_404_for_another_users_running_server(platform, scientist, other_scientist):
    platform.start_server(other_scientist)
    s = platform.api(scientist.token)
    r = s.get(f"{platform.url}/user/{other_scientist.name}/api/status", timeout=30)
    assert r.status_code == 404
    r = s.get(f"{platform.url}/user/{other_scientist.name}/api/contents", timeout=30)
    assert r.status_code == 404
    # the owner still gets in
    r = platform.api(other_scientist.token).get(
        f"{platform.url}/user/{other_scientist.name}/api/status", timeout=30
    )
    assert r.status_code == 200


def test_admin_can_read_and_reach_other_users(platform, admin, other_scientist):
    platform.start_server(other_scientist)
    r = platform.hub(admin.token, "GET", f"/users/{other_scientist.name}")
    assert r.status_code == 200
    assert r.json()["groups"] == ["scientist"]
    r = platform.api(admin.token).get(
        f"{platform.url}/user/{other_scientist.name}/api/status", timeout=30
    )
    assert r.status_code == 200


def test_admin_can_stop_another_users_server(platform, admin, scientist):
    platform.start_server(scientist)
    platform.stop_server(scientist, token=admin.token)
    model = platform.hub(admin.token, "GET", f"/users/{scientist.name}").json()
    assert not (model.get("servers") or {}).get("")


def test_role_change_takes_effect_on_a_running_platform(platform):
    user = platform.new_user("viewer")
    assert platform.hub(user.token, "POST", f"/users/{user.name}/server").status_code == 403
    r = platform.cli("user", "set-role", user.name, "scientist")
    assert r.returncode == 0, r.stderr
    assert f"{user.name} is now scientist" in r.stdout
    platform.start_server(user)
    platform.stop_server(user)
