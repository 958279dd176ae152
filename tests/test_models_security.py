"""The models service against a curious colleague (issue 10): replicas only answer through the
service, oversized bodies get a 413 through the proxy, and the registry API reveals nothing
about models out of the caller's sight and stores nothing it cannot serve.

The replica test is the attack itself, from a real kernel of a second scientist (their own
Unix account): find the owner's replica processes in ``/proc``, call every TCP port they
could be listening on, and connect to their Unix sockets.
"""

from __future__ import annotations

import io
import json
import time

import psutil
import pytest

from platform_helpers import execute
from test_models import models_api, scale_onnx  # the tiny ONNX model (y = 3x) and the API helper

torch = pytest.importorskip("torch")

NAME = "sec-private"  # the scientist's private model, deployed for the module
INFER = f"/services/models/v2/models/{NAME}/infer"
ROW = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}
SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
             "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}


def upload(platform, token, name, raw, *, signature=SIGNATURE, filename="m.onnx", fmt="onnx", **meta):
    """``POST api/models/NAME/versions`` as a client sends it (multipart: metadata + artifact)."""
    metadata = {"format": fmt, "filename": filename, "signature": signature, **meta}
    return models_api(platform, token, "POST", f"/models/{name}/versions",
                      data={"metadata": json.dumps(metadata)}, files={"artifact": (filename, raw)})


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory) -> bytes:
    return scale_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx").read_bytes()


@pytest.fixture(scope="module")
def deployed(platform, scientist, onnx_bytes) -> dict:
    """``sec-private`` v1 of the scientist, private, deployed with one replica."""
    deadline = time.monotonic() + 120
    while True:  # the models service starts with the hub
        try:
            if models_api(platform, scientist.token, "GET", "/models", timeout=5).status_code == 200:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, platform.log()[-4000:]
        time.sleep(0.3)
    r = upload(platform, scientist.token, NAME, onnx_bytes)
    assert r.status_code == 201, r.text
    r = models_api(platform, scientist.token, "PUT", f"/models/{NAME}/deployment", json={"replicas": 1})
    assert r.status_code == 200 and r.json()["ready"], r.text
    yield r.json()
    models_api(platform, scientist.token, "DELETE", f"/models/{NAME}/deployment")


