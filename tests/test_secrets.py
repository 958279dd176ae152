"""Secrets for jobs end to end: set from standard input, a job's kernel gets the value as an
environment variable, and the value shows nowhere the platform keeps or shows (output
notebook, logs and events, the job's record and error, the API, the bytes on disk), also
printed as base64, repr, JSON, hex or in pieces; per user, encrypted, audited."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path

import pytest

from aidc import artifacts
from aidc import secrets as secrets_api
from aidc.cli.main import main as cli
from aidc.client import Client
from aidc.errors import NotFoundError
from aidc.jobs.secrets import SecretStore
from aidc.jobs.store import JobStore
from aidc.security import crypto
from aidc.security.redact import Redactor, StreamRedactor
from jobs_helpers import jobs_api, notebook, put, wait, wait_service
from mocking import FakeDaskClient
from test_jobs_manager import jobs  # noqa: F401  (the fixture: a jobs service's parts, in-process)

LEAKY = notebook(
    "import base64, hashlib, json, os, sys, time\n"
    "import aidc\n"
    "v = os.environ['API_KEY']\n"
    "aidc.record('sha', hashlib.sha256(v.encode()).hexdigest())\n"
    "aidc.record('leak', v)\n"
    "print('plain:', v)\n"
    "print('b64:', base64.b64encode(v.encode()).decode())\n"
    "print('basic:', base64.b64encode(('user:' + v).encode()).decode())\n"
    "print('url:', base64.urlsafe_b64encode(v.encode()).decode().rstrip('='))\n"
    "print('repr:', repr(v), ascii(v))\n"
    "print('json:', json.dumps({'k': v}))\n"
    "print('hex:', v.encode().hex())\n"
    "print('err:', v, file=sys.stderr)\n"
    "half = len(v) // 2\n"
    "print('pieces:', v[:half], end='')\n"
    "sys.stdout.flush()\n"
    "time.sleep(0.4)  # the halves reach the platform in separate messages\n"
    "print(v[half:])\n"
    "os.system('printf \"sh: %s\\\\n\" \"$API_KEY\"')  # a subprocess's own output",
    "if os.environ['AIDC_JOB_ATTEMPT'] == '1':\n"
    "    raise RuntimeError('bad key ' + v)\n"
    "v",
)


def shown_forms(value: str) -> list[str]:
    """What of ``value`` must not be found (each written out here, not taken from aidc)."""
    raw = value.encode()
    basic = base64.b64encode(b"user:" + raw).decode()
    half = len(value) // 2  # the pieces the job prints
    return [value[:35], value[:half], value[half:], base64.b64encode(raw).decode(), basic,
            basic[8:-4],
            base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex(), repr(value),
            ascii(value), json.dumps(value)]


def assert_hidden(where: str, text: str, value: str) -> None:
    for form in shown_forms(value):
        assert form not in text, f"{where} shows the secret as {form!r}"


def audited(platform, **match) -> list[dict]:
    """The audit events with these fields, once the hub's writer has them (it gets a
    service's events shortly after they happen)."""
    deadline = time.monotonic() + 30
    while True:
        found = [e for e in platform.audit_events() if e.get("__schema__", "").endswith("/secret")
                 and all(e.get(k) == v for k, v in match.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_the_redactor_finds_a_value_in_each_form_and_across_chunks():
    value = "pa55-wörd\"x"
    r = Redactor({"PW": value})
    raw = value.encode()
    for shown in (value, repr(value), ascii(value), json.dumps([value]), raw.hex(), str(raw),
                  base64.b64encode(raw).decode(),
                  base64.urlsafe_b64encode(b"ab" + raw + b"c").decode(),
                  base64.b64encode(b"user:" + raw).decode().rstrip("=")):
        redacted = r.text(shown)
        assert "[secret PW]" in redacted and "pa55-w" not in redacted, shown
    assert r.scrub({"k": [value, 3]}) == {"k": ["[secret PW]", 3]}
    assert r.text("pa55-w and the rest") == "pa55-w and the rest"  # a prefix alone stays
    stream = StreamRedactor(r)
    pieces = [stream.feed(part) for part in ("key=pa5", "5-wö", "rd\"x ok", " and pa")]
    assert "".join(pieces) == "key=[secret PW] ok and " and stream.release() == "pa"


def test_values_are_encrypted_per_owner_and_name_and_rewrapped_by_key_rotation(tmp_path, capsys):
    data_dir = tmp_path / "platform"
    (data_dir / "secrets").mkdir(parents=True)
    store = SecretStore(JobStore(data_dir=str(data_dir)), data_dir=str(data_dir))
    store.encrypt_at_rest()
    try:
        store.put("ann", "TOKEN", "ann's token value")
        store.put("bob", "TOKEN", "bob's token value")
        ann = Path(store.root, "ann", "TOKEN")
        old = crypto.key_of(ann.read_bytes())
        assert old and b"token value" not in ann.read_bytes()
        assert cli(["keys", "rotate", "--data-dir", str(data_dir)]) == 0
        assert "2 object(s) re-wrapped" in capsys.readouterr().out
        assert crypto.key_of(ann.read_bytes()) not in (None, old)
        assert store.value("ann", "TOKEN") == "ann's token value"
        # a value copied over another user's file does not decrypt there
        Path(store.root, "bob", "TOKEN").write_bytes(ann.read_bytes())
        with pytest.raises(crypto.DecryptionError, match="bob/TOKEN"):
            store.value("bob", "TOKEN")
    finally:
        artifacts._ENCRYPTED.pop(store.root, None)


async def test_each_attempt_reads_the_secret_again_also_after_a_restart(jobs):  # noqa: F811
    store = SecretStore(jobs.store, data_dir=str(jobs.data_dir))
    store.put("alice", "TOKEN", "first-value")
    (await jobs.start()).secrets = store
    job_id = jobs.submit(secrets=["TOKEN"], retries=2)
    spec = (await jobs.task(job_id, 1)).spec
    assert spec["secrets"] == {"TOKEN": "first-value"} and "first-value" not in repr(spec)
    assert jobs.job(job_id)["secrets"] == ["TOKEN"]
    assert "first-value" not in json.dumps(jobs.store.job(job_id), default=str)
    # the service restarts: the attempt is retried with the value read again (replaced meanwhile)
    store.put("alice", "TOKEN", "second-value")
    (await jobs.restart(FakeDaskClient())).secrets = store
    jobs.clock.advance(2)
    assert (await jobs.task(job_id, 2)).spec["secrets"] == {"TOKEN": "second-value"}
    # deleted while the job waits for its next attempt: that attempt cannot start, and says why
    store.delete("alice", "TOKEN")
    jobs.client.lose_worker()
    await jobs.status(job_id, "queued")
    jobs.clock.advance(4)
    done = await jobs.status(job_id, "failed")
    assert "the secret 'TOKEN' no longer exists" in done["error"], done["error"]
    assert [t.attempt for t in jobs.client.tasks_of(job_id)] == [2]  # attempt 3 never ran


async def test_the_hub_refuses_to_remove_a_user_whose_secrets_stay():
    """When the jobs service does not answer, the hub's removal of a user stops with a 503
    saying why, rather than leave their secrets to a successor of that name; a hub without
    the jobs service has none to remove. (The hub's app here: its map of services, with a
    jobs service at a port nothing listens on.)"""
    import socket
    from types import SimpleNamespace

    from tornado import web

    from aidc.hub.removal import remove_secrets

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    jobs_service = SimpleNamespace(url=f"http://127.0.0.1:{port}", prefix="/services/jobs/", api_token="t")
    with pytest.raises(web.HTTPError) as refused:
        await remove_secrets(SimpleNamespace(_service_map={"jobs": jobs_service}), "alice")
    assert refused.value.status_code == 503
    assert "the user 'alice' was not removed: their secrets for jobs could not be removed " \
           "(the jobs service did not answer" in refused.value.log_message
    assert await remove_secrets(SimpleNamespace(_service_map={}), "alice") is None


@pytest.fixture(scope="module")
def jobs_up(platform, scientist):
    wait_service(platform, scientist.token)
    return platform


def test_a_secret_reaches_its_jobs_kernel_and_nothing_the_platform_keeps(jobs_up, scientist,
                                                                         other_scientist):
    platform = jobs_up
    # letters for a form found in any encoding, and a quote, a backslash and a non-ASCII
    # letter so that repr, ascii and JSON each write it differently
    value = f"sk-{secrets.token_hex(16)}\"\\é"
    began = time.time() - 1  # only files written since can hold it (it is new)
    env = {"AIDC_URL": platform.url, "AIDC_TOKEN": scientist.token}

    refused = platform.cli("secrets", "set", "API_KEY", value, env=env)
    assert refused.returncode == 2 and "never an argument" in refused.stderr
    r = platform.cli("secrets", "set", "API_KEY", input=value + "\n", env=env)
    assert r.returncode == 0 and "stored secret API_KEY" in r.stdout, r.stderr
    listed = platform.cli("secrets", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "API_KEY" and entry["created"] and entry["updated"]
    assert_hidden("aidc secrets list", listed.stdout, value)
    # no way to read a value back, and another user's secret of that name is not theirs
    mine = Client(platform.url, scientist.token)
    theirs = Client(platform.url, other_scientist.token)
    assert secrets_api.list(client=theirs) == []
    for method in ("GET", "DELETE"):
        r = jobs_api(platform, other_scientist.token, method, "/secrets/API_KEY")
        assert r.status_code == 404 and "no secret 'API_KEY'" in r.json()["message"]
    put(platform, scientist, "sec/leaky.ipynb", LEAKY)
    put(platform, other_scientist, "sec/leaky.ipynb", LEAKY)
    r = jobs_api(platform, other_scientist.token, "POST", "/jobs",
                 json={"path": "sec/leaky.ipynb", "secrets": ["API_KEY"]})
    assert r.status_code == 400 and "no secret 'API_KEY'" in r.json()["message"]
    r = jobs_api(platform, scientist.token, "POST", "/jobs",
                 json={"path": "sec/leaky.ipynb", "secrets": ["API_KEY", "NOT_SET"]})
    assert r.status_code == 400 and "no secret 'NOT_SET'" in r.json()["message"]
    bad = jobs_api(platform, scientist.token, "PUT", "/secrets/PATH", json={"value": "x" * 20})
    assert bad.status_code == 400 and "sets that variable in jobs itself" in bad.json()["message"]

    # the first attempt fails quoting the value, the retry (which reads the secret again) completes
    r = platform.cli("jobs", "submit", "sec/leaky.ipynb", "--secret", "API_KEY", "--retries", "1",
                     "--json", env=env)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    done = wait(platform, scientist, job_id)
    assert done["status"] == "completed", done
    assert done["secrets"] == ["API_KEY"]
    assert done["metrics"]["sha"] == hashlib.sha256(value.encode()).hexdigest()  # the kernel had it
    assert done["metrics"]["leak"] == "[secret API_KEY]"

    logs = jobs_api(platform, scientist.token, "GET", f"/jobs/{job_id}/logs").text
    for line in ("plain: [secret API_KEY]", "b64: [secret API_KEY]", "hex: [secret API_KEY]",
                 "json: {\"k\": \"[secret API_KEY]\"}", "err: [secret API_KEY]",
                 "sh: [secret API_KEY]", "pieces: "):
        assert line in logs, logs  # the pieces: stderr may arrive between them (each stream is
        # redacted as one text, and neither half shows: assert_hidden below)
    events = jobs_api(platform, scientist.token, "GET", f"/jobs/{job_id}/events").text
    assert "bad key [secret API_KEY]; retrying" in events  # attempt 1's error, in its status event
    output = jobs_api(platform, scientist.token, "GET", f"/jobs/{job_id}/output").text
    assert "pieces: [secret API_KEY]" in output
    assert "'[secret API_KEY]'" in output  # the cell's value (its repr) too
    record = jobs_api(platform, scientist.token, "GET", f"/jobs/{job_id}").text
    listing = jobs_api(platform, scientist.token, "GET", "/jobs").text
    for where, text in (("logs", logs), ("events", events), ("output notebook", output),
                        ("job record", record), ("jobs list", listing)):
        assert_hidden(where, text, value)

    # nothing on disk has it: databases, logs, the audit log, artifacts; the value itself is
    # stored encrypted under the owner's name
    stored = Path(platform.data_dir, "jobs", "secrets", scientist.name, "API_KEY")
    assert stored.read_bytes().startswith(b"AIDCENC1")
    forms = [f.encode() for f in shown_forms(value)]
    for path in Path(platform.data_dir).rglob("*"):
        try:
            written = path.is_file() and path.stat().st_mtime >= began
            data = path.read_bytes() if written else b""
        except FileNotFoundError:  # a temporary file of a running service, gone meanwhile
            continue
        assert not any(f in data for f in forms), f"{path} holds the secret"

    # audited: set, and read by each attempt of the job
    target = f"{scientist.name}/API_KEY"
    assert audited(platform, action="set", actor=scientist.name, target=target, result="success")
    reads = audited(platform, action="read", target=target, job=job_id)
    deadline = time.monotonic() + 30
    while len(reads) < 2 and time.monotonic() < deadline:
        reads = audited(platform, action="read", target=target, job=job_id)
    assert sorted(e["attempt"] for e in reads) == [1, 2]

    # replaced through the Python API, then deleted through the CLI
    replaced = secrets_api.set("API_KEY", value[::-1], client=mine)
    assert replaced["created"] == entry["created"] and replaced["updated"] > entry["updated"]
    r = platform.cli("secrets", "delete", "API_KEY", env=env)
    assert r.returncode == 0 and "deleted secret API_KEY" in r.stdout, r.stderr
    assert secrets_api.list(client=mine) == [] and not stored.exists()
    with pytest.raises(NotFoundError, match="no secret 'API_KEY'"):
        secrets_api.delete("API_KEY", client=mine)
    assert audited(platform, action="delete", actor=scientist.name, target=target)


def test_a_removed_users_secrets_go_with_them(jobs_up, admin, scientist):
    """An admin removes a user through JupyterHub's REST API (what its admin page does; ``aidc
    user remove`` on a running platform too): their secrets' rows and encrypted values go, each
    removal audited, and a new user given the same name finds none. Nobody but the hub may
    ask the jobs service to remove someone's secrets."""
    from platform_helpers import User

    platform = jobs_up
    hub = platform.api(admin.token)
    api = f"{platform.url}/hub/api"
    name = f"gone{secrets.token_hex(3)}"
    platform.users.append(User(name, "", ""))  # removed with the others at the end

    def new_token() -> str:
        assert hub.post(f"{api}/users/{name}", timeout=30).status_code == 201
        r = hub.post(f"{api}/users/{name}/tokens", json={"note": "removal test"}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    token = new_token()
    for secret in ("GONE_A", "GONE_B"):
        r = jobs_api(platform, token, "PUT", f"/secrets/{secret}", json={"value": f"v-{secrets.token_hex(8)}"})
        assert r.status_code == 201, r.text
    folder = Path(platform.data_dir, "jobs", "secrets", name)
    assert sorted(p.name for p in folder.iterdir()) == ["GONE_A", "GONE_B"]
    for who in (admin, scientist):  # the jobs service's removal route is the hub's alone
        r = jobs_api(platform, who.token, "DELETE", f"/users/{name}/secrets")
        assert r.status_code == 403 and "only the hub" in r.json()["message"], r.text
    assert folder.exists()

    assert hub.delete(f"{api}/users/{name}", timeout=30).status_code == 204
    assert not folder.exists()  # gone before the hub answered
    for secret in ("GONE_A", "GONE_B"):
        (event,) = audited(platform, action="delete", target=f"{name}/{secret}")
        # the actor is the admin who removed the user, whom JupyterHub does not tell delete_user
        assert (event["actor"], event["service"], event["result"]) == (admin.name, "jobs", "success"), event
        assert event["reason"] == f"the user {name} was removed"

    token = new_token()  # the same name again: a new user, with no secrets
    assert jobs_api(platform, token, "GET", "/secrets").json() == {"secrets": []}
    r = jobs_api(platform, token, "GET", "/secrets/GONE_A")
    assert r.status_code == 404, r.text
