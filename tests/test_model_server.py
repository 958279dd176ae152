"""The model-server process (``python -m aidc.models.server``) over real HTTP.

Each server is a real subprocess on a free port serving an artifact written by
``aidc.models.formats.save``; requests go through tritonclient.http (binary tensors, its
default, and JSON) and plain HTTP. Results are compared with the same model run in this
process.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from aidc.models import formats

EXPECTED = "expected inputs: input FP32 [-1,1,28,28]"


# -- models -------------------------------------------------------------------------------
class MnistCNN(torch.nn.Module):
    """A small MNIST CNN (random weights: the numbers only have to match)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 16, 5)
        self.c2 = torch.nn.Conv2d(16, 32, 5)
        self.fc = torch.nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class Slow(torch.nn.Module):
    """Takes a while per call (for draining on SIGTERM)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, x):
        y = x
        for _ in range(300):
            y = torch.tanh(y @ self.w)
        return y


def _save(model, directory: Path, example) -> tuple[str, Path, dict]:
    fmt, filename, signature = formats.save(model, directory, example=example)
    return fmt, directory / filename, signature.to_dict()


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    torch.manual_seed(0)
    model = MnistCNN().eval()
    directory = tmp_path_factory.mktemp("mnist")
    fmt, path, signature = _save(model, directory, np.zeros((2, 1, 28, 28), np.float32))
    assert fmt == "torchscript"
    assert signature == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]}
    reference = torch.jit.load(str(path)).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return reference(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return {"format": fmt, "path": path, "signature": signature, "predict": predict}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


# -- processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, fmt: str, artifact: Path, signature: dict, log: Path, *, name="mnist",
                 version="1", extra=(), signature_arg: str | None = None):
        self.name = name
        self.version = version
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "aidc.models.server", "--format", fmt,
               "--artifact", str(artifact),
               "--signature-json", signature_arg or json.dumps(signature),
               "--name", name, "--version", version, "--port", str(self.port),
               "--threads", "1", *extra]
        self.log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kw)

    def status(self, path: str) -> int | None:
        try:
            return self.get(path).status_code
        except requests.ConnectionError:
            return None

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if self.status("/v2/health/live") == 200:
                return
            time.sleep(0.01)
        raise AssertionError(f"server did not listen:\n{self.output()}")

    def wait_ready(self, timeout: float = 120) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if self.status("/v2/health/ready") == 200:
                return self
            time.sleep(0.05)
        raise AssertionError(f"server not ready:\n{self.output()}")

    def client(self, **kw) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(f"127.0.0.1:{self.port}", **kw)

    def metrics(self) -> str:
        return self.get("/metrics").text

    def output(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


@pytest.fixture
def start(tmp_path):
    servers = []

    def start_(*args, **kw) -> Server:
        s = Server(*args, log=tmp_path / f"server-{len(servers)}.log", **kw)
        servers.append(s)
        return s

    yield start_
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def server(mnist, tmp_path_factory):
    s = Server(mnist["format"], mnist["path"], mnist["signature"],
               log=tmp_path_factory.mktemp("logs") / "server.log")
    try:
        yield s.wait_ready()
    finally:
        s.stop()
        # the process is never left with a traceback in its log
        assert "Traceback" not in s.output(), s.output()


def infer(client, x: np.ndarray, binary: bool = True, name: str = "mnist", **kw) -> np.ndarray:
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    return client.infer(name, [inp], outputs=[out], **kw).as_numpy("output")


def samples(metrics: str, name: str, **labels: str) -> list:
    """The samples called ``name`` whose labels include ``labels`` (the text parsed as
    Prometheus parses it: label order and number style are the writer's choice)."""
    return [x for family in text_string_to_metric_families(metrics) for x in family.samples
            if x.name == name and labels.items() <= x.labels.items()]


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with ``labels`` (0 when there is none)."""
    found = samples(metrics, name, **labels)
    assert len(found) <= 1, found
    return found[0].value if found else 0


def histogram_counts(metrics: str, name: str) -> dict[str, float]:
    return {x.labels["le"]: x.value for x in samples(metrics, f"{name}_bucket")}


# -- lifecycle ----------------------------------------------------------------------------
def test_ready_only_after_load_and_warmup(start, mnist):
    s = start(mnist["format"], mnist["path"], mnist["signature"])
    s.wait_listening()
    # listening (live) while the model loads, not ready: both server and model say 503
    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, model_ready = s.status("/v2/health/ready"), s.status("/v2/models/mnist/ready")
        seen.add(ready)
        if ready == 200:
            break
        assert ready == 503 and model_ready in (503, 200)
        r = s.get("/v2/health/ready")
        assert r.status_code in (503, 200)
        if r.status_code == 503:
            assert "loading" in r.json()["error"]
        assert s.status("/v2/health/live") == 200
        time.sleep(0.01)
    assert seen == {503, 200}, seen
    assert s.status("/v2/models/mnist/ready") == 200
    assert s.status("/v2/models/mnist/versions/1/ready") == 200
    c = s.client()
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("mnist", "1")
    assert "ready: model mnist version 1" in s.output()
    # the single row's time and thread count, as measured at warm-up (_single_row_plan)
    assert re.search(r"ms per row on \d+ threads?;", s.output()), s.output()[-2000:]


def test_sigterm_while_loading_exits_cleanly(start, mnist):
    s = start(mnist["format"], mnist["path"], mnist["signature"])
    s.wait_listening()
    assert s.status("/v2/health/ready") == 503
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(20) == 0
    assert time.monotonic() - t0 < 10
    out = s.output()
    assert "stopped while loading" in out and "Traceback" not in out


def test_bad_signature_or_artifact_exits_with_a_message(start, mnist, tmp_path):
    s = start(mnist["format"], mnist["path"], {}, signature_arg="{not json")
    assert s.proc.wait(60) == 2
    assert "--signature-json is not valid JSON" in s.output()
    (tmp_path / "sig.json").write_text(json.dumps(mnist["signature"]))
    broken = tmp_path / "model.pt"
    broken.write_bytes(b"not a model")
    s = start("torchscript", broken, {}, signature_arg=f"@{tmp_path / 'sig.json'}")
    assert s.proc.wait(60) == 1
    assert "cannot load the model" in s.output() and "not a valid TorchScript model" in s.output()


# -- metadata -----------------------------------------------------------------------------
def test_also_serves_on_a_private_unix_socket(start, mnist, tmp_path):
    """The models service reaches its replicas over a Unix socket (no TCP stack per request)."""
    import aiohttp
    path = tmp_path / "r.sock"
    s = start(mnist["format"], mnist["path"], mnist["signature"], extra=["--unix-socket", str(path)]).wait_ready()
    assert stat.S_ISSOCK(path.stat().st_mode) and path.stat().st_mode & 0o777 == 0o600
    x = images(3)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}

    async def call():
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
            async with session.post("http://replica/v2/models/mnist/infer", json=body) as r:
                return r.status, await r.json()

    status, answer = asyncio.run(call())
    assert status == 200, answer
    got = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(answer["outputs"][0]["shape"])
    assert np.allclose(got, mnist["predict"](x), atol=1e-4)
    assert s.status("/v2/health/ready") == 200  # and TCP still answers


def test_metadata(server, mnist):
    meta = server.get("/v2").json()
    assert meta["name"] == "aidc" and "binary_tensor_data" in meta["extensions"] and meta["version"]
    c = server.client()
    assert c.get_server_metadata()["extensions"] == meta["extensions"]
    expected = {"name": "mnist", "versions": ["1"], "platform": "pytorch_torchscript",
                **mnist["signature"]}
    assert c.get_model_metadata("mnist") == expected
    assert c.get_model_metadata("mnist", "1") == expected
    assert server.get("/v2/models/mnist/versions/1").json() == expected


def test_unknown_model_or_version_is_404(server):
    c = server.client()
    for call in (lambda: c.get_model_metadata("other"),
                 lambda: c.get_model_metadata("mnist", "2"),
                 lambda: infer(c, images(1), name="other"),
                 lambda: infer(c, images(1), model_version="7")):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "404"
    r = server.post("/v2/models/other/infer", data=b"{}")
    assert r.status_code == 404 and "unknown model 'other'" in r.json()["error"]
    r = server.get("/v2/models/mnist/versions/2/ready")
    assert r.status_code == 404 and "unknown version '2'" in r.json()["error"]
    assert not c.is_model_ready("other")
    assert server.get("/v3/nothing").status_code == 404
    r = server.get("/v2/models/mnist/infer")
    assert r.status_code == 405 and "use POST" in r.json()["error"]


# -- inference ----------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_model(server, mnist, binary):
    c = server.client()
    for n in (1, 5):  # one image, and a batch of five rows in one request
        x = images(n, seed=n)
        y = infer(c, x, binary=binary)
        assert y.shape == (n, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y, mnist["predict"](x), rtol=1e-5, atol=1e-5)


def test_infer_default_outputs_and_request_id(server, mnist):
    c = server.client()
    x = images(3, seed=7)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = c.infer("mnist", [inp], request_id="req-42", model_version="1")  # all outputs, binary
    response = result.get_response()
    assert response["id"] == "req-42" and response["model_name"] == "mnist"
    assert response["model_version"] == "1"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == 3 * 10 * 4
    np.testing.assert_allclose(result.as_numpy("output"), mnist["predict"](x), rtol=1e-5, atol=1e-5)


def test_plain_json_nested_data(server, mnist):
    x = images(2, seed=3)
    body = {"id": "n1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 28, 28],
                                    "data": x.tolist()}],  # nested lists
            "outputs": [{"name": "output"}]}
    r = server.post("/v2/models/mnist/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/json"
    out = r.json()
    assert out["id"] == "n1" and out["model_name"] == "mnist"
    [o] = out["outputs"]
    assert o["name"] == "output" and o["datatype"] == "FP32" and o["shape"] == [2, 10]
    assert len(o["data"]) == 20  # flattened
    np.testing.assert_allclose(np.array(o["data"], np.float32).reshape(2, 10),
                               mnist["predict"](x), rtol=1e-5, atol=1e-5)
    # flat data, binary output asked for by the request's parameter
    body["inputs"][0]["data"] = x.ravel().tolist()
    body.pop("outputs")
    body["parameters"] = {"binary_data_output": True}
    r = server.post("/v2/models/mnist/infer", json=body)
    assert r.status_code == 200
    n = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:n])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 80
    y = np.frombuffer(r.content[n:], np.float32).reshape(2, 10)
    np.testing.assert_allclose(y, mnist["predict"](x), rtol=1e-5, atol=1e-5)


def test_concurrent_requests_get_their_own_results_in_batches(server, mnist):
    """32 clients at once (tritonclient's async_infer paces itself 10 ms apart, so threads
    released together): each gets the answer to its own input, and the model ran batches."""
    n = 32
    clients = [server.client() for _ in range(n)]
    before = histogram_counts(server.metrics(), "aidc_model_batch_requests")
    for round_ in range(6):
        xs = [images(1 + i % 3, seed=1000 * round_ + i) for i in range(n)]  # sizes 1-3 rows
        barrier = threading.Barrier(n)
        results: dict[int, object] = {}

        def call(i: int) -> None:
            inp = httpclient.InferInput("input", list(xs[i].shape), "FP32")
            inp.set_data_from_numpy(xs[i])
            out = [httpclient.InferRequestedOutput("output", binary_data=bool(i % 2))]
            barrier.wait()
            try:
                results[i] = clients[i].infer("mnist", [inp], outputs=out).as_numpy("output")
            except Exception as e:  # noqa: BLE001
                results[i] = e

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i, x in enumerate(xs):
            assert isinstance(results[i], np.ndarray), results[i]
            assert results[i].shape == (x.shape[0], 10)
            np.testing.assert_allclose(results[i], mnist["predict"](x), rtol=1e-4, atol=1e-5)
        after = histogram_counts(server.metrics(), "aidc_model_batch_requests")
        runs = after["+Inf"] - before.get("+Inf", 0)
        if runs - (after["1.0"] - before.get("1.0", 0)) > 0:
            break
    assert runs - (after["1.0"] - before.get("1.0", 0)) > 0, "no model run had several requests"
    rows = histogram_counts(server.metrics(), "aidc_model_batch_size")
    assert rows["+Inf"] - rows["1.0"] > 0
    stats = server.client().get_inference_statistics("mnist")["model_stats"][0]
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"])


def test_threaded_clients_with_different_inputs(server, mnist):
    """Many plain clients at once, JSON and binary mixed: nobody gets another's answer."""
    errors = []

    def worker(i: int) -> None:
        try:
            c = server.client()
            for j in range(5):
                x = images(1, seed=1000 * i + j)
                y = infer(c, x, binary=bool((i + j) % 2))
                np.testing.assert_allclose(y, mnist["predict"](x), rtol=1e-4, atol=1e-5)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# -- errors -------------------------------------------------------------------------------
def _tc_error(server, inputs, outputs=None) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        server.client().infer("mnist", inputs, outputs=outputs)
    return e.value


def test_wrong_tensors_are_400_with_the_signature(server, mnist):
    x = images(1)
    cases = []
    wrong_shape = httpclient.InferInput("input", [1, 28, 28], "FP32")
    wrong_shape.set_data_from_numpy(x.reshape(1, 28, 28))
    cases.append(([wrong_shape], "has shape [1, 28, 28] but the model expects [-1, 1, 28, 28]"))
    wrong_dtype = httpclient.InferInput("input", [1, 1, 28, 28], "FP64")
    wrong_dtype.set_data_from_numpy(x.astype(np.float64))
    cases.append(([wrong_dtype], "has datatype FP64 but the model expects FP32"))
    wrong_name = httpclient.InferInput("image", [1, 1, 28, 28], "FP32")
    wrong_name.set_data_from_numpy(x)
    cases.append(([wrong_name], "unknown input 'image'; missing input 'input'"))
    json_shape = httpclient.InferInput("input", [1, 784], "FP32")
    json_shape.set_data_from_numpy(x.reshape(1, 784), binary_data=False)
    cases.append(([json_shape], "has shape [1, 784]"))
    for inputs, message in cases:
        e = _tc_error(server, inputs)
        assert e.status() == "400", e
        assert message in e.message() and e.message().endswith(EXPECTED), e.message()
    # missing input (none given), and a shape the data does not fill
    r = server.post("/v2/models/mnist/infer", json={"inputs": []})
    assert r.status_code == 400 and r.json()["error"] == f"missing input 'input'; {EXPECTED}"
    r = server.post("/v2/models/mnist/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [1.0, 2.0]}]})
    assert r.status_code == 400 and "needs 784 values" in r.json()["error"]
    assert r.json()["error"].endswith(EXPECTED)
    r = server.post("/v2/models/mnist/infer", json={"inputs": [
        {"name": "input", "datatype": "FP17", "shape": [1], "data": [1]}]})
    assert r.status_code == 400 and "unknown datatype 'FP17'" in r.json()["error"]
    out = httpclient.InferRequestedOutput("probabilities")
    inp = httpclient.InferInput("input", [1, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(x)
    e = _tc_error(server, [inp], [out])
    assert e.status() == "400" and "unknown output 'probabilities'" in e.message()
    # still serving, correctly
    np.testing.assert_allclose(infer(server.client(), x), mnist["predict"](x), rtol=1e-5, atol=1e-5)


def test_malformed_bodies_are_400(server, mnist):
    r = server.post("/v2/models/mnist/infer", data=b"this is not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = server.post("/v2/models/mnist/infer", data=b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    x = images(1)
    raw = x.tobytes()

    def binary(header: dict, payload: bytes, length: int | None = None) -> requests.Response:
        h = json.dumps(header).encode()
        return server.post("/v2/models/mnist/infer", data=h + payload, headers={
            "Inference-Header-Content-Length": str(len(h) if length is None else length)})

    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
              "parameters": {"binary_data_size": len(raw)}}
    assert binary({"inputs": [tensor]}, raw).status_code == 200
    r = binary({"inputs": [tensor]}, raw[:-4])  # less data than binary_data_size
    assert r.status_code == 400 and "binary_data_size 3136 is more than" in r.json()["error"]
    r = binary({"inputs": [tensor]}, raw + b"1234")  # bytes nobody claims
    assert r.status_code == 400 and "4 bytes of binary data" in r.json()["error"]
    r = binary({"inputs": [dict(tensor, parameters={"binary_data_size": 8})]}, raw[:8])
    assert r.status_code == 400 and "3136 bytes, but binary_data_size is 8" in r.json()["error"]
    r = binary({"inputs": [tensor]}, raw, length=10 ** 9)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    r = binary({"inputs": [tensor]}, raw, length=5)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    np.testing.assert_allclose(infer(server.client(), x), mnist["predict"](x), rtol=1e-5, atol=1e-5)


def _read_answer(sock: socket.socket, buf: bytearray) -> tuple[bytes, bytes]:
    """One HTTP answer (head, body) from ``sock``; what follows stays in ``buf``."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(buf) < end + length:
        buf += sock.recv(65536)
    body = bytes(buf[end:end + length])
    del buf[:end + length]
    return head, body


def test_raw_http_pipelining_and_malformed_requests(server, mnist):
    """The replica's own HTTP/1.1 layer: pipelined requests answered in order on one
    connection (a body split across reads too), then a request line it cannot read: a JSON
    400 and the connection closed."""
    x = images(1, seed=3)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    infer_req = (f"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                 "\r\n\r\n").encode() + body
    ready_req = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(infer_req + ready_req + infer_req[:100])
        time.sleep(0.05)  # the rest of the third request comes in another read
        sock.sendall(infer_req[100:] + b"NOT HTTP\r\n\r\n")
        buf = bytearray()
        answers = [_read_answer(sock, buf) for _ in range(4)]
        assert [a[0].split(b" ")[1] for a in answers] == [b"200", b"200", b"200", b"400"]
        for head, out in (answers[0], answers[2]):
            y = np.asarray(json.loads(out)["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(y, mnist["predict"](x).ravel(), rtol=1e-5, atol=1e-5)
        assert b"Connection: close" in answers[3][0]
        assert "malformed request line" in json.loads(answers[3][1])["error"]
        assert sock.recv(100) == b""  # closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # HTTP/1.0
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        head, _ = _read_answer(sock, bytearray())
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_large_body_is_413_without_reading_it(server, mnist):
    peak = _peak_rss(server.proc.pid)
    body = b"\0" * (50 * 1024 * 1024)
    t0 = time.monotonic()
    r = server.post("/v2/models/mnist/infer", data=body,
                    headers={"Inference-Header-Content-Length": "100"})
    assert r.status_code == 413
    assert time.monotonic() - t0 < 5
    assert "at most 16 MiB" in r.json()["error"]
    assert _peak_rss(server.proc.pid) - peak < 20 * 1024 * 1024  # never held in memory

    def chunks():  # no Content-Length: refused as it passes the limit
        for _ in range(30):
            yield b"\0" * (1024 * 1024)

    r = server.post("/v2/models/mnist/infer", data=chunks())
    assert r.status_code == 413
    x = images(2)
    np.testing.assert_allclose(infer(server.client(), x), mnist["predict"](x), rtol=1e-5, atol=1e-5)
    assert sample(server.metrics(), "aidc_model_requests_total", endpoint="infer", code="413") >= 1


def test_gzip_request_body(server, mnist):
    x = images(2, seed=5)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for algorithm in ("gzip", "deflate"):
        y = server.client().infer("mnist", [inp], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(y.as_numpy("output"), mnist["predict"](x), rtol=1e-5, atol=1e-5)


# -- metrics ------------------------------------------------------------------------------
def test_metrics_and_stats(server):
    c = server.client()
    infer(c, images(1))
    with pytest.raises(InferenceServerException):
        c.get_model_metadata("nope")
    text = server.metrics()
    labels = {"model": "mnist", "version": "1"}
    assert sample(text, "aidc_model_requests_total", **labels, endpoint="infer", code="200") >= 1
    assert sample(text, "aidc_model_requests_total", **labels, endpoint="unknown", code="404") >= 1
    assert sample(text, "aidc_model_request_errors_total", **labels, endpoint="unknown") >= 1
    for metric in ("aidc_model_request_duration_seconds", "aidc_model_batch_size",
                   "aidc_model_queue_delay_seconds", "aidc_model_compute_seconds"):
        assert f"# TYPE {metric} histogram" in text
        assert sum(x.value for x in samples(text, f"{metric}_bucket", **labels, le="+Inf")) >= 1, metric
        assert sum(x.value for x in samples(text, f"{metric}_count", **labels)) >= 1, metric
    assert sample(text, "aidc_model_ready", **labels) == 1
    stats = c.get_inference_statistics("mnist")
    assert [m["name"] for m in server.get("/v2/models/stats").json()["model_stats"]] == ["mnist"]
    [m] = stats["model_stats"]
    assert m["name"] == "mnist" and m["version"] == "1"
    assert m["inference_count"] >= 1 and m["execution_count"] >= 1 and m["last_inference"] > 0
    inf = m["inference_stats"]
    assert inf["success"]["count"] >= 1 and inf["success"]["ns"] > 0
    assert inf["compute_infer"]["count"] >= 1 and inf["queue"]["count"] >= 1
    assert m["batch_stats"] and m["batch_stats"][0]["batch_size"] >= 1
    aidc = m["aidc"]
    assert aidc["ready"] is True and aidc["batching"] is True
    assert {"endpoint": "infer", "code": 200} in [
        {k: r[k] for k in ("endpoint", "code")} for r in aidc["requests"]]
    assert aidc["request_duration_seconds"]["infer"]["count"] >= 1
    assert aidc["batch_size"]["count"] >= 1


# -- shutdown -------------------------------------------------------------------------------
def test_sigterm_finishes_requests_in_flight(start, tmp_path):
    torch.manual_seed(0)
    model = Slow().eval()
    fmt, path, signature = _save(model, tmp_path / "slow", np.zeros((2, 256), np.float32))
    s = start(fmt, path, signature, name="slow", extra=["--max-batch-size", "0"]).wait_ready()
    # 512 rows: each call computes long enough (about a second here) that all four are
    # still in the server when SIGTERM arrives
    xs = [np.random.default_rng(i).random((512, 256), dtype=np.float32) for i in range(4)]
    with torch.inference_mode():
        want = [model(torch.from_numpy(x)).numpy() for x in xs]
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            inp = httpclient.InferInput("input", [512, 256], "FP32")
            inp.set_data_from_numpy(xs[i])
            results[i] = s.client(network_timeout=60).infer("slow", [inp]).as_numpy("output")
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while True:  # all four arrived (one runs, three wait)
        if sample(s.metrics(), "aidc_model_inflight_requests") >= 5:  # the four and this metrics request
            break
        assert time.monotonic() < deadline, "the four requests were never in the server at once"
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert s.proc.wait(60) == 0
    for i in range(4):
        assert isinstance(results[i], np.ndarray), results[i]
        np.testing.assert_allclose(results[i], want[i], rtol=1e-4, atol=1e-5)
    assert s.status("/v2/health/live") is None  # gone
    out = s.output()
    assert "finishing" in out and "stopped" in out and "Traceback" not in out


def test_url_prefix(start, mnist):
    s = start(mnist["format"], mnist["path"], mnist["signature"],
              extra=["--prefix", "/services/models/mnist/"])
    deadline = time.monotonic() + 120
    while s.status("/services/models/mnist/v2/health/ready") != 200:
        assert time.monotonic() < deadline and s.proc.poll() is None, s.output()
        time.sleep(0.05)
    assert s.status("/v2/health/ready") == 404
    c = httpclient.InferenceServerClient(f"127.0.0.1:{s.port}/services/models/mnist")
    assert c.is_model_ready("mnist")
    x = images(2, seed=9)
    np.testing.assert_allclose(infer(c, x), mnist["predict"](x), rtol=1e-5, atol=1e-5)


# -- the v2 wire format on its own ------------------------------------------------------------
class _Timed:
    """A runner whose one-row time depends on the calling thread's torch threads."""

    def __init__(self, seconds_by_threads: dict[int, float], device: str = "cpu"):
        from aidc.models.signature import Signature

        self.signature = Signature.from_dict({
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]})
        self.device = torch.device(device)
        self.seconds, self.seen = seconds_by_threads, []

    def predict(self, inputs):
        threads = torch.get_num_threads()
        self.seen.append(threads)
        time.sleep(self.seconds[threads])
        return {"y": inputs["x"]}


@pytest.mark.parametrize("one, two, expected", [(0.001, 0.02, 1), (0.02, 0.001, 2)])
def test_a_lone_row_runs_on_the_thread_count_measured_fastest(monkeypatch, one, two, expected):
    """A small model's one row is faster on one thread (idle OpenMP threads sleep, and
    waking them costs more than the work they share); a big one's on all: the server
    measures both after warm-up, keeps the faster for the event loop's lone rows, and
    leaves the loading thread (like the batches' worker threads) on ``--threads``."""
    from aidc.models import server

    monkeypatch.setattr(server, "_THREADS", 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runner = _Timed({1: one, 2: two})
        single, threads = server._single_row_plan(runner, inline_max=0.01)
        assert threads == expected
        assert single == pytest.approx(min(one, two), abs=0.008)
        assert set(runner.seen) == {1, 2}
        assert torch.get_num_threads() == 2
        # a row far slower than inline_max never runs on the event loop: not measured
        slow = _Timed({1: one, 2: two})
        assert server._single_row_plan(slow, inline_max=0.0001)[1] == 2 and set(slow.seen) == {2}
        # on a GPU the CPU's threads do not run the model: nothing to measure
        gpu = _Timed({1: one, 2: two}, device="meta")
        assert server._single_row_plan(gpu, inline_max=0.01)[1] == 2 and set(gpu.seen) == {2}
        # with --threads 1 there is no choice to make
        monkeypatch.setattr(server, "_THREADS", 1)
        lone = _Timed({1: one, 2: two})
        assert server._single_row_plan(lone, inline_max=0.01)[1] == 1 and set(lone.seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_v2_encoding_is_what_tritonclient_reads_and_writes():
    """The pure v2 functions the replica and ``aidc.models.predict`` share: a request
    tritonclient writes decodes to the arrays it holds, and a response they encode reads
    back through tritonclient as the same arrays (binary and JSON, numbers and BYTES)."""
    from aidc.models import v2

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    words = np.array([b"a", "\u00e9t\u00e9".encode(), b""], dtype=object)
    inputs = [httpclient.InferInput("x", [3, 4], "FP32"), httpclient.InferInput("w", [3], "BYTES")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(words)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=[httpclient.InferRequestedOutput("y", binary_data=True)], request_id="7")
    request, offset = v2.split_request(bytearray(body), str(header_length))
    decoded = v2.decode_inputs(request, bytearray(body), offset, frozenset({"x", "w"}))
    np.testing.assert_array_equal(decoded["x"], x)
    assert list(decoded["w"]) == list(words)
    assert v2.select_outputs(request, {"y": None, "z": None}) == [("y", True)]

    for selected in ([("y", True), ("w", False)], [("y", False), ("w", True)], None):
        response, length = v2.encode_response("m", "1", {"y": x * 2, "w": words}, selected, "7",
                                              {"y": "FP32", "w": "BYTES"})
        result = httpclient.InferenceServerClient.parse_response_body(
            response, header_length=length)
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        got = [w if isinstance(w, bytes) else w.encode() for w in result.as_numpy("w")]
        assert got == list(words)  # bytes as binary data, UTF-8 text in JSON
        assert result.get_response()["id"] == "7"
        back = v2.decode_response(response, length)  # what the client's predict reads
        np.testing.assert_array_equal(back["y"], x * 2)

    sent, length = v2.encode_request({"x": x}, binary_data=True)
    request, offset = v2.split_request(bytearray(sent), str(length))
    np.testing.assert_array_equal(v2.decode_inputs(request, bytearray(sent), offset, None)["x"], x)
    with pytest.raises(v2.V2Error, match="shape \\[3, 4\\] needs 12 values.*expected"):
        v2.decode_inputs({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4],
                                      "data": [1.0]}]}, b"", 0, None, "expected inputs: x")
    with pytest.raises(v2.V2Error, match="not a v2 inference response"):
        v2.decode_response(b"<html>a proxy's page</html>", None)


# -- the batcher on its own -------------------------------------------------------------------
async def test_batcher_groups_by_shape_and_isolates_failures():
    from aidc.models.batching import Batcher

    calls = []

    def predict(inputs):
        x = inputs["x"]
        calls.append(x.shape)
        if (x < 0).any():
            raise ValueError("negative")
        return {"y": x * 2}

    b = Batcher(predict, max_batch_size=32)
    small = [np.full((1, 3), i, np.float32) for i in range(5)]
    other = [np.full((2, 4), i, np.float32) for i in range(2)]
    big = np.ones((40, 3), np.float32)  # more than max_batch_size: alone
    futures = [b.submit({"x": x}) for x in [*small, *other, big]]
    results = [await f for f in futures]
    assert calls == [(5, 3), (4, 4), (40, 3)]
    for x, r in zip([*small, *other, big], results):
        np.testing.assert_array_equal(r["y"], x * 2)
    assert b.stats.execution_count == 3 and b.stats.inference_count == 5 + 4 + 40
    assert b.stats.by_batch_size[5][0] == 1

    calls.clear()  # one bad request in a batch: only it fails
    futures = [b.submit({"x": np.full((1, 3), v, np.float32)}) for v in (1, -1, 2)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append((await f)["y"][0, 0])
        except ValueError:
            outcomes.append("error")
    assert outcomes == [2, "error", 4]
    assert calls == [(3, 3), (1, 3), (1, 3), (1, 3)]
    await b.drain()
    b.close()


async def test_batcher_without_batching_and_with_unbatchable_outputs():
    from aidc.models.batching import Batcher

    calls = []

    def predict(inputs):
        calls.append(inputs["x"].shape)
        return {"y": inputs["x"].sum(keepdims=True).reshape(1)}  # no batch dimension

    off = Batcher(predict, max_batch_size=1)
    assert not off.enabled
    await asyncio.gather(*[off.submit({"x": np.ones((1, 2))}) for _ in range(3)])
    assert calls == [(1, 2)] * 3
    calls.clear()
    b = Batcher(predict, max_batch_size=8)
    results = await asyncio.gather(*[b.submit({"x": np.full((1, 2), i)}) for i in range(3)])
    assert [r["y"][0] for r in results] == [0, 2, 4]  # right answers, run one by one
    assert calls == [(3, 2), (1, 2), (1, 2), (1, 2)] and not b.enabled
    off.close()
    b.close()


# -- other formats ----------------------------------------------------------------------------
def _onnx_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((784, 10)).astype(np.float32) / 28
    b = rng.standard_normal(10).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "w"], ["h"]),
         helper.make_node("Add", ["h", "b"], ["logits"])],
        "mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, lambda x: x @ w + b


