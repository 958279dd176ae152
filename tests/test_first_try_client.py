"""What a new user met on a first try (issue 12, items 1, 2, 4, 10, 11): the one client
(:class:`aidc.client.Client`) and the CLI around it.

These need no platform: a small HTTP server in a thread answers as the services do
(their ``{"status": N, "message": ...}`` errors, KServe v2's ``{"error": ...}``, the
hub's HTML pages), and records what the client sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from aidc.cli.main import main
from aidc.client import Client
from aidc.errors import NotFoundError, PlatformError, UsageError

HTML_404 = ("<!DOCTYPE HTML>\n<html><head><title>404: Not Found</title></head><body>"
            + "<p>JupyterHub's page</p>" * 40 + "</body></html>")


class FakePlatform:
    """Routes: ``(METHOD, path)`` -> ``(status, body)`` or a callable of the request body
    returning one; a dict or list body is JSON, a str is HTML. Anything else is the hub's
    HTML 404."""

    def __init__(self):
        self.routes: dict = {}
        self.requests: list = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.requests.append((self.command, self.path, body))
                route = fake.routes.get((self.command, self.path), (404, HTML_404))
                status, payload = route(body) if callable(route) else route
                if isinstance(payload, str):
                    data, kind = payload.encode(), "text/html; charset=UTF-8"
                else:
                    data, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(monkeypatch):
    f = FakePlatform()
    monkeypatch.setenv("AIDC_URL", f.url)
    monkeypatch.setenv("AIDC_TOKEN", "not-checked")
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    yield f
    f.close()


TINY = "/services/models/v2/models/tiny"
TINY_META = {"name": "tiny", "versions": ["1"], "platform": "onnx",
             "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}]}


# -- item 1: no error message is lost, whichever shape the body has -------------------------

def test_v2_error_bodies_keep_their_message(fake):
    from aidc import models

    shape_error = ("input 'input' has shape [1, 5] but the model expects [-1, 4]; "
                   "expected inputs: input FP32 [-1,4]")
    fake.routes[("GET", TINY)] = (200, TINY_META)
    fake.routes[("POST", TINY + "/infer")] = (400, {"error": shape_error})
    fake.routes[("GET", "/services/models/v2/models/nosuch")] = (
        404, {"error": "no model 'nosuch' is deployed"})
    fake.routes[("GET", "/services/jobs/api/jobs/j-1")] = (
        404, {"status": 404, "message": "no job j-1"})
    fake.routes[("GET", "/services/jobs/api/empty")] = (500, {"status": 500})

    with pytest.raises(UsageError) as e:
        models.predict("tiny", np.zeros((1, 5), np.float32))
    assert str(e.value) == shape_error
    with pytest.raises(NotFoundError) as e:
        models.predict("nosuch", [[1.0, 2.0, 3.0, 4.0]])
    assert str(e.value) == "no model 'nosuch' is deployed"
    with pytest.raises(NotFoundError, match="^no job j-1$"):  # the services' own shape
        Client().get_json("services/jobs/api/jobs/j-1")
    with pytest.raises(PlatformError) as e:  # a body without a message: say what answered
        Client().get_json("services/jobs/api/empty")
    assert "answered 500" in str(e.value)


# -- item 2: predict casts to the declared datatype, and refuses casts that lose information --

def test_predict_casts_to_the_signature_and_refuses_lossy_casts(fake):
    from aidc import models
    from aidc.models.client import cast_inputs

    sent = []

    def infer(body):
        request = json.loads(body)
        sent.append(request["inputs"][0])
        n = request["inputs"][0]["shape"][0]
        return 200, {"model_name": "tiny", "outputs": [
            {"name": "output", "datatype": "FP32", "shape": [n, 2], "data": [0.5] * (2 * n)}]}

    fake.routes[("GET", TINY)] = (200, TINY_META)
    fake.routes[("POST", TINY + "/infer")] = infer
    out = models.predict("tiny", np.random.randn(2, 4))  # float64
    assert out.shape == (2, 2) and out.dtype == np.float32
    models.predict("tiny", [[1.0, 2, 3, 4]])  # a python list: float64 in numpy
    models.predict("tiny", [[1, 2, 3, 4]])  # ints
    assert [t["datatype"] for t in sent] == ["FP32", "FP32", "FP32"]
    assert sent[1]["data"] == [1.0, 2.0, 3.0, 4.0] and sent[1]["shape"] == [1, 4]

    def cast(value, datatype):
        spec = [{"name": "x", "datatype": datatype, "shape": [-1]}]
        return cast_inputs({"x": value}, spec)["x"]

    assert cast([1.5, 2], "FP16").dtype == np.float16
    assert cast(np.array([1, 2], np.int64), "INT32").dtype == np.int32
    assert cast([True, False], "BOOL").dtype == np.bool_
    assert cast(np.array([1, 2], np.int32), "INT64").dtype == np.int64
    refusals = [
        ([1.5, 2.0], "INT64", "drop their fractions"),
        ([300], "UINT8", "300 is outside UINT8's range [0, 255]"),
        ([-1], "UINT32", "-1 is outside UINT32's range"),
        ([1e300], "FP32", "beyond FP32's range"),
        ([2**30 + 1], "FP32", "cannot be represented exactly in FP32"),
        ([1, 0], "BOOL", "pass booleans"),
        (["a"], "FP32", "pass numbers, not strings"),
    ]
    for value, datatype, reason in refusals:
        with pytest.raises(UsageError) as e:
            cast(value, datatype)
        text = str(e.value)
        assert f"but the model takes {datatype}" in text and reason in text, text
    n_requests = len(fake.requests)
    fake.routes[("GET", TINY)] = (200, dict(TINY_META, inputs=[
        {"name": "input", "datatype": "INT64", "shape": [-1, 4]}]))
    with pytest.raises(UsageError, match="is float64 but the model takes INT64"):
        models.predict("tiny", np.ones((1, 4)))
    assert [r[0] for r in fake.requests[n_requests:]] == ["GET"]  # refused before sending


# -- item 4: AIDC_URL with /hub, and pages that are not the API -------------------------------

def test_hub_url_is_accepted_and_html_is_named_not_printed(fake, monkeypatch, capsys):
    fake.routes[("GET", "/services/jobs/api/jobs")] = (200, {"jobs": []})
    for suffix in ("", "/", "/hub", "/hub/", "//hub//"):
        c = Client(fake.url + suffix, "t")
        assert c.url == fake.url
        assert c.get_json("services/jobs/api/jobs") == {"jobs": []}

    with pytest.raises(PlatformError) as e:  # e.g. a proxy's or another server's page
        Client(fake.url, "t").get_json("services/nosuch/api/things")
    text = str(e.value)
    assert text == (f"{fake.url}/services/nosuch/api/things answered 404 with an HTML page, "
                    "not the aidc API: is AIDC_URL the platform's address (http://host:8000)?")
    fake.routes[("GET", "/services/jobs/api/page")] = (200, "<html>a login page</html>")
    with pytest.raises(PlatformError, match="answered 200 with an HTML page"):
        Client(fake.url, "t").get_json("services/jobs/api/page")

    # the CLI: `aidc jobs list` against a URL that is not the platform prints one short line
    monkeypatch.setenv("AIDC_URL", fake.url + "/elsewhere")
    assert main(["jobs", "list"]) == 1
    err = capsys.readouterr().err
    assert "with an HTML page, not the aidc API" in err and "<" not in err and len(err) < 300


# -- item 10: `aidc server start --profile` checks the profile; refusals exit 1; full URL ------

def test_server_start_checks_the_profile_and_prints_the_url(fake, capsys):
    state = {"running": True}
    fake.routes[("GET", "/services/resources/api/profiles")] = (200, {"profiles": [
        {"id": "cpu", "gpus": 0}, {"id": "gpu-1", "gpus": 1}]})
    fake.routes[("GET", "/hub/api/user")] = (200, {"name": "newsci", "kind": "user",
                                                  "admin": False, "groups": []})

    def spawn(body):
        if state["running"]:
            return 400, {"status": 400, "message": "newsci is already running"}
        state["running"] = True
        return 201, {}

    fake.routes[("POST", "/hub/api/users/newsci/server")] = spawn
    fake.routes[("GET", "/hub/api/users/newsci")] = lambda body: (200, {
        "name": "newsci", "servers": {"": {"ready": True, "url": "/user/newsci/"}}})

    assert main(["server", "start", "--profile", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no profile 'nosuch'" in err and "cpu, gpu-1" in err and "already running" not in err
    assert not [r for r in fake.requests if r[0] == "POST"]  # checked before asking the hub

    assert main(["server", "start", "--profile", "cpu"]) == 1  # refused: exit 1, not 2
    assert "newsci is already running" in capsys.readouterr().err

    state["running"] = False
    assert main(["server", "start", "--profile", "gpu-1"]) == 0
    assert capsys.readouterr().out.strip() == f"server ready: {fake.url}/user/newsci/"


# -- item 11: `aidc models register` names its own flags ---------------------------------------

def test_register_names_the_cli_flags_and_takes_an_example(fake, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    model = torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.zeros(1, 4))
    path = tmp_path / "model.pt"
    model.save(str(path))

    assert main(["models", "register", "tiny", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--example FILE.npy" in err and "--signature" in err
    assert "example=" not in err and "signature=" not in err

    def upload(body):
        meta = body.split(b'name="metadata"', 1)[1].split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
        meta = json.loads(meta)
        return 201, {"name": "tiny", "version": 1, "format": meta["format"],
                     "signature": meta["signature"]}

    fake.routes[("POST", "/services/models/api/models/tiny/versions")] = upload
    example = tmp_path / "x.npy"
    np.save(example, np.zeros((2, 4), np.float32))
    assert main(["models", "register", "tiny", str(path), "--example", str(example)]) == 0
    assert capsys.readouterr().out.strip() == "registered tiny version 1 (torchscript)"
    sent = json.loads(fake.requests[-1][2].split(b'name="metadata"', 1)[1]
                      .split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0])
    assert sent["signature"]["inputs"][0]["datatype"] == "FP32"
    assert sent["signature"]["inputs"][0]["shape"][1:] == [4]
