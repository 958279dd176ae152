"""The aidc command: users, roles and tokens, with the platform running and stopped."""

import grp
import json
import os
import pwd
import stat

from aidc.jobs.secrets import SecretStore
from aidc.jobs.store import JobStore
from jobs_helpers import jobs_api, wait_service
from platform_helpers import User, run_aidc, unix_name


def _names(result) -> dict:
    return {u["name"]: u for u in json.loads(result.stdout)}


# -- platform running: the CLI goes through the hub's REST API --------------------
def test_add_list_remove_on_a_running_platform(platform):
    r = platform.cli("user", "add", "alice1", "--role", "scientist", "--password-stdin",
                     input="a-good-password\n")
    assert r.returncode == 0, r.stderr
    assert "added alice1 (scientist)" in r.stdout
    account = pwd.getpwnam(unix_name("alice1", platform.prefix))
    assert stat.S_IMODE(os.stat(account.pw_dir).st_mode) == 0o700
    assert os.stat(account.pw_dir).st_uid == account.pw_uid
    assert grp.getgrgid(account.pw_gid).gr_name == "aidc-users"

    listed = _names(platform.cli("user", "list", "--json"))
    assert listed["alice1"]["role"] == "scientist"
    assert listed["admin"]["role"] == "admin"
    # the hub itself knows the user at once: she can sign in
    _, page = platform.login("alice1", "a-good-password")
    assert page.url.endswith("/hub/home")

    r = platform.cli("user", "remove", "alice1")
    assert r.returncode == 0, r.stderr
    assert "alice1" not in _names(platform.cli("user", "list", "--json"))
    assert not any(p.pw_name == unix_name("alice1", platform.prefix) for p in pwd.getpwall())
    _, page = platform.login("alice1", "a-good-password")
    assert page.status_code == 403


def test_duplicate_user_is_refused(platform, scientist):
    r = platform.cli("user", "add", scientist.name, "--role", "viewer", "--password-stdin",
                     input="another-password\n")
    assert r.returncode == 1
    assert f"user {scientist.name!r} already exists" in r.stderr
    assert "Traceback" not in r.stderr
    # nothing changed: still a scientist, old password still works
    assert _names(platform.cli("user", "list", "--json"))[scientist.name]["role"] == "scientist"
    _, page = platform.login(scientist.name, scientist.password)
    assert page.url.endswith("/hub/home")


def test_unknown_role_is_refused(platform):
    r = platform.cli("user", "add", "bob1", "--role", "superuser", "--password-stdin", input="x" * 10)
    assert r.returncode == 2
    assert "invalid choice: 'superuser'" in r.stderr
    assert "'admin', 'scientist', 'viewer'" in r.stderr
    assert "bob1" not in _names(platform.cli("user", "list", "--json"))


def test_invalid_name_and_short_password_are_refused(platform):
    r = platform.cli("user", "add", "Bad Name", "--role", "viewer", "--password-stdin", input="long-enough-pw\n")
    assert r.returncode == 2 and "invalid user name 'Bad Name'" in r.stderr
    r = platform.cli("user", "add", "shortpw", "--role", "viewer", "--password-stdin", input="abc\n")
    assert r.returncode == 2 and "at least 8 characters" in r.stderr
    names = _names(platform.cli("user", "list", "--json"))
    assert "shortpw" not in names
    assert not any(p.pw_name == unix_name("shortpw", platform.prefix) for p in pwd.getpwall())


def test_removing_an_unknown_user_fails_clearly(platform):
    r = platform.cli("user", "remove", "ghost")
    assert r.returncode == 1
    assert "no user named 'ghost'" in r.stderr


def test_removing_several_users_goes_on_past_an_unknown_one(platform):
    a, b = platform.new_user("viewer", with_token=False), platform.new_user("viewer", with_token=False)
    r = platform.cli("user", "remove", a.name, "ghost", b.name)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no user named 'ghost'" in r.stderr and "Traceback" not in r.stderr
    assert f"removed {a.name}" in r.stdout and f"removed {b.name}" in r.stdout
    names = _names(platform.cli("user", "list", "--json"))
    assert a.name not in names and b.name not in names
    for u in (a, b):
        assert not any(p.pw_name == unix_name(u.name, platform.prefix) for p in pwd.getpwall())
        platform.users.remove(u)