KERAS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from aidc.models import formats
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)),
                              keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    fmt, filename, signature = formats.save(model, sys.argv[1])
    x = np.random.default_rng(2).random((3, 28, 28, 1), dtype=np.float32)
    np.savez(sys.argv[1] + "/check.npz", x=x, y=model(x).numpy())
    print(json.dumps({"format": fmt, "filename": filename, "signature": signature.to_dict()}))
""")


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_other_formats(start, tmp_path, kind):
    if kind == "onnx":
        model, reference = _onnx_model()
        fmt, path, signature = _save(model, tmp_path / "onnx", None)
        x = np.random.default_rng(3).random((3, 784), dtype=np.float32)
        y = reference(x)
    else:
        out = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(tmp_path / "keras")],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        info = json.loads(out.stdout.strip().splitlines()[-1])
        fmt, signature = info["format"], info["signature"]
        path = tmp_path / "keras" / info["filename"]
        check = np.load(tmp_path / "keras" / "check.npz")
        x, y = check["x"], check["y"]
    assert fmt == kind
    [in_spec], [out_spec] = signature["inputs"], signature["outputs"]
    s = start(fmt, path, signature, name=kind).wait_ready(timeout=240)
    c = s.client()
    meta = c.get_model_metadata(kind)
    assert meta["inputs"] == signature["inputs"] and meta["outputs"] == signature["outputs"]
    for binary in (True, False):
        inp = httpclient.InferInput(in_spec["name"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = c.infer(kind, [inp], outputs=[
            httpclient.InferRequestedOutput(out_spec["name"], binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy(out_spec["name"]), y, rtol=1e-4, atol=1e-4)
    inp = httpclient.InferInput(in_spec["name"], [1, 5], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as e:
        c.infer(kind, [inp])
    assert e.value.status() == "400" and "expected inputs:" in e.value.message()
