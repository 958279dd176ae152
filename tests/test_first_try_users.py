"""Issue 12, items 9 and 16: profiles that can never start, and users made outside ``aidc user``.

In-process where possible (the spawn form of a platform without MIG, the clamping of a
profile's cores and memory, the last administrator); the session platform for the spawn
form page, the users API and the CLI's order of checks.
"""

from __future__ import annotations

import logging
import re

import pytest

from aidc.errors import AidcError, ConflictError, NotFoundError
from aidc.gpu import profiles as gpu_profiles
from aidc.hub import gpu_spawner
from aidc.hub.directory import UserDirectory, UserRecord
from aidc.hub.users import PlatformUsers
from aidc.paths import DataDir
from aidc.security import audit
from platform_helpers import User


# -- item 9: profiles that can never start -----------------------------------------
class _FakeLedger:
    """Four whole GPUs on one node, no MIG, no shares."""

    def units(self):
        return [
            dict(id=f"gpu-{i}", node="n1", kind="whole", holder=None, simulated=True,
                 name="Simulated GPU", memory_mb=1000)
            for i in range(4)
        ]


def _radio(html: str, profile_id: str) -> str:
    m = re.search(rf'<input[^>]*id="profile-{re.escape(profile_id)}"[^>]*>', html)
    assert m, html
    return m.group(0)


def test_form_disables_profiles_the_machine_cannot_satisfy_and_shows_real_cores(monkeypatch):
    monkeypatch.setattr(gpu_profiles, "machine_resources", lambda: (2, 23.4))
    spawner = gpu_spawner.GPUAllocationMixin()  # the default profiles
    spawner.ledger = _FakeLedger()
    html = spawner._options_form_html()
    # no MIG GPU here: the MIG profile cannot start, and says why (not "0 free")
    assert "disabled" in _radio(html, "mig-1")
    assert "this platform has no MIG instances" in html
    assert "0 free" not in html
    assert "disabled" not in _radio(html, "gpu-1") and "disabled" not in _radio(html, "gpu-2")
    assert "checked" in _radio(html, "cpu")
    # gpu-2 promises 8 cores and 32 GB: the form shows what it gets here
    assert "on this machine: 2 CPU cores, 23.4 GB memory" in html


def test_spawn_clamps_cores_and_memory_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(gpu_profiles, "machine_resources", lambda: (2, 23.4))
    log = logging.getLogger("test-first-try-users")
    spawner = gpu_spawner.GPUAllocationMixin(log=log)
    gpu2 = gpu_profiles.find(list(gpu_profiles.DEFAULT_PROFILES), "gpu-2")
    with caplog.at_level(logging.WARNING, logger=log.name):
        got = spawner._clamp_profile(gpu2)
    assert (got.cpu_cores, got.memory_gb, got.gpus) == (2, 23.4, 2)
    [record] = [r for r in caplog.records if r.name == log.name]
    assert record.levelno == logging.WARNING
    assert ("profile 'gpu-2' promises 8 CPU cores and 32 GB memory, but this machine has "
            "2 cores and 23.4 GB: the server gets 2 CPU cores and 23.4 GB") in record.getMessage()
    # a profile that fits is left alone, without a word
    cpu = gpu_profiles.find(list(gpu_profiles.DEFAULT_PROFILES), "cpu")
    caplog.clear()
    assert spawner._clamp_profile(cpu) == cpu and not caplog.records


def test_spawn_page_shows_too_large_profile_disabled_with_the_reason(platform):
    # a user of its own: the form is only shown to a user without a running server, and the
    # session's shared scientist may have one from an earlier test
    scientist = platform.new_user("scientist", with_token=False)
    session, r = platform.login(scientist.name, scientist.password)
    assert r.status_code == 200, r.text
    page = session.get(platform.url + "/hub/spawn", timeout=60)
    assert page.status_code == 200
    # gpu-8 of the test config: 8 whole GPUs on a platform of 4
    assert "disabled" in _radio(page.text, "gpu-8")
    assert "cannot start here: needs 8 whole GPUs, but this platform has 4" in page.text
    assert "disabled" not in _radio(page.text, "gpu-1")
    assert "disabled" not in _radio(page.text, "mig-1")  # the fake NVML has a MIG GPU


