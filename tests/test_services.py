"""Platform services register with the hub as managed services (aidc.hub.services).

The session platform registers ``tests/services/echo.py`` twice through a drop-in
config file: as ``echo`` (open to scientists and viewers, with its own hub scope
``list:users``) and as ``science-only`` (scientists only).
"""


def _svc(platform, token, path, method="GET", **kw):
    return platform.api(token).request(method, f"{platform.url}/services/{path}", timeout=60, **kw)


def test_service_is_started_and_routed_by_the_hub(platform, admin):
    r = platform.hub(admin.token, "GET", "/services")
    assert r.status_code == 200
    services = r.json()
    assert {"echo", "science-only", "aidc-cli"} <= set(services)
    assert services["echo"]["prefix"] == "/services/echo/"
    assert _svc(platform, admin.token, "echo/health").json() == {"status": "ok"}


def test_token_callers_are_identified(platform, scientist, viewer):
    for user in (scientist, viewer):
        r = _svc(platform, user.token, "echo/api/whoami")
        assert r.status_code == 200
        assert r.json() == {"name": user.name, "kind": "user"}


def test_service_roles_limit_who_gets_in(platform, scientist, viewer):
    assert _svc(platform, scientist.token, "science-only/api/whoami").status_code == 200
    r = _svc(platform, viewer.token, "science-only/api/whoami")
    assert r.status_code == 403
    assert r.json()["message"] == f"user {viewer.name} may not use this service"


def test_missing_or_bad_token_gets_401_json(platform):
    r = _svc(platform, "not-a-token", "echo/api/whoami")
    assert r.status_code == 401
    assert "token" in r.json()["message"]


def test_service_uses_its_own_hub_token(platform, scientist):
    r = _svc(platform, scientist.token, "echo/api/users-count")
    assert r.status_code == 200
    assert r.json()["users"] >= 2


def test_user_errors_are_json_4xx_not_tracebacks(platform, scientist):
    r = _svc(platform, scientist.token, "echo/api/echo", method="POST", data=b"{not json")
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["message"]
    r = _svc(platform, scientist.token, "echo/api/echo", method="POST", json={"other": 1})
    assert r.status_code == 400 and r.json()["message"] == "missing field 'text'"
    r = _svc(platform, scientist.token, "echo/api/echo", method="POST", json={"text": "hi"})
    assert r.status_code == 200 and r.json() == {"text": "hi"}


def test_browser_users_sign_in_to_a_service_with_hub_oauth(platform):
    user = platform.new_user("scientist", with_token=False)
    session, _ = platform.login(user.name, user.password)
    r = session.get(f"{platform.url}/services/echo/", timeout=60)
    assert r.status_code == 200, (r.text[:2000], platform.log()[-5000:])
    assert f"Hello {user.name}" in r.text
    assert any("/hub/api/oauth2/authorize" in h.url for h in r.history)
