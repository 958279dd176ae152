"""The isolation matrix (issue 17): every actor against every kind of thing a scientist owns,
over every API, for reading, changing and deleting; the one place that lists them all.

The owner is a scientist made for this module, whose things are set up once
(:func:`world`): a running server with a kernel and files, a one-run sweep (its run is
*the job*, with output, logs and events), a schedule, a deployed model with an alias, a
dataset with an alias and a pending upload, a secret. Each case is then one HTTP request.

Actors: ``other`` (another scientist), ``viewer``, ``anonymous``, ``expired`` (an owner's
token past its expiry), ``revoked`` (an owner's token deleted), ``reduced`` (an owner's
token that may use the metrics service only), ``job-ended`` (the job's own token after its
run ended), and last ``owner``, for whom what is allowed works (deletions run last).

What a refusal must be: to someone signed in, another user's thing is a 404, as if it did
not exist (a role that may not use a route at all gets 403 before anything is looked up:
``ROLE_REFUSALS``); without valid credentials, 401 from aidc's services, or JupyterHub's own
403 (the hub, user servers, a cookie-less write without the XSRF token); a dashboard page
sends them to sign in (302). Every 403/404 given to a signed-in caller is an ``access``
event in the audit log (:func:`test_every_refusal_was_audited`): by the hub, a service, the
dashboards' Voila, or the owner's own server, which reports it to the hub with the refused
token for the hub to check (:func:`test_a_server_cannot_forge_refusals`).

A secret's name is the caller's own: another scientist's ``PUT`` of the owner's secret's name
makes a secret of theirs (allowed), and the owner's is still read and deleted by the owner.
Not rows: deleting a job, a sweep, a model or a dataset, which no API offers.

Beyond the public URL, another Unix account asks every TCP port the platform's processes
listen on, directly and without credentials
(:func:`test_every_port_the_platform_listens_on_refuses_another_account`).

Cells covered elsewhere, and not repeated: a replica's socket answers no other account
(``test_models_security.test_replicas_answer_no_local_account_without_a_token``), a revoked
token is refused within seconds once cached (``test_revocation``), an expired or removed
user's token (``test_tokens``), a job's kernel cannot read another user's notebook through
a link (``test_jobs_security``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil
import pytest
import requests

from jobs_helpers import FINAL, home, jobs_api, notebook, put, wait_service
from platform_helpers import execute, unix_name
from test_models import models_api, scale_onnx

ROW = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}
SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
             "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}
CSV = b"a,b\n1,2\n"


@dataclass(frozen=True)
class Case:
    resource: str
    action: str  # read, write, delete
    method: str
    path: str  # formatted with the world's names
    owner: tuple = (200,)  # what the owner gets
    body: object = None
    #: actors (besides the owner) for whom this is allowed, with what they get
    allowed: tuple = ()
    #: a browser page (refused without credentials by sending to sign in)
    page: bool = False

    @property
    def id(self) -> str:
        tail = self.path.split("?")[0].rstrip("/").split("/")[-1].strip("{}")
        return f"{self.resource}-{self.action}-{self.method}-{tail}"


CASES = [
    Case("server", "read", "GET", "/user/{o}/api/status"),
    Case("server", "read", "GET", "/hub/api/users/{o}",
         allowed=(("reduced", 200),)),  # JupyterHub: any token of a user may read who it is
    Case("server", "write", "POST", "/hub/api/users/{o}/server", owner=(400,)),  # running already
    Case("kernels", "read", "GET", "/user/{o}/api/kernels"),
    Case("kernels", "write", "POST", "/user/{o}/api/kernels", owner=(201,), body={"name": "python3"}),
    Case("kernels", "delete", "DELETE", "/user/{o}/api/kernels/{kernel}", owner=(204,)),
    Case("contents", "read", "GET", "/user/{o}/api/contents/matrix/notes.txt"),
    Case("contents", "write", "PUT", "/user/{o}/api/contents/matrix/new.txt", owner=(201,),
         body={"type": "file", "format": "text", "content": "mine"}),
    Case("contents", "delete", "DELETE", "/user/{o}/api/contents/matrix/trash.txt", owner=(204,)),
    Case("jobs", "read", "GET", "/services/jobs/api/jobs/{job}"),
    Case("jobs", "write", "POST", "/services/jobs/api/jobs/{job}/cancel", owner=(409,)),  # ended
    Case("job outputs", "read", "GET", "/services/jobs/api/jobs/{job}/output"),
    Case("job outputs", "read", "GET", "/services/jobs/api/jobs/{job}/input"),
    Case("job logs", "read", "GET", "/services/jobs/api/jobs/{job}/logs"),
    Case("job events", "read", "GET", "/services/jobs/api/jobs/{job}/events"),
    Case("sweeps", "read", "GET", "/services/jobs/api/sweeps/{sweep}"),
    Case("schedules", "read", "GET", "/services/jobs/api/schedules/{schedule}"),
    Case("schedules", "write", "POST", "/services/jobs/api/schedules/{schedule}/pause"),
    Case("schedules", "delete", "DELETE", "/services/jobs/api/schedules/{schedule}", owner=(204,)),
    Case("models", "read", "GET", "/services/models/api/models/{model}"),
    Case("models", "write", "PATCH", "/services/models/api/models/{model}", body={"visibility": "private"}),
    Case("versions", "read", "GET", "/services/models/api/models/{model}/versions/1"),
    Case("versions", "read", "GET", "/services/models/api/models/{model}/versions/1/artifact"),
    Case("versions", "write", "POST", "/services/models/api/models/{model}/versions", owner=(400,),
         body={"not": "multipart"}),  # the owner may; this body is not an upload
    Case("versions", "write", "PUT", "/services/models/api/models/{model}/aliases/stable",
         body={"version": 1}),
    Case("versions", "delete", "DELETE", "/services/models/api/models/{model}/aliases/stable",
         owner=(204,)),
    Case("v2 inference", "read", "GET", "/services/models/v2/models/{model}"),
    Case("v2 inference", "write", "POST", "/services/models/v2/models/{model}/infer", body=ROW),
    Case("deployments", "read", "GET", "/services/models/api/models/{model}/deployment"),
    Case("deployments", "write", "POST", "/services/models/api/models/{model}/deployment/rollback",
         owner=(409,)),  # nothing to roll back to
    Case("deployments", "delete", "DELETE", "/services/models/api/models/{model}/deployment",
         owner=(204,)),
    Case("datasets", "read", "GET", "/services/data/api/datasets/{dataset}"),
    Case("datasets", "read", "GET", "/services/data/api/datasets/{dataset}/versions/1"),
    Case("datasets", "read", "GET", "/services/data/api/datasets/{dataset}/versions/1/files/t.csv"),
    Case("datasets", "write", "PUT", "/services/data/api/datasets/{dataset}/aliases/stable",
         body={"version": 1}),
    Case("datasets", "write", "POST", "/services/data/api/datasets/{dataset}/uploads", owner=(201,),
         body={"files": [{"name": "u.csv", "size": 1}]}),
    Case("datasets", "delete", "DELETE", "/services/data/api/datasets/{dataset}/uploads/{upload}",
         owner=(204,)),
    Case("secrets", "read", "GET", "/services/jobs/api/secrets/MATRIX_SECRET"),
    Case("secrets", "delete", "DELETE", "/services/jobs/api/secrets/MATRIX_SECRET", owner=(204,)),
    # after the delete: another scientist's PUT of that name makes their own secret (the owner's
    # stays theirs), which their DELETE above would otherwise have found
    Case("secrets", "write", "PUT", "/services/jobs/api/secrets/MATRIX_SECRET",
         body={"value": "another-value-9"}, allowed=(("other", 201),)),
    Case("audit log", "write", "POST", "/hub/api/aidc/audit", owner=(403,),
         body={"events": [{"kind": "access", "data": {"actor": "x", "action": "refused",
                                                       "target": "x", "result": "failure"}}]}),
    Case("metrics", "read", "GET", "/services/metrics/api/history?metric=user_cpu_percent&user={o}",
         allowed=(("viewer", 200), ("reduced", 200))),
    Case("metrics", "read", "GET", "/services/metrics/metrics", owner=(403,), allowed=(("viewer", 200),)),
    Case("dashboards", "read", "GET", "/services/dashboards/", page=True,
         allowed=(("other", 200), ("viewer", 200))),
    # last: the owner's stop of their own server (after every other case of the owner)
    Case("server", "delete", "DELETE", "/hub/api/users/{o}/server", owner=(202, 204)),
]

#: (actor, case id) refused by the role before anything is looked up: 403, and nothing revealed
ROLE_REFUSALS = {("other", "metrics-read-GET-metrics"), ("other", "audit log-write-POST-audit")}

ACTORS = ["other", "viewer", "anonymous", "expired", "revoked", "reduced", "job-ended", "owner"]
SIGNED_IN = {"other", "viewer", "reduced"}


def params():
    out = []
    for actor in ACTORS:
        cases = CASES if actor != "owner" else sorted(CASES, key=lambda c: (
            c.action == "delete", c.resource == "server" and c.action == "delete"))
        out += [pytest.param(actor, c, id=f"{actor}-{c.id}") for c in cases]
    return out


# --- the owner's world --------------------------------------------------------------------------


def wait_refused(platform, token: str) -> None:
    """Until the hub no longer accepts ``token`` (an expiry or a revocation has taken effect)."""
    deadline = time.monotonic() + 60
    while platform.hub(token, "GET", "/user").status_code == 200:
        assert time.monotonic() < deadline, "the hub still accepts the token"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(platform, other_scientist, viewer, tmp_path_factory):
    owner = platform.new_user("scientist")
    r = platform.hub(owner.token, "POST", f"/users/{owner.name}/server")  # ready by the kernel, below
    assert r.status_code in (201, 202), r.text
    wait_service(platform, owner.token)
    api = platform.api(owner.token)
    put(platform, owner, "matrix/job.ipynb", notebook(
        "import os, tempfile\nopen('job-token.txt', 'w').write(os.environ['AIDC_TOKEN'])\n"
        "open('job-tmp.txt', 'w').write(tempfile.gettempdir())\nprint('ran', n)",
        parameters="n = 0"))
    r = jobs_api(platform, owner.token, "POST", "/sweeps", json={
        "path": "matrix/job.ipynb", "grid": {"n": [1]}})
    assert r.status_code == 201, r.text
    sweep = r.json()
    job = sweep["runs"][0]["job"]
    names = {"o": owner.name, "sweep": sweep["id"], "job": job,
             "model": f"matrix-{os.urandom(3).hex()}", "dataset": f"matrix-{os.urandom(3).hex()}"}
    r = jobs_api(platform, owner.token, "POST", "/schedules", json={
        "path": "matrix/job.ipynb", "cron": "0 3 * * *", "timezone": "UTC"})
    assert r.status_code == 201, r.text
    names["schedule"] = r.json()["id"]
    assert jobs_api(platform, owner.token, "PUT", "/secrets/MATRIX_SECRET",
                    json={"value": "s3cr3t-matrix"}).status_code in (200, 201)
    # a dataset with an alias and a pending upload
    data = f"{platform.url}/services/data/api/datasets/{names['dataset']}"
    files = [{"name": "t.csv", "size": len(CSV), "sha256": hashlib.sha256(CSV).hexdigest()}]
    upload = api.post(f"{data}/uploads", json={"files": files}, timeout=60).json()["upload"]
    assert api.put(f"{data}/uploads/{upload}/files/t.csv", data=CSV, timeout=60).status_code == 200
    assert api.post(f"{data}/uploads/{upload}", timeout=60).status_code == 201
    assert api.put(f"{data}/aliases/stable", json={"version": 1}, timeout=60).status_code == 200
    names["upload"] = api.post(f"{data}/uploads", json={"files": files}, timeout=60).json()["upload"]
    # a model with an alias, deployed with one replica
    raw = scale_onnx(tmp_path_factory.mktemp("matrix") / "m.onnx").read_bytes()
    meta = {"format": "onnx", "filename": "m.onnx", "signature": SIGNATURE}
    r = models_api(platform, owner.token, "POST", f"/models/{names['model']}/versions",
                   data={"metadata": json.dumps(meta)}, files={"artifact": ("m.onnx", raw)})
    assert r.status_code == 201, r.text
    assert models_api(platform, owner.token, "PUT", f"/models/{names['model']}/aliases/stable",
                      json={"version": 1}).status_code == 200
    r = models_api(platform, owner.token, "PUT", f"/models/{names['model']}/deployment",
                   json={"replicas": 1})
    assert r.status_code == 200 and r.json()["ready"], r.text
    # the owner's other tokens: expired, revoked, reduced to the metrics service
    r = platform.hub(owner.token, "POST", f"/users/{owner.name}/tokens",
                     json={"note": "matrix-expired", "expires_in": 1})
    expired = r.json()["token"]
    r = platform.hub(owner.token, "POST", f"/users/{owner.name}/tokens", json={"note": "matrix-revoked"})
    revoked, revoked_id = r.json()["token"], r.json()["id"]
    assert platform.hub(owner.token, "DELETE", f"/users/{owner.name}/tokens/{revoked_id}").status_code == 204
    r = platform.hub(owner.token, "POST", f"/users/{owner.name}/tokens",
                     json={"note": "matrix-reduced", "scopes": ["access:services!service=metrics"]})
    assert r.status_code == 201, r.text
    reduced = r.json()["token"]
    put(platform, owner, "matrix/notes.txt", "notes")
    put(platform, owner, "matrix/trash.txt", "trash")
    platform.wait_ready(owner)
    r = api.post(f"{platform.url}/user/{owner.name}/api/kernels", json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, r.text
    names["kernel"] = r.json()["id"]
    # the job's end: its token, revoked with the attempt
    deadline = time.monotonic() + 300
    while jobs_api(platform, owner.token, "GET", f"/jobs/{job}").json()["status"] not in FINAL:
        assert time.monotonic() < deadline, "the matrix's job did not end"
        time.sleep(0.3)
    assert jobs_api(platform, owner.token, "GET", f"/jobs/{job}").json()["status"] == "completed"
    job_token = (home(platform, owner) / "matrix" / "job-token.txt").read_text().strip()
    for token in (expired, job_token):
        wait_refused(platform, token)
    tokens = {"other": other_scientist.token, "viewer": viewer.token, "anonymous": None,
              "expired": expired, "revoked": revoked, "reduced": reduced, "job-ended": job_token,
              "owner": owner.token}
    yield {"owner": owner, "names": names, "tokens": tokens,
           "actors": {"other": other_scientist.name, "viewer": viewer.name, "reduced": owner.name}}
    models_api(platform, owner.token, "DELETE", f"/models/{names['model']}/deployment")
    # the secret another scientist's PUT made (test_secrets expects them to have none)
    jobs_api(platform, other_scientist.token, "DELETE", "/secrets/MATRIX_SECRET")


# --- beyond single requests ---------------------------------------------------------------------


def test_a_cookie_authenticated_post_without_the_xsrf_token_is_refused_everywhere(platform, world):
    """Sign in through the login form, let each service and the server set its cookie, then
    write with the cookie alone: refused (JupyterHub's XSRF check), though the cookie reads."""
    owner = world["owner"]
    s, r = platform.login(owner.name, owner.password)
    assert r.status_code == 200, r.text[:300]
    names = world["names"]
    targets = {  # a page that signs the browser in to the service, then a write without _xsrf
        "jobs": ("/services/jobs/", "/services/jobs/api/jobs", {"path": "matrix/job.ipynb"}),
        "models": ("/services/models/", f"/services/models/api/models/{names['model']}/deployment/rollback",
                   {}),
        "data": ("/services/data/", f"/services/data/api/datasets/{names['dataset']}/uploads",
                 {"files": [{"name": "x.csv", "size": 1}]}),
        "resources": ("/services/resources/", "/services/resources/api/gpus", {}),
        "metrics": ("/services/metrics/", "/services/metrics/api/current", {}),
        "server": (f"/user/{owner.name}/lab", f"/user/{owner.name}/api/kernels", {"name": "python3"}),
        "lab relay": (f"/user/{owner.name}/lab", f"/user/{owner.name}/aidc/api/jobs/jobs",
                      {"path": "matrix/job.ipynb"}),
    }
    reads = {"jobs": "/services/jobs/api/jobs", "models": "/services/models/api/models",
             "data": "/services/data/api/datasets", "resources": "/services/resources/api/gpus",
             "metrics": "/services/metrics/api/current", "server": f"/user/{owner.name}/api/kernels",
             "lab relay": f"/user/{owner.name}/aidc/api/jobs/jobs"}
    answers = {}
    for name, (page, write, body) in targets.items():
        r = s.get(platform.url + page, headers={"Accept": "text/html"}, timeout=60)
        assert r.status_code == 200, (name, r.status_code, r.url)
        r = s.get(platform.url + reads[name], timeout=60, allow_redirects=False)
        assert r.status_code == 200, (name, "the cookie does not sign in", r.status_code)
        answers[name] = s.post(platform.url + write, json=body, timeout=60).status_code
    # resources and metrics have no write at all: a POST there is refused either way
    read_only = {"resources", "metrics"}
    assert {n: s for n, s in answers.items() if n not in read_only} == {
        n: 403 for n in targets if n not in read_only}, answers
    assert all(answers[n] in (403, 405) for n in read_only), answers


def test_a_token_in_the_url_is_not_turned_into_a_cookie(platform, world):
    """A shared link with ``?token=`` signs nobody in: not that request, nor (by a cookie) the
    next ones; the same token in the header works."""
    owner = world["owner"]
    for path in ("/services/jobs/api/jobs", f"/services/models/api/models/{world['names']['model']}",
                 "/services/data/api/datasets", "/services/metrics/api/current",
                 f"/user/{owner.name}/api/contents/matrix/notes.txt",
                 f"/user/{owner.name}/aidc/api/jobs/jobs"):
        s = requests.Session()
        first = s.get(f"{platform.url}{path}?token={owner.token}", timeout=60, allow_redirects=False)
        later = s.get(platform.url + path, timeout=60, allow_redirects=False)
        assert first.status_code in (302, 401, 403) and later.status_code == first.status_code \
            and not s.cookies, (path, first.status_code, later.status_code, dict(s.cookies))
        assert platform.api(owner.token).get(platform.url + path, timeout=60).status_code == 200, path


def test_a_users_account_cannot_read_other_homes_the_data_directory_keys_or_the_audit_log(
        platform, world, other_scientist):
    """As the owner's Unix account (what their kernels, jobs and replicas run as)."""
    owner = world["owner"]
    data = platform.data_dir
    private = {
        "another user's home": home(platform, other_scientist),
        "the data directory": data,
        "the key-encryption keys": data / "secrets" / "kek",
        "the audit log": data / "logs" / "audit.jsonl",
        "the audit key": data / "secrets" / "audit-key",
    }
    assert all(p.exists() for p in private.values()), {k: p.exists() for k, p in private.items()}
    probe = ("import os, sys\n"
             "for p in sys.argv[1:]:\n"
             "    try:\n"
             "        (os.listdir if os.path.isdir(p) else lambda p: open(p).read(1))(p)\n"
             "        print('READ', p)\n"
             "    except PermissionError:\n"
             "        print('refused', p)\n")
    r = subprocess.run(["runuser", "-u", unix_name(owner.name, platform.prefix), "--",
                        "/usr/bin/python3", "-c", probe, *map(str, private.values())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [w for p in private.values() for w in ("refused", str(p))], r.stdout


def test_every_process_of_an_account_has_its_own_temporary_folder(platform, world):
    """The account's server kernels, its jobs' kernels and its model replicas get
    ``TMPDIR=<home>/.tmp`` (0700, the account's), not the shared ``/tmp``, where any
    account can create a name another program will use first."""
    owner = world["owner"]
    owner_home = home(platform, owner)
    uid = owner_home.stat().st_uid
    private = owner_home / ".tmp"
    info = os.lstat(private)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == uid and info.st_mode & 0o777 == 0o700
    seen = execute(platform, owner, "import os, tempfile; print(tempfile.gettempdir(), os.environ.get('TMPDIR'))")
    assert seen.split() == [str(private)] * 2  # the server's kernel
    assert (owner_home / "matrix" / "job-tmp.txt").read_text() == str(private)  # the job's kernel
    replicas = [p for p in psutil.process_iter(["uids", "cmdline"])
                if p.info["uids"] and p.info["uids"].real == uid
                and "aidc.models.server" in (p.info["cmdline"] or [])]
    assert replicas, "the owner's replica is not running"
    for replica in replicas:
        assert replica.environ().get("TMPDIR") == str(private)


#: what another account on the machine tries on every port the platform listens on: an
#: HTTP GET of each path without credentials (a port that does not answer HTTP within
#: 1.5 s is not asked again), and a read of each file named
_PORT_PROBE = r'''
import http.client, json, socket, sys
from concurrent.futures import ThreadPoolExecutor
ports, paths, files = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
sockets = json.loads(sys.argv[4])

def get(port, path, timeout):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return [path, r.status, r.read(4096).decode("latin-1")]
    finally:
        c.close()

def probe(port):
    try:  # not HTTP (a kernel's ZeroMQ, Dask's TLS, gRPC's HTTP/2): no answer, or no HTTP one
        first = get(port, paths[0], 1.5)
    except (OSError, http.client.HTTPException) as e:
        return [[paths[0], None, type(e).__name__]]
    seen = [first]
    for path in paths[1:]:
        try:
            seen.append(get(port, path, 5))
        except (OSError, http.client.HTTPException) as e:
            seen.append([path, None, type(e).__name__])
    return seen

def read(path):
    try:
        open(path).read(1)
        return "READ"
    except PermissionError:
        return "refused"
    except OSError as e:
        return type(e).__name__

def connect(path):  # a path, or an abstract name ("@...")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect("\0" + path[1:] if path.startswith("@") else path)
        return "CONNECTED"
    except PermissionError:
        return "refused"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

with ThreadPoolExecutor(16) as pool:
    answers = dict(zip(map(str, ports), pool.map(probe, ports)))
print(json.dumps({"ports": answers, "files": {f: read(f) for f in files},
                  "sockets": {p: connect(p) for p in sockets}}))
'''

#: programs whose ports speak no HTTP, each with an authentication of its own: a kernel's
#: ZeroMQ (messages signed with the key in its connection file), the jobs service's Dask
#: (mutual TLS), the gRPC front (HTTP/2 only; a hub token in each call)
_OWN_AUTH = ("ipykernel_launcher", "aidc.jobs.service", "aidc-grpc-front")


def _platform_processes(platform, uids: set[int]):
    """Whether a pid is one of the platform's processes (the hub's tree, the test accounts')."""
    tree = {platform.proc.pid} | {p.pid for p in psutil.Process(platform.proc.pid).children(recursive=True)}

    def ours(pid: int) -> bool:
        try:
            return pid in tree or psutil.Process(pid).uids().real in uids
        except psutil.NoSuchProcess:
            return False
    return ours


def _platform_sockets(platform, uids: set[int]) -> list[str]:
    """The Unix sockets the platform's processes have bound (abstract ones as ``@name``)."""
    ours = _platform_processes(platform, uids)
    return sorted({"@" + c.laddr[1:] if c.laddr.startswith("\0") else c.laddr
                   for c in psutil.net_connections("unix") if c.pid and c.laddr and ours(c.pid)})


def _platform_listeners(platform, uids: set[int]) -> dict[int, list[str]]:
    """TCP ports listened on by the platform's processes (the hub's tree and the test
    accounts' processes): port -> the program's command line."""
    ours = _platform_processes(platform, uids)
    ports = {}
    for conn in psutil.net_connections("tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.pid or not ours(conn.pid):
            continue
        try:
            ports[conn.laddr.port] = psutil.Process(conn.pid).cmdline()
        except psutil.NoSuchProcess:
            continue
    return ports


def test_every_port_the_platform_listens_on_refuses_another_account(platform, world, other_scientist):
    """Rule 7 over the whole machine: another account lists the platform's ports (the hub,
    the edge, CHP's API, every service, the router, the user's server and kernels, the
    dashboards' kernels, Dask) and asks each, without credentials, for what it would
    want: not one answers with data (no 2xx), every port that speaks no HTTP belongs to a
    program with an authentication of its own, the kernels' signing keys are not
    readable to it, and no Unix socket of the platform lets it connect."""
    owner = world["owner"]
    names = world["names"]
    uids = {home(platform, u).stat().st_uid for u in (owner, other_scientist)}
    ports = _platform_listeners(platform, uids)
    programs = {" ".join(cmd) for cmd in ports.values()}
    for kind in ("aidc.models.router", "aidc.models.service", "aidc.jobs.service", "aidc.data.service",
                 "aidc.hub.singleuser", "ipykernel_launcher", "configurable-http-proxy", "nginx"):
        assert any(kind in p for p in programs), f"no port of {kind} found: the sweep would miss it"
    paths = ["/", "/hub/api/users", f"/hub/api/users/{owner.name}", "/hub/metrics", "/api/routes",
             "/api/contents", "/api/kernels", "/api/sessions", f"/user/{owner.name}/api/contents/matrix",
             f"/user/{owner.name}/api/kernels", "/metrics", "/json/identity.json", "/info/main/workers.html",
             "/services/jobs/api/jobs", f"/services/jobs/api/jobs/{names['job']}", "/services/jobs/api/secrets",
             "/services/models/api/models", f"/services/models/v2/models/{names['model']}",
             f"/v2/models/{names['model']}", "/v2/models/stats", "/services/data/api/datasets",
             f"/services/data/api/datasets/{names['dataset']}", "/services/metrics/metrics",
             "/services/resources/api/gpus", "/services/dashboards/"]
    connection_files = sorted({cmd[cmd.index("-f") + 1] for cmd in ports.values()
                               if "ipykernel_launcher" in cmd and "-f" in cmd})
    assert connection_files
    sockets = _platform_sockets(platform, uids)
    replica_sockets = {cmd[cmd.index("--unix-socket") + 1] for cmd in
                       (p.info["cmdline"] or [] for p in psutil.process_iter(["cmdline"]))
                       if "aidc.models.server" in cmd and "--unix-socket" in cmd}
    assert any(p.endswith("proxy.sock") for p in sockets) and replica_sockets & set(sockets)
    r = subprocess.run(["runuser", "-u", unix_name(other_scientist.name, platform.prefix), "--",
                        "/usr/bin/python3", "-c", _PORT_PROBE, json.dumps(sorted(ports)), json.dumps(paths),
                        json.dumps(connection_files), json.dumps(sockets)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    answered = {port: [(path, status) for path, status, _ in answers if status is not None and status < 300]
                for port, answers in seen["ports"].items()}
    assert not any(answered.values()), {f"{p} ({' '.join(ports[int(p)])[:80]})": a
                                        for p, a in answered.items() if a}
    # the jobs service's Dask workers are its children (multiprocessing's spawned processes)
    dask = {" ".join(p.cmdline()) for svc in psutil.process_iter(["cmdline"])
            if "aidc.jobs.service" in (svc.info["cmdline"] or []) for p in svc.children(recursive=True)}
    # (a port closed since it was listed, a kernel that ended, refuses the connection)
    silent = {" ".join(ports[int(p)]) for p, answers in seen["ports"].items()
              if answers[0][1] is None and answers[0][2] != "ConnectionRefusedError"}
    assert all(any(kind in p for kind in _OWN_AUTH) or p in dask for p in silent), silent
    assert set(seen["files"].values()) == {"refused"}, seen["files"]
    # and every Unix socket (CHP's, the replicas'; an abstract one would have no permissions)
    assert set(seen["sockets"].values()) == {"refused"}, seen["sockets"]


def test_a_private_temporary_folder_is_made_only_where_it_is_safe(tmp_path):
    """Made by root from a descriptor of the home: never through a link, never in a home
    that is not the account's; an account then simply has none (the system's is used)."""
    from aidc.accounts import PRIVATE_TMP, private_tmp

    nobody = 65534
    account_home = tmp_path / "home"
    account_home.mkdir(mode=0o700)
    os.chown(account_home, nobody, nobody)
    made = private_tmp(str(account_home), nobody, nobody)
    assert made == str(account_home / PRIVATE_TMP)
    info = os.lstat(made)
    assert info.st_uid == nobody and info.st_mode & 0o777 == 0o700
    assert private_tmp(str(account_home), nobody, nobody) == made  # again: the same folder

    os.rmdir(made)
    os.symlink("/etc", made)  # the account (or anyone who could) put a link there
    assert private_tmp(str(account_home), nobody, nobody) is None
    assert os.stat("/etc").st_uid == 0  # not taken over
    os.unlink(made)
    os.mkdir(made)  # a folder someone else (root here) owns
    assert private_tmp(str(account_home), nobody, nobody) is None
    # ... unless it is handed over a moment later: a second process of a new account
    # (two jobs starting at once) finds the folder the first one made, not yet chowned
    handover = threading.Timer(0.02, os.chown, args=(made, nobody, nobody))
    handover.start()
    assert private_tmp(str(account_home), nobody, nobody) == made
    handover.join()
    os.rmdir(made)
    assert private_tmp(str(tmp_path), nobody, nobody) is None  # a home not the account's
    assert not (tmp_path / PRIVATE_TMP).exists()


def test_a_replica_account_cannot_read_another_owners_staged_artifacts(platform, world, other_scientist):
    """The owner's deployed replica's staged copy (0700, theirs) as another user's account,
    which their own replicas run as."""
    from aidc.models.sandbox import run_root

    root = run_root(str(platform.data_dir))
    uid = os.stat(home(platform, world["owner"])).st_uid
    staged = [p for p in root.rglob("*") if p.is_dir() and p.stat().st_uid == uid]
    assert staged, f"no staged copy of the owner's under {root}"
    probe = ("import os, sys\n"
             "for p in sys.argv[1:]:\n"
             "    try:\n"
             "        os.listdir(p); print('READ', p)\n"
             "    except PermissionError:\n"
             "        print('refused', p)\n")
    r = subprocess.run(["runuser", "-u", unix_name(other_scientist.name, platform.prefix), "--",
                        "/usr/bin/python3", "-c", probe, str(root), str(staged[0])],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["refused", str(root), "refused", str(staged[0])], r.stdout + r.stderr


def test_the_hubs_own_refusals_of_another_users_server_are_audited(platform, world, other_scientist):
    """A request for the owner's server that reaches the hub itself (``/hub/user/NAME/``: the
    server stopped, or not yet in the proxy) is refused there, and so is a sign-in to it (the
    OAuth ``authorize`` step a browser is sent to); both are audited by the hub. (Before the
    matrix, which stops the server: JupyterHub forgets its OAuth client then.)"""
    owner = world["owner"].name
    api = platform.api(other_scientist.token)
    path = f"/hub/user/{owner}/api/contents/matrix/notes.txt"
    r = api.get(platform.url + path, timeout=60, allow_redirects=False)
    assert r.status_code == 404, (r.status_code, r.text[:300])
    authorize = "/hub/api/oauth2/authorize"
    before = sum(e.get("target") == f"GET {authorize}" for e in platform.audit_events())
    browser, r = platform.login(other_scientist.name, other_scientist.password)
    assert r.status_code == 200, r.text[:300]
    r = browser.get(platform.url + authorize, timeout=60, allow_redirects=False, params={
        "client_id": f"jupyterhub-user-{owner}", "redirect_uri": f"/user/{owner}/oauth_callback",
        "response_type": "code", "state": "matrix"})
    assert r.status_code == 403, (r.status_code, r.text[:300])
    deadline = time.monotonic() + 30
    while True:
        events = platform.audit_events()
        found = [(e["actor"], e["service"], e["status"]) for e in events if e.get("target") == f"GET {path}"]
        signed_in = [(e["actor"], e["service"], e["status"]) for e in events
                     if e.get("target") == f"GET {authorize}"][before:]
        if (found and signed_in) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found == [(other_scientist.name, "hub", 404)], found
    assert signed_in == [(other_scientist.name, "hub", 403)], signed_in


# --- the matrix (last: the owner's cases stop their server and undeploy their model) ---------


#: refusals given to signed-in actors, for the audit check: (actor name, "METHOD /path")
REFUSED: list[tuple[str, str]] = []


@pytest.mark.parametrize("actor, case", params())
def test_matrix(platform, world, actor, case):
    url = platform.url + case.path.format(**world["names"])
    token = world["tokens"][actor]
    headers = {"Authorization": f"token {token}"} if token else {}
    kw = {"json": case.body} if case.body is not None else {}
    r = requests.request(case.method, url, headers=headers, timeout=120, allow_redirects=False, **kw)
    allowed = dict(case.allowed)
    where = f"{actor} {case.method} {case.path}: {r.status_code} {r.text[:300]}"
    if actor == "owner":
        assert r.status_code in case.owner, where
    elif actor in allowed:
        assert r.status_code == allowed[actor], where
    elif actor in SIGNED_IN:
        want = {403} if (actor, case.id) in ROLE_REFUSALS else {404} if actor == "other" else {403, 404}
        assert r.status_code in want, where
        REFUSED.append((world["actors"][actor], f"{case.method} {url[len(platform.url):].split('?')[0]}"))
    elif case.page:
        assert r.status_code == 302 and "/hub/" in r.headers["Location"], where
    else:  # no valid credentials: aidc's 401, or JupyterHub's own 403
        assert r.status_code in (401, 403), where
    if r.status_code in (403, 404) and actor not in ("owner", "reduced"):  # reduced: the owner's
        assert world["names"]["o"] not in r.text or case.path.startswith(("/user/", "/hub/")) \
            or "user=" in case.path, f"a refusal names the owner: {where}"


def test_every_refusal_was_audited(platform, world):
    """Each 403/404 the hub, the services and the owner's server gave a signed-in actor above
    is an ``access`` event with that actor and target (services and servers send theirs in
    the background)."""
    assert REFUSED, "the matrix ran no refusal"
    deadline = time.monotonic() + 60
    while True:
        seen = {(e.get("actor"), e.get("target")) for e in platform.audit_events()
                if e["__schema__"].endswith("/access")}
        missing = [r for r in REFUSED if r not in seen]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{len(missing)} of {len(REFUSED)} refusals not audited: {missing[:10]}"


def test_a_server_cannot_forge_refusals(platform, world, other_scientist, viewer):
    """What a user's server (so the user: their kernels hold its token) may report as refused:
    only requests to their own server, made with a token that may not use it; the hub finds
    the actor from that token. A service's path, a token with access, or none: not recorded."""
    owner = world["owner"]
    url = f"{platform.url}/hub/api/aidc/audit/refusals"

    def report(token, target, by=owner.token):
        return requests.post(url, timeout=30, headers={"Authorization": f"token {by}"}, json={
            "events": [{"kind": "access", "token": token, "data": {"target": target, "status": 404}}]})

    mine = f"GET /user/{owner.name}/api/contents/forged-{os.urandom(3).hex()}"
    r = report(other_scientist.token, f"GET /user/{other_scientist.name}/api/contents")
    assert r.status_code == 400 and "your own server" in r.json()["message"], r.text
    r = report(viewer.token, "GET /services/jobs/api/jobs")
    assert r.status_code == 400, r.text
    assert report(owner.token, mine).json() == {"recorded": 0, "ignored": 1}  # they may use it
    assert report("not-a-token", mine).json() == {"recorded": 0, "ignored": 1}
    r = report(viewer.token, mine)  # a real refusal's token: the hub names its holder
    assert r.json() == {"recorded": 1, "ignored": 0}, r.text
    forged = [e for e in platform.audit_events() if e.get("target") == mine]
    assert [(e["actor"], e["service"]) for e in forged] == [(viewer.name, f"server:{owner.name}")]


