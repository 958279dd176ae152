"""One audit stream for security-relevant actions: who did what to whom, when, and how it went."""

import os
import stat

REQUIRED = {"actor", "action", "target", "result", "__timestamp__", "__schema__", "__schema_version__"}


def _events(platform, kind: str, target: str) -> list[dict]:
    return [e for e in platform.audit_events()
            if e["__schema__"].endswith("/" + kind) and e["target"].startswith(target)]


def test_user_and_role_changes_are_recorded(platform):
    user = platform.new_user("viewer")
    platform.cli("user", "set-role", user.name, "scientist")
    platform.cli("user", "add", user.name, "--role", "viewer", "--password-stdin", input="whatever-pw\n")
    events = _events(platform, "user", user.name)
    # the hub gives every user it creates the default role (aidc.hub.auth.DefaultRoleMixin),
    # then `aidc user add` sets the one it was asked for: both are recorded
    assert [(e["actor"], e["action"], e["result"], e.get("role")) for e in events] == [
        ("hub", "add", "success", "scientist"),
        ("cli:root", "add", "success", "viewer"),
        ("cli:root", "issue-token", "success", None),
        ("cli:root", "set-role", "success", "scientist"),
        ("cli:root", "add", "failure", "viewer"),
    ]
    assert all(REQUIRED <= set(e) for e in events)
    assert "already exists" in events[-1]["reason"]


def test_server_start_and_stop_are_recorded(platform):
    user = platform.new_user("scientist")
    platform.start_server(user)
    platform.stop_server(user)
    events = _events(platform, "server", f"{user.name}/")
    assert [(e["action"], e["result"]) for e in events] == [("start", "success"), ("stop", "success")]
    assert events[0]["actor"] == user.name
    assert events[0]["system_user"] == platform.prefix + user.name


def test_audit_log_is_private(platform):
    path = platform.data_dir / "logs" / "audit.jsonl"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(platform.data_dir).st_mode) == 0o700