# -- item 16: users made outside `aidc user`, the last admin, the order of checks ---
def test_user_added_through_the_api_gets_the_default_role_audited(platform, admin):
    name = "apiadded"
    r = platform.hub(admin.token, "POST", f"/users/{name}")
    assert r.status_code == 201, r.text
    platform.users.append(User(name, "", "scientist"))  # removed at the end
    model = platform.hub(admin.token, "GET", f"/users/{name}").json()
    assert "scientist" in model["groups"], model
    listed = platform.cli("user", "list", "--json")
    assert {"name": name, "role": "scientist"}.items() <= next(
        u for u in __import__("json").loads(listed.stdout) if u["name"] == name
    ).items()
    events = [e for e in platform.audit_events()
              if e.get("target") == name and e.get("action") == "add"]
    # the default role, given by the hub; and who added the user, from the REST API's audit
    given = [e for e in events if e["actor"] == "hub"]
    assert given and given[-1]["result"] == "success" and given[-1]["role"] == "scientist"
    assert [e for e in events if e["actor"] == admin.name], events
    # a user added with `aidc user add --role viewer` is a viewer, not also a scientist
    r = platform.cli("user", "add", "apiviewer", "--role", "viewer", "--password-stdin",
                     input="viewer-password\n")
    assert r.returncode == 0, r.stderr
    platform.users.append(User("apiviewer", "viewer-password", "viewer"))
    model = platform.hub(admin.token, "GET", "/users/apiviewer").json()
    assert "viewer" in model["groups"] and "scientist" not in model["groups"], model


def test_adding_an_existing_user_says_so_before_asking_for_a_password(platform, scientist):
    r = platform.cli("user", "add", scientist.name, "--role", "scientist", "--password-stdin",
                     input="short\n")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "already exists" in r.stderr and "8 characters" not in r.stderr


class _MemoryDirectory(UserDirectory):
    def __init__(self, users: dict[str, str]):
        self.users = dict(users)

    def list(self):
        return [UserRecord(n, r) for n, r in sorted(self.users.items())]

    def get(self, name):
        if name not in self.users:
            raise NotFoundError(f"no user named {name!r}")
        return UserRecord(name, self.users[name])

    def remove(self, name):
        self.get(name)
        del self.users[name]

    def set_role(self, name, role):
        self.get(name)
        self.users[name] = role
        return self.get(name)


def test_the_last_administrator_cannot_be_removed_or_demoted(tmp_path, monkeypatch):
    monkeypatch.setenv("AIDC_DATA_DIR", str(tmp_path))
    directory = _MemoryDirectory({"admin": "admin", "sci": "scientist"})
    users = PlatformUsers(DataDir(tmp_path), directory=directory)
    users.system_accounts = False  # no Unix accounts in this in-process test
    with pytest.raises(ConflictError, match="admin is the last administrator") as e:
        users.remove("admin")
    assert e.value.exit_code == 1 and "aidc user set-role NAME admin" in str(e.value)
    with pytest.raises(ConflictError, match="last administrator"):
        users.set_role("admin", "viewer")
    assert directory.users["admin"] == "admin"
    failures = [ev for ev in audit.read_events(DataDir(tmp_path).audit_log)
                if ev.get("target") == "admin" and ev.get("result") == "failure"]
    assert [ev["action"] for ev in failures] == ["remove", "set-role"]
    # with a second administrator, either may go
    users.set_role("sci", "admin")
    users.set_role("admin", "scientist")
    users.remove("admin")
    assert directory.users == {"sci": "admin"}
    with pytest.raises(AidcError):
        users.remove("sci")
    # taking the platform down: the last administrator goes when asked explicitly
    users.remove("sci", last_admin=True)
    assert directory.users == {}
