"""The audit log is tamper-evident: ``aidc audit verify`` names what was changed.

Events are written through the product's own path (:func:`aidc.security.audit.record`:
jupyter-events validation, then a link of the hash chain), by several processes at once,
into a data directory of the test's own; then the file is tampered with the way an intruder
with write access would (edit, delete, insert, reorder, cut the end, rewrite the whole chain
with fresh hashes), and the real ``aidc audit verify`` command must exit 1 and name the
record. The last test checks the running session platform's own log and ``aidc audit query``.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
import time

import pytest

from aidc.paths import DataDir
from aidc.security import audit, chain
from platform_helpers import run_aidc


def _write(data_dir, start: int, count: int) -> None:
    """``count`` events from two threads of this process (as the hub's executor threads)."""
    path = DataDir(data_dir).audit_log

    def some(first: int, n: int) -> None:
        for i in range(first, first + n):
            audit.record("user", path, actor="cli:root", action="add", target=f"user{i}",
                         result="success", role="scientist")

    other = threading.Thread(target=some, args=(start, count // 2))
    other.start()
    some(start + count // 2, count - count // 2)
    other.join()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A data directory whose audit log four processes of two threads each wrote 60 events
    into at once."""
    root = tmp_path_factory.mktemp("audit") / "data"
    (root / "logs").mkdir(parents=True)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write, args=(root, n * 100, 15)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return root


def _copy(written, tmp_path):
    shutil.copytree(written, tmp_path / "data")
    return tmp_path / "data"


def _verify(data_dir):
    r = run_aidc("audit", "verify", data_dir=data_dir)
    return r.returncode, r.stdout + r.stderr


def _lines(data_dir) -> list[bytes]:
    return DataDir(data_dir).audit_log.read_bytes().splitlines()


def _put(data_dir, lines: list[bytes]) -> None:
    DataDir(data_dir).audit_log.write_bytes(b"".join(line + b"\n" for line in lines))


def test_concurrent_writers_make_one_intact_chain(written):
    events = audit.read_events(DataDir(written).audit_log)
    assert [e["__seq__"] for e in events] == list(range(1, 61))
    assert sorted(e["target"] for e in events) == sorted(f"user{n * 100 + i}" for n in range(4) for i in range(15))
    assert all(e["__schema__"].endswith("/user") for e in events)  # still jupyter-events records
    assert oct(DataDir(written).audit_log.stat().st_mode & 0o777) == "0o600"
    code, out = _verify(written)
    assert code == 0 and "60 records, chain intact" in out, out


def test_every_kind_of_event_has_a_schema_that_checks_it():
    for kind in audit.SCHEMAS:
        base = {"actor": "alice", "target": "t", "result": "success"}
        assert audit.check(kind, {**base, "action": "no-such-action"}), kind  # refused
    valid = {"job": "end", "dataset": "put", "model": "deploy", "gpu": "claim", "access": "refused",
             "auth": "login", "user": "add", "server": "start", "secret": "read", "key": "rotate"}
    assert set(valid) == set(audit.SCHEMAS)
    for kind, action in valid.items():
        assert audit.check(kind, {"actor": "alice", "action": action, "target": "t", "result": "success"}) is None


def test_threads_of_one_process_make_one_chain(tmp_path):
    # the hub records from its executor threads too; they share one lock file
    log = chain.ChainedLog(DataDir(tmp_path).audit_log, audit.audit_key_path(DataDir(tmp_path).audit_log))

    def some(k: int) -> None:
        for i in range(150):
            log.append({"actor": f"thread{k}", "action": "login", "target": "hub", "result": "success",
                        "i": i})

    threads = [threading.Thread(target=some, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verdict = chain.verify(log.path, chain.load_key(log.key_path))
    assert verdict.ok and verdict.records == 600, verdict.problem


@pytest.mark.parametrize("tamper, expected", [
    ("edit", "record 20 was edited"),
    ("delete", "record(s) 20..20 were deleted"),
    ("insert", "line 22: record 20 comes after record 21: a record was inserted"),
    ("reorder", "record 21 follows record 19, and record 20 comes later (audit.jsonl line 21): "
                "records were reordered"),
    ("cut", "the log ends at record 57, but the signed head names record 60: the log was cut"),
    ("edit-last", "record 60 differs from the signed head"),
    ("rewrite", "record 60 differs from the signed head"),
])
def test_verify_names_the_first_tampered_record(written, tmp_path, tamper, expected):
    data_dir = _copy(written, tmp_path)
    lines = _lines(data_dir)
    if tamper == "edit":  # a role changed after the fact, the line otherwise intact
        lines[19] = lines[19].replace(b'"role":"scientist"', b'"role":"admin"')
    elif tamper == "delete":
        del lines[19]
    elif tamper == "insert":  # a copy of an earlier record slipped in
        lines.insert(21, lines[19])
    elif tamper == "reorder":
        lines[19], lines[20] = lines[20], lines[19]
    elif tamper == "cut":
        lines = lines[:57]
    elif tamper == "edit-last":
        lines[59] = lines[59].replace(b'"result":"success"', b'"result":"failure"')
    elif tamper == "rewrite":  # edit record 10, then recompute every hash after it (no key)
        lines[9] = lines[9].replace(b'"role":"scientist"', b'"role":"admin"')
        prev = chain.line_hash(lines[9])
        for i in range(10, len(lines)):
            event = json.loads(lines[i])
            event["__prev__"] = prev
            lines[i] = chain.canonical(event)
            prev = chain.line_hash(lines[i])
    _put(data_dir, lines)
    code, out = _verify(data_dir)
    assert code == 1, out
    assert "TAMPERED" in out and expected in out, out


def test_a_forged_head_is_caught(written, tmp_path):
    data_dir = _copy(written, tmp_path)
    lines = _lines(data_dir)[:50]
    _put(data_dir, lines)
    head = DataDir(data_dir).logs / "audit.head"
    forged = json.loads(head.read_bytes())
    forged.update(seq=50, hash=chain.line_hash(lines[-1]))  # the cut hidden, without the key
    head.write_bytes(chain.canonical(forged))
    code, out = _verify(data_dir)
    assert code == 1 and "audit.head) does not match its signature" in out, out


def test_chain_goes_on_across_rotated_files_and_a_dead_writer(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    log = chain.ChainedLog(DataDir(data_dir).audit_log, audit.audit_key_path(DataDir(data_dir).audit_log),
                           max_bytes=2000)
    for i in range(40):
        log.append({"actor": "alice", "action": "login", "target": "hub", "result": "success",
                    "__timestamp__": f"2026-12-03T10:{i:02d}:00.000000Z"})
    rotated = chain.rotated_files(log.path)
    assert len(rotated) >= 3 and rotated[0].name == "audit.000000000001.jsonl"
    # a writer that died after its line, before the head: the next one carries on
    head = log.head_path.read_bytes()
    log.append({"actor": "bob", "action": "login", "target": "hub", "result": "failure",
                "__timestamp__": "2026-12-03T11:00:00.000000Z"})
    log.head_path.write_bytes(head)
    log.append({"actor": "bob", "action": "login", "target": "hub", "result": "success",
                "__timestamp__": "2026-12-03T11:01:00.000000Z"})
    code, out = _verify(data_dir)
    assert code == 0 and "42 records, chain intact" in out, out
    events = audit.read_events(log.path)
    assert [e["__seq__"] for e in events] == list(range(1, 43))

    r = run_aidc("audit", "query", "--user", "bob", "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["result"] for x in r.stdout.splitlines()] == ["failure", "success"]
    r = run_aidc("audit", "query", "--action", "login", "--since", "2026-12-03T10:30:00Z",
                 "--until", "2026-12-03T10:35:00Z", "--json", data_dir=data_dir)
    assert [json.loads(x)["__timestamp__"][11:16] for x in r.stdout.splitlines()] == [
        f"10:{m}" for m in range(30, 36)]
    r = run_aidc("audit", "query", "--since", "yesterday-ish", data_dir=data_dir)
    assert r.returncode == 2 and "--since must be epoch seconds or an ISO 8601 time" in r.stderr


def test_the_platforms_own_log_verifies_and_answers_queries(platform, scientist):
    session, r = platform.login(scientist.name, scientist.password)
    assert r.status_code == 200
    r = platform.cli("audit", "verify")
    assert r.returncode == 0 and "chain intact" in r.stdout, r.stdout + r.stderr
    r = platform.cli("audit", "query", "--user", scientist.name, "--action", "login", "--json")
    assert r.returncode == 0, r.stderr
    logins = [json.loads(x) for x in r.stdout.splitlines()]
    assert logins and logins[-1]["actor"] == scientist.name and logins[-1]["result"] == "success"
    r = platform.cli("audit", "query", "--user", scientist.name)
    assert scientist.name in r.stdout and "login" in r.stdout


def _audit(platform, *args: str) -> list[dict]:
    r = platform.cli("audit", "query", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()]


def test_services_report_through_the_hubs_writer(platform, scientist, other_scientist):
    import requests

    import jobs_helpers as jh

    jh.put(platform, scientist, "audited.ipynb", jh.notebook("print('audited')"))
    job = jh.submit(platform, scientist, "audited.ipynb", gpus=1)
    jh.wait(platform, scientist, job["id"])
    # someone else's job does not exist for them, and the refusal is recorded
    r = jh.jobs_api(platform, other_scientist.token, "GET", f"/jobs/{job['id']}")
    assert r.status_code == 404

    deadline = time.monotonic() + 60
    while True:  # the service sends in the background; the hub writes what it gets
        events = [e for e in _audit(platform) if e.get("target", "").startswith((job["id"], f"GET /services/jobs/api/jobs/{job['id']}"))]
        actions = {(e["actor"], e["action"]) for e in events}
        if {(scientist.name, "submit"), (scientist.name, "end"), (other_scientist.name, "refused")} <= actions:
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.2)
    assert all(e["service"] == "jobs" for e in events), events
    end = next(e for e in events if e["action"] == "end")
    assert end["state"] == "completed" and end["result"] == "success"
    refused = next(e for e in events if e["action"] == "refused")
    assert refused["status"] == 404 and refused["result"] == "failure"
    # the job's GPU, granted and freed by the jobs service's ledger
    while True:
        gpu = [(e["action"], e["actor"], e["service"]) for e in _audit(platform, "--user", scientist.name)
               if e.get("target") == f"job:{job['id']}"]
        if len(gpu) == 2:
            break
        assert time.monotonic() < deadline, gpu
        time.sleep(0.2)
    assert gpu == [("claim", scientist.name, "jobs"), ("release", scientist.name, "jobs")]
    assert platform.cli("audit", "verify").returncode == 0

    # only a platform service's token may post events: a user's token is refused
    r = requests.post(f"{platform.url}/hub/api/aidc/audit", timeout=30,
                      headers={"Authorization": f"token {scientist.token}"},
                      json={"events": [{"kind": "job", "data": {"actor": "x", "action": "end",
                                                                   "target": "forged", "result": "success"}}]})
    assert r.status_code == 403, r.text
    assert not _audit(platform, "--user", "x")


def test_changes_through_jupyterhubs_own_api_are_audited(platform, admin, scientist):
    """The admin page and the REST API change users without passing through aidc's code."""
    import secrets

    from platform_helpers import User

    name = f"api{secrets.token_hex(3)}"
    platform.users.append(User(name, "", ""))  # its Unix account goes with the others
    hub = platform.api(admin.token)
    api = f"{platform.url}/hub/api"
    assert hub.post(f"{api}/users/{name}", timeout=30).status_code == 201
    assert hub.post(f"{api}/groups/viewer/users", json={"users": [name]}, timeout=30).status_code == 200
    assert hub.post(f"{api}/users/{name}/tokens", json={"note": "audit test"}, timeout=30).status_code == 201
    # a scientist may not add users: refused, and the refusal recorded
    r = platform.api(scientist.token).post(f"{api}/users/not{name}", timeout=30)
    assert r.status_code == 403

    mine = [(e["actor"], e["action"], e.get("reason")) for e in _audit(platform, "--user", name)]
    assert (admin.name, "add", None) in mine, mine
    assert (admin.name, "set-role", "added to group viewer") in mine, mine
    assert (admin.name, "issue-token", None) in mine, mine
    refused = [e for e in _audit(platform, "--user", scientist.name, "--action", "refused")
               if e["target"] == f"POST /hub/api/users/not{name}"]
    assert refused and refused[-1]["status"] == 403 and refused[-1]["service"] == "hub"