def owner_infers(platform, user) -> None:
    """The owner's authenticated path through the hub's proxy and the service still works."""
    r = platform.api(user.token).post(platform.url + INFER, json=ROW, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [4.5, -6.0]


# what the other scientist's kernel runs: everything a local account can do without a token
ATTACK = r'''
import errno, glob, http.client, json, os, pwd, socket
name, owner_uid = {name!r}, {owner_uid!r}
found = []  # (pid, cmdline) of every model replica on the host
for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        argv = open(path, "rb").read().decode(errors="replace").split("\0")
    except OSError:
        continue
    if "aidc.models.server" in argv and name in argv:
        found.append((int(path.split("/")[2]), argv))
ports, sockets = set(), set()
for pid, argv in found:
    for flag, into in (("--port", ports), ("--unix-socket", sockets)):
        if flag in argv:
            into.add(argv[argv.index(flag) + 1])
# every TCP socket listening as the owner's account (the replicas run as the owner)
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[7]) == owner_uid:
            ports.add(str(int(f[1].rsplit(":", 1)[1], 16)))

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)

def probe(conn):
    """What the replica's routes answer on this connection: (status, first bytes) or an error."""
    out = {{}}
    for method, path, body in (("POST", f"/v2/models/{{name}}/infer", json.dumps({row!r})),
                               ("GET", f"/v2/models/{{name}}", None), ("GET", "/metrics", None)):
        try:
            conn.request(method, path, body=body, headers={{"Content-Type": "application/json"}})
            r = conn.getresponse()
            out[path] = [r.status, r.read(300).decode(errors="replace")]
        except OSError as e:
            out[path] = ["error", errno.errorcode.get(e.errno, str(e))]
        finally:
            conn.close()
    return out

tcp = {{port: probe(http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)) for port in sorted(ports)}}
unix = {{}}
for path in sorted(sockets):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        unix[path] = ["connected", probe(UnixConnection(path))]
    except OSError as e:
        unix[path] = ["error", errno.errorcode.get(e.errno, str(e))]
    finally:
        s.close()
print(json.dumps({{"me": pwd.getpwuid(os.getuid()).pw_name, "pids": [p for p, _ in found],
                  "tcp": tcp, "unix": unix}}))
'''


def test_replicas_answer_no_local_account_without_a_token(platform, scientist, other_scientist, deployed):
    owner_infers(platform, scientist)
    replicas = deployed["versions"][0]["replicas"]
    pids = [r["pid"] for r in replicas]
    owner_uid = psutil.Process(pids[0]).uids().real
    platform.start_server(other_scientist)
    code = ATTACK.format(name=NAME, owner_uid=owner_uid, row=ROW)
    out = execute(platform, other_scientist, code, timeout=120)
    report = json.loads(out.strip().splitlines()[-1]) if out.strip().startswith("{") else None
    assert report is not None, out
    assert report["me"] != "root" and report["me"].endswith(other_scientist.name)
    assert set(pids) <= set(report["pids"]), report  # the attacker did find the replicas
    # no TCP port of the owner's answers the model's routes without a token
    for port, answers in report["tcp"].items():
        for path, (status, body) in answers.items():
            assert not (status == 200 and (NAME in body or "aidc_model_" in body or "outputs" in body)), \
                (port, path, status, body)
    # the replicas' sockets: the attacker cannot connect (the owner's 0700 folder, 0600 socket)
    assert set(report["unix"]) == {r["socket"] for r in replicas}, report
    for path, (what, detail) in report["unix"].items():
        assert (what, detail) in (("error", "EACCES"), ("error", "EPERM")), (path, what, detail)
    # and from the inside: the replica listens on no TCP port at all, only on its Unix socket
    for pid in pids:
        listening = [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == "LISTEN"]
        assert not listening, (pid, listening)
    owner_infers(platform, scientist)  # the owner's authenticated path is untouched


class Zeros(io.RawIOBase):
    """``size`` bytes of b"0", read as a client streams a file body (nothing held in memory)."""

    def __init__(self, size: int):
        self.size = self.left = size

    def __len__(self) -> int:  # requests sends it with a Content-Length
        return self.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = b"0" * n
        self.left -= n
        return n


def chunked(size: int, piece: bytes = b"0" * (1 << 20)):
    """The same as a generator: no Content-Length, Transfer-Encoding: chunked."""
    while size > 0:
        yield piece[:size]
        size -= len(piece)


def test_oversized_inference_body_is_a_json_413_through_the_proxy(platform, scientist, deployed):
    s = platform.api(scientist.token)
    huge = 100 * 2**20 + 1  # over the 16 MiB inference limit and over tornado's own 100 MiB
    for body in (Zeros(huge), chunked(huge), Zeros(17 * 10**6)):
        t0 = time.monotonic()
        r = s.post(platform.url + INFER, data=body, headers={"Content-Type": "application/json"},
                   timeout=120)
        assert r.status_code == 413, (type(body).__name__, r.status_code, r.text[:300])
        assert r.headers["Content-Type"].startswith("application/json")
        assert "at most 16 MiB" in r.json()["error"], r.text
        assert time.monotonic() - t0 < 60
    owner_infers(platform, scientist)  # the service is fine afterwards


def test_adding_a_version_to_another_users_private_model_reveals_nothing(
        platform, scientist, other_scientist, deployed, onnx_bytes):
    r = upload(platform, other_scientist.token, NAME, onnx_bytes)
    assert r.status_code == 404, r.text
    assert scientist.name not in r.text and "belongs" not in r.text
    assert models_api(platform, other_scientist.token, "GET", f"/models/{NAME}").status_code == 404
    versions = models_api(platform, scientist.token, "GET", f"/models/{NAME}").json()["versions"]
    assert [v["version"] for v in versions] == [1]  # nothing was added


def test_visibility_must_be_one_of_the_allowed_values(platform, scientist, deployed, onnx_bytes):
    r = upload(platform, scientist.token, "sec-visibility", onnx_bytes, visibility="everyone!")
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "everyone!" in message and all(v in message for v in ("private", "group", "public"))
    assert models_api(platform, scientist.token, "GET", "/models/sec-visibility").status_code == 404
    r = models_api(platform, scientist.token, "PATCH", f"/models/{NAME}", json={"visibility": "everyone!"})
    assert r.status_code == 400 and "private, group, public" in r.json()["message"], r.text
    assert models_api(platform, scientist.token, "GET", f"/models/{NAME}").json()["visibility"] == "private"


def test_a_declared_signature_the_model_cannot_take_is_refused_at_register_time(
        platform, scientist, onnx_bytes, tmp_path):
    wrong = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 999]}],
             "outputs": SIGNATURE["outputs"]}
    r = upload(platform, scientist.token, "sec-signature", onnx_bytes, signature=wrong)
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert message.startswith("the declared signature does not fit the model")
    assert "'x'" in message and "999" in message and "[batch, 2]" in message, message
    # TorchScript records no shapes: the check runs the model once on zeros of the declared inputs
    path = tmp_path / "linear.pt"
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Linear(4, 2)).save(str(path))
    declared = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 999]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}]}
    r = upload(platform, scientist.token, "sec-signature", path.read_bytes(), signature=declared,
               filename="model.pt", fmt="torchscript")
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "fails on zeros of the declared inputs" in message and "999" in message, message
    assert models_api(platform, scientist.token, "GET", "/models/sec-signature").status_code == 404
    # the right signature is still accepted
    declared["inputs"][0]["shape"] = [-1, 4]
    r = upload(platform, scientist.token, "sec-signature", path.read_bytes(), signature=declared,
               filename="model.pt", fmt="torchscript")
    assert r.status_code == 201, r.text


def test_the_server_needs_an_address_and_keeps_port_for_use_by_hand():
    """``--port`` stays for running a server by hand; without any address it refuses to start."""
    from aidc.models import server

    base = ["--format", "onnx", "--artifact", "m.onnx", "--signature-json", "{}", "--name", "m",
            "--version", "1"]
    with pytest.raises(SystemExit) as e:
        server.parse_args(base)
    assert e.value.code == 2
    assert server.parse_args([*base, "--unix-socket", "/tmp/r.sock"]).port is None
    assert server.parse_args([*base, "--port", "8101"]).port == 8101
