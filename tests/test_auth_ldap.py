"""Company sign-in through LDAP, end to end against a real OpenLDAP server.

A throw-away ``slapd`` (``tests/ldap_server.py``) runs once for this module on a free
127.0.0.1 port, and one platform with the shipped drop-in ``hub_config/auth_ldap.py``,
configured only through the documented ``AIDC_LDAP_*`` variables (two allowed groups); each
test signs different people in through the real login page. Nothing about LDAP is mocked: the
slapd log shows each bind the hub made.

slapd comes from Debian (``tests/ldap/install.sh``, run by ``make test``).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
from pathlib import Path

import pytest

import ldap_server
from ldap_server import LDAPServer, LDAPUser
from platform_helpers import Platform, User, new_prefix, own_platform_drop_ins

ROOT = Path(__file__).resolve().parents[1]
LDAP_CONFIG = (ROOT / "hub_config" / "auth_ldap.py").read_text()
GENERIC_ERROR = "Invalid username or password"

#: directory people: uid -> password (random per run); groups below
PEOPLE = {uid: secrets.token_urlsafe(12) for uid in ("alice", "bob", "carol", "dave", "erin")}
GROUPS = {"ml-platform": ["alice", "bob", "dave"], "finance": ["erin"]}

@pytest.fixture(scope="module")
def directory():
    if not ldap_server.available():
        pytest.fail("slapd is not installed: run tests/ldap/install.sh (make test does)")
    server = LDAPServer(
        users=[LDAPUser(uid, pw) for uid, pw in PEOPLE.items()], groups=GROUPS
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def ldap_platform(tmp_path_factory, directory) -> Platform:
    """One started platform for the module, signing people in against ``directory``, as an
    operator sets it up with the documented variables: the members of two groups
    (``finance;ml-platform``, ';'-separated) may sign in. Each test signs in with people of
    its own and reads only their audit events."""
    p = Platform(tmp_path_factory.mktemp("ldap") / "platform", prefix=new_prefix(), env={
        "AIDC_LDAP_SERVER": directory.host,
        "AIDC_LDAP_PORT": str(directory.port),
        "AIDC_LDAP_TLS": "insecure",
        "AIDC_LDAP_BIND_TEMPLATE": directory.bind_template,
        "AIDC_LDAP_ALLOWED_GROUPS": ";".join(directory.group_dn(g) for g in ("finance", "ml-platform")),
    })
    own_platform_drop_ins(p.data_dir, LDAP_CONFIG, dask_at_start=False)  # no job runs here
    p.start()
    yield p
    p.stop()
    p.remove_users()


def _login(p, uid: str, password: str):
    """Sign in through the login page. Whoever signs in gets a hub user and (as root) a
    Unix account: listed in ``p.users``, both are removed when the platform is torn down."""
    if uid in PEOPLE and uid not in {u.name for u in p.users}:
        p.users.append(User(uid, PEOPLE[uid], ""))
    return p.login(uid, password)


def _error_text(html: str) -> str:
    """The visible message of the login page's error box."""
    match = re.search(r'class="login_error">\s*(.*?)\s*<', html, re.S)
    return match.group(1) if match else ""


def _auth_events(p, actor: str) -> list[dict]:
    return [e for e in p.audit_events()
            if e["__schema__"].endswith("/auth") and e.get("actor") == actor]


def _binds(directory: LDAPServer, uid: str):
    """A function returning the results of the binds as ``uid`` made since now."""
    dn = directory.user_dn(uid)
    before = len(directory.bind_results(dn))
    return lambda: directory.bind_results(dn)[before:]


def _unix_account(p, name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(p.prefix + name)
    except KeyError:
        return None


def _hub_users(p) -> dict[str, str | None]:
    r = p.cli("user", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {u["name"]: u["role"] for u in json.loads(r.stdout)}


def test_directory_user_signs_in_with_their_directory_password(ldap_platform, directory):
    p = ldap_platform
    assert _unix_account(p, "alice") is None
    binds = _binds(directory, "alice")

    session, r = _login(p, "alice", PEOPLE["alice"])

    assert r.status_code == 200 and r.url.endswith("/hub/home"), (r.status_code, r.url)
    home = session.get(p.url + "/hub/home", timeout=30)
    assert home.status_code == 200 and "alice" in home.text
    # the password was checked by the directory itself: slapd accepted alice's bind
    assert binds() == [0]
    assert _hub_users(p)["alice"] is None  # signed in, but no role yet
    assert [e["result"] for e in _auth_events(p, "alice")] == ["success"]
    if os.geteuid() == 0:
        account = _unix_account(p, "alice")
        assert account is not None, f"no Unix account {p.prefix}alice after sign-in"
        assert account.pw_gecos == f"aidc {p.data_dir}"  # owned by this platform
        assert Path(account.pw_dir).is_dir()


def test_wrong_password_is_refused_like_an_unknown_user(ldap_platform, directory):
    p = ldap_platform
    binds = _binds(directory, "erin")

    _, wrong = _login(p, "erin", "not-" + PEOPLE["erin"])
    _, unknown = _login(p, "nosuchperson", "whatever-password")

    assert wrong.status_code == unknown.status_code == 403
    assert _error_text(wrong.text) == _error_text(unknown.text) == GENERIC_ERROR
    assert binds() == [49]  # the directory, not aidc, said no: invalid credentials
    failures = [e for e in _auth_events(p, "erin") if e["result"] == "failure"]
    assert failures, p.audit_events()
    assert failures[-1]["action"] == "login" and failures[-1]["target"] == "hub"
    assert failures[-1]["remote_ip"] == "127.0.0.1"
    assert [e["result"] for e in _auth_events(p, "nosuchperson")] == ["failure"]
    # a refused sign-in creates nothing
    assert "erin" not in _hub_users(p)
    assert _unix_account(p, "erin") is None


def test_only_members_of_the_allowed_groups_sign_in(ldap_platform, directory):
    # the platform allows two groups; bob is in the second, carol in neither
    p = ldap_platform
    carol_binds = _binds(directory, "carol")

    _, refused = _login(p, "carol", PEOPLE["carol"])
    _, allowed = _login(p, "bob", PEOPLE["bob"])

    assert refused.status_code == 403
    assert _error_text(refused.text) == GENERIC_ERROR
    assert carol_binds() == [0]  # her password was right: the group kept her out
    assert [e["result"] for e in _auth_events(p, "carol")] == ["failure"]
    assert "carol" not in _hub_users(p) and _unix_account(p, "carol") is None

    assert allowed.status_code == 200 and allowed.url.endswith("/hub/home")
    assert [e["result"] for e in _auth_events(p, "bob")] == ["success"]
    if os.geteuid() == 0:
        assert _unix_account(p, "bob") is not None


def test_directory_user_starts_a_server_only_once_given_a_role(ldap_platform):
    p = ldap_platform
    _, r = _login(p, "dave", PEOPLE["dave"])
    assert r.status_code == 200 and r.url.endswith("/hub/home")
    token = p.token("dave")

    r = p.hub(token, "POST", "/users/dave/server")
    assert r.status_code == 403, (r.status_code, r.text)

    set_role = p.cli("user", "set-role", "dave", "scientist")
    assert set_role.returncode == 0, set_role.stderr
    assert _hub_users(p)["dave"] == "scientist"
    server = p.start_server(User("dave", PEOPLE["dave"], "scientist", token))
    assert server["ready"]
    r = p.api(token).get(f"{p.url}/user/dave/api/status", timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