def test_no_password_without_a_terminal_is_a_clear_error(platform):
    r = platform.cli("user", "add", "noprompt", "--role", "viewer", input="")
    assert r.returncode == 2
    assert "--password-stdin" in r.stderr


# -- platform stopped: the CLI edits the hub database -----------------------------
def test_offline_user_management_then_sign_in(fresh_platform):
    p = fresh_platform()
    r = p.cli("user", "add", "carol1", "--role", "viewer", "--password-stdin",
              input="carols-password\n")
    assert r.returncode == 0, r.stderr
    p.users.append(User("carol1", "carols-password", "viewer"))
    r = p.cli("user", "set-role", "carol1", "scientist")
    assert r.returncode == 0 and "carol1 is now scientist" in r.stdout
    assert _names(p.cli("user", "list", "--json"))["carol1"]["role"] == "scientist"
    token = p.token("carol1")
    assert len(token) >= 32
    assert p.cli("user", "add", "carol1", "--role", "viewer", "--password-stdin",
                 input="carols-password\n").returncode == 1

    # the platform started afterwards knows her, her role and her token
    p.start()
    _, page = p.login("carol1", "carols-password")
    assert page.url.endswith("/hub/home")
    r = p.hub(token, "GET", "/user")
    assert r.status_code == 200 and r.json()["groups"] == ["scientist"]
    # a secret of hers for jobs, which goes with her below though the jobs service is stopped
    wait_service(p, token)
    r = jobs_api(p, token, "PUT", "/secrets/CAROL_KEY", json={"value": "carols-secret"})
    assert r.status_code == 201, r.text
    secrets_dir = p.data_dir / "jobs" / "secrets" / "carol1"
    assert (secrets_dir / "CAROL_KEY").exists()

    # and removing her while it is stopped removes her everywhere
    p.stop()
    r = p.cli("user", "remove", "carol1")
    assert r.returncode == 0, r.stderr
    p.users = [u for u in p.users if u.name != "carol1"]
    assert "carol1" not in _names(p.cli("user", "list", "--json"))
    assert not any(pw.pw_name == unix_name("carol1", p.prefix) for pw in pwd.getpwall())
    assert not secrets_dir.exists()
    store = JobStore(data_dir=str(p.data_dir))
    assert SecretStore(store, data_dir=str(p.data_dir)).find("carol1") == []
    removed = [(e["actor"], e["reason"]) for e in p.audit_events()
               if e.get("target") == "carol1/CAROL_KEY" and e["action"] == "delete"]
    assert removed == [("cli:root", "the user carol1 was removed")], removed
    p.start()
    _, page = p.login("carol1", "carols-password")
    assert page.status_code == 403
    assert p.hub(token, "GET", "/user").status_code == 403


def test_accounts_of_another_platform_are_left_alone(fresh_platform):
    first = fresh_platform()
    r = first.cli("user", "add", "dave1", "--role", "viewer", "--password-stdin",
                  input="daves-password\n")
    assert r.returncode == 0, r.stderr
    first.users.append(User("dave1", "daves-password", "viewer"))
    second = fresh_platform(prefix=first.prefix)
    r = second.cli("user", "add", "dave1", "--role", "viewer", "--password-stdin",
                   input="daves-password\n")
    assert r.returncode == 1
    assert f"{first.prefix}dave1" in r.stderr and "does not belong to this platform" in r.stderr
    r = second.cli("user", "list", "--json")
    assert "dave1" not in _names(r)
    assert pwd.getpwnam(unix_name("dave1", first.prefix))  # untouched


def test_unusable_data_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = run_aidc("user", "list", data_dir=blocker / "data")
    assert r.returncode == 1
    assert "cannot use the data directory" in r.stderr and "Traceback" not in r.stderr
