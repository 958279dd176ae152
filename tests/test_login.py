"""Signing in through the real login page: PAM over the platform's Unix accounts."""

import re
import time

import requests


def _error_text(html: str) -> str:
    """The visible message of the login page's error box."""
    match = re.search(r'class="login_error">\s*(.*?)\s*<', html, re.S)
    return match.group(1) if match else ""


def test_correct_password_signs_in(platform):
    user = platform.new_user("scientist", with_token=False)
    session, r = platform.login(user.name, user.password)
    assert r.status_code == 200
    assert r.url.endswith("/hub/home")
    home = session.get(platform.url + "/hub/home", timeout=30)
    assert home.status_code == 200 and user.name in home.text


def test_wrong_password_does_not_reveal_whether_the_user_exists(platform):
    user = platform.new_user("scientist", with_token=False)
    _, existing = platform.login(user.name, "not-the-password")
    _, missing = platform.login("nosuchuser", "not-the-password")
    assert existing.status_code == missing.status_code == 403
    assert "Invalid username or password" in existing.text
    assert _error_text(existing.text) == _error_text(missing.text) == "Invalid username or password"


def test_unix_accounts_outside_the_platform_cannot_sign_in(platform):
    # "root" is a real account with a password-less login here; it is not a hub user
    _, r = platform.login("root", "")
    assert r.status_code == 403


def test_repeated_failures_are_throttled_then_forgiven(platform):
    user = platform.new_user("scientist", with_token=False)
    for _ in range(3):  # the session platform allows 3 failures per name
        _, r = platform.login(user.name, "wrong-password")
        assert r.status_code == 403
    _, r = platform.login(user.name, user.password)
    assert r.status_code == 429
    assert "Too many failed sign-in attempts" in r.text
    locked = time.monotonic()
    wait = int(re.search(r"Try again in (\d+) seconds", r.text).group(1))
    assert 1 <= wait <= 5  # the lockout is 5 s on the test platform
    # the right password is refused until the lockout ends (trying does not extend it)
    while r.status_code == 429 and time.monotonic() - locked < wait + 10:
        time.sleep(0.25)
        _, r = platform.login(user.name, user.password)
    assert r.status_code == 200 and r.url.endswith("/hub/home")
    assert time.monotonic() - locked >= wait - 1


def test_sign_ins_are_in_the_audit_log(platform):
    user = platform.new_user("scientist", with_token=False)
    platform.login(user.name, "wrong-password")
    # a caller cannot choose the address it is audited at: the edge (nginx) replaces the
    # forwarding headers with the connection's own address, and the proxy behind it passes
    # them on unchanged (aidc.hub.edge)
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9", "X-Forwarded-Proto": "https"}
    s = requests.Session()
    s.get(platform.url + "/hub/login", timeout=30)
    r = s.post(platform.url + "/hub/login", headers=forged, timeout=60,
               data={"username": user.name, "password": "wrong-password", "_xsrf": s.cookies.get("_xsrf")})
    assert r.status_code == 403 and "Invalid username or password" in r.text
    platform.login(user.name, user.password)
    events = [e for e in platform.audit_events()
              if e["__schema__"].endswith("/auth") and e["actor"] == user.name]
    assert [e["result"] for e in events][-3:] == ["failure", "failure", "success"]
    for e in events:
        assert e["action"] == "login" and e["target"] == "hub"
        assert e["remote_ip"] == "127.0.0.1"
        assert e["__timestamp__"] and e["__schema_version__"] == "1"
