"""Model registry and v2 serving end to end: real hub, models service, replica processes, tritonclient."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime

import numpy as np
import psutil
import pytest
import requests

from aidc.client import Client

torch = pytest.importorskip("torch")  # installed by `make test`; the import is only slow
import tritonclient.http as httpclient  # noqa: E402

from jobs_helpers import wait_service  # noqa: E402
from platform_helpers import nginx_folder  # noqa: E402


class CNN(torch.nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(1, 32, 3)
        self.c2 = torch.nn.Conv2d(32, 64, 3)
        self.fc = torch.nn.Linear(64 * 5 * 5, 10)
        self.scale = scale

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1)) * self.scale


def models_api(platform, token, method, path, **kw):
    kw.setdefault("timeout", 600)
    return platform.api(token).request(method, f"{platform.url}/services/models/api{path}", **kw)


@pytest.fixture(scope="module")
def served(platform, scientist):
    """mnist v1 (scale 1) and v2 (scale 2), v1 deployed."""
    wait_service(platform, scientist.token)
    client = Client(platform.url, scientist.token)
    import aidc
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    v1 = aidc.models.register(CNN(1.0).eval(), name="mnist", example=x, metrics={"accuracy": 0.98},
                              client=client)
    v2 = aidc.models.register(CNN(2.0).eval(), name="mnist", example=x, client=client)
    dep = aidc.models.deploy("mnist", version=v1.version, replicas=2, client=client)
    assert dep["ready"], dep
    return {"client": client, "v1": v1, "v2": v2}


def triton(platform):
    return httpclient.InferenceServerClient(url=f"127.0.0.1:{platform.port}/services/models")


def auth(user):
    return {"Authorization": f"token {user.token}"}


def reference(scale: float, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return CNN(scale).eval()(torch.from_numpy(x)).numpy()


def test_register_deploy_infer_torchscript_with_tritonclient(platform, scientist, served):
    v1 = served["v1"]
    assert v1.format == "torchscript" and v1.version == 1
    assert v1.signature["inputs"][0]["shape"] == [-1, 1, 28, 28]
    tc = triton(platform)
    assert tc.is_server_live(headers=auth(scientist))
    assert tc.is_model_ready("mnist", headers=auth(scientist))
    meta = tc.get_model_metadata("mnist", headers=auth(scientist))
    assert meta["inputs"][0]["datatype"] == "FP32"
    x = np.random.default_rng(1).standard_normal((5, 1, 28, 28)).astype(np.float32)
    for binary in (True, False):
        inp = httpclient.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput(meta["outputs"][0]["name"], binary_data=binary)
        result = tc.infer("mnist", [inp], outputs=[out], headers=auth(scientist))
        got = result.as_numpy(meta["outputs"][0]["name"])
        assert np.allclose(got, reference(1.0, x), atol=1e-4)
    # the same through the Python client
    import aidc
    pred = aidc.models.predict("mnist", x[:2], client=served["client"])
    assert np.allclose(pred, reference(1.0, x[:2]), atol=1e-4)


def test_bad_requests_get_clear_4xx_and_serving_continues(platform, scientist, served):
    base = f"{platform.url}/services/models/v2/models/mnist"
    s = platform.api(scientist.token)
    wrong = {"inputs": [{"name": served["v1"].signature["inputs"][0]["name"], "shape": [1, 3, 28, 28],
                         "datatype": "FP32", "data": [0.0] * (3 * 28 * 28)}]}
    r = s.post(f"{base}/infer", json=wrong, timeout=60)
    assert r.status_code == 400 and "[-1,1,28,28]" in r.json()["error"].replace(" ", ""), r.text
    r = s.post(f"{base}/infer", data=b"not json", timeout=60)
    assert r.status_code == 400 and "error" in r.json()
    r = s.post(f"{base}/infer", data=b"x" * (50 * 1024 * 1024), timeout=120)
    assert r.status_code == 413
    assert s.post(f"{platform.url}/services/models/v2/models/nope/infer", json=wrong, timeout=60).status_code == 404
    assert s.get(f"{base}/versions/99", timeout=60).status_code == 404
    x = np.zeros((1, 1, 28, 28), np.float32)
    import aidc
    assert aidc.models.predict("mnist", x, client=served["client"]).shape == (1, 10)


def test_registry_isolation_and_owner_only_changes(platform, scientist, other_scientist, viewer, served):
    r = models_api(platform, other_scientist.token, "GET", "/models/mnist")
    assert r.status_code == 404
    r = platform.api(other_scientist.token).post(
        f"{platform.url}/services/models/v2/models/mnist/infer", json={"inputs": []}, timeout=60)
    assert r.status_code == 404
    r = requests.post(f"{platform.url}/services/models/v2/models/mnist/infer", json={"inputs": []}, timeout=60)
    assert r.status_code in (401, 403)
    r = models_api(platform, viewer.token, "GET", "/models")
    # the private model is not listed for a viewer (others' public models may be)
    assert r.status_code == 200
    assert all(m["visibility"] == "public" for m in r.json()["models"]), r.json()
    assert "mnist" not in [m["name"] for m in r.json()["models"]]
    # a corrupt "ONNX" file is refused at register time, with a clear message
    r = models_api(platform, scientist.token, "POST", "/models/broken/versions",
                   data={"metadata": '{"format": "onnx", "filename": "model.onnx", "signature": '
                                     '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], '
                                     '"outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}}'},
                   files={"artifact": ("model.onnx", b"this is not an onnx model")})
    assert r.status_code == 400 and "onnx" in r.json()["message"].lower(), r.text
    assert models_api(platform, scientist.token, "GET", "/models/broken").status_code == 404


def _load(platform, user, stop: threading.Event, results: list, versions: Counter):
    s = platform.api(user.token)
    x = np.zeros((1, 1, 28, 28), np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}
    while not stop.is_set():
        try:
            r = s.post(f"{platform.url}/services/models/v2/models/mnist/infer", json=body, timeout=60)
            results.append(r.status_code)
            versions[r.headers.get("X-Aidc-Model-Version")] += 1
        except requests.RequestException as e:
            results.append(str(e))


@contextmanager
def under_load(platform, user, callers: int = 4):
    """Inference requests from ``callers`` threads, without pause, while the block runs:
    yields (each answer's status or error, Counter of the versions that answered)."""
    stop, results, versions = threading.Event(), [], Counter()
    threads = [threading.Thread(target=_load, args=(platform, user, stop, results, versions))
               for _ in range(callers)]
    for t in threads:
        t.start()
    try:
        yield results, versions
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_canary_split_and_rollback_under_load(platform, scientist, served):
    import aidc
    c = served["client"]
    dep = aidc.models.deploy("mnist", version=1, replicas=1, canary={"version": 2, "weight": 0.3}, client=c)
    assert dep["canary_version"] == 2
    s = platform.api(scientist.token)
    x = np.zeros((1, 1, 28, 28), np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}
    seen = Counter()
    for _ in range(1000):
        r = s.post(f"{platform.url}/services/models/v2/models/mnist/infer", json=body, timeout=60)
        assert r.status_code == 200
        seen[r.headers["X-Aidc-Model-Version"]] += 1
    assert abs(seen["2"] / 1000 - 0.3) <= 0.05, seen
    # rollback (drops the canary) and a deploy of v2 and a rollback to v1, all under load
    with under_load(platform, scientist) as (results, versions):
        assert aidc.models.rollback("mnist", client=c)["canary_version"] is None
        assert aidc.models.deploy("mnist", version=2, replicas=1, client=c)["version"] == 2
        assert aidc.models.rollback("mnist", client=c)["version"] == 1
        time.sleep(1)
    failed = [r for r in results if r != 200]
    assert results and not failed, (len(results), failed[:5])
    assert versions["2"] > 0 and versions["1"] > 0


def test_replica_killed_under_load_is_restarted(platform, scientist, served):
    import aidc
    c = served["client"]
    aidc.models.deploy("mnist", version=1, replicas=2, client=c)
    with under_load(platform, scientist) as (results, versions):
        time.sleep(1)
        status = models_api(platform, scientist.token, "GET", "/models/mnist/deployment").json()
        pid = status["versions"][0]["replicas"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = models_api(platform, scientist.token, "GET", "/models/mnist/deployment").json()
            reps = status["versions"][0]["replicas"]
            if reps[0]["restarts"] >= 1 and all(r["ready"] for r in reps):
                break
            time.sleep(0.5)
        time.sleep(1)
    assert reps[0]["restarts"] >= 1 and reps[0]["pid"] != pid and all(r["ready"] for r in reps)
    failed = [r for r in results if r != 200]
    assert len(failed) <= 0.01 * len(results), (len(results), failed[:5])


def router_processes(platform) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """This platform's inference router: its service process and the router processes it runs."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "ppid"]):
        cmd = proc.info["cmdline"] or []
        if cmd[-2:] == ["-m", "aidc.models.router"] and "aidc.services.launch" not in cmd \
                and (proc.info["environ"] or {}).get("AIDC_DATA_DIR") == str(platform.data_dir):
            found.append(proc)
    pids = {p.pid for p in found}
    return ([p for p in found if p.info["ppid"] not in pids],
            [p for p in found if p.info["ppid"] in pids])


def test_router_process_killed_under_load_the_others_serve(platform, scientist, served):
    import aidc
    aidc.models.deploy("mnist", version=1, replicas=2, client=served["client"])
    [service], workers = router_processes(platform)
    assert len(workers) == 2, workers
    with under_load(platform, scientist) as (results, versions):
        time.sleep(1)
        workers[0].kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, now = router_processes(platform)
            if len(now) == 2 and workers[0].pid not in {p.pid for p in now}:
                break
            time.sleep(0.2)
        time.sleep(1)
        served_after = len(results)
        time.sleep(1)
    assert len(now) == 2 and workers[0].pid not in {p.pid for p in now}, now  # replaced
    assert len(results) > served_after  # and the new one serves along
    failed = [r for r in results if r != 200]
    assert len(failed) <= 0.01 * len(results), (len(results), failed[:5])


def test_the_whole_router_down_under_load_the_models_service_takes_over(platform, scientist, served):
    """The router's supervisor killed: its processes end with it, the edge sends v2 to the
    models service until the hub has started the router again, which then serves again."""
    import aidc
    aidc.models.deploy("mnist", version=1, replicas=2, client=served["client"])
    [service], workers = router_processes(platform)
    [front] = [p for p in service.children() if p.name() == "nginx"]  # the gRPC front
    front_folder = nginx_folder(front)
    with under_load(platform, scientist) as (results, versions):
        time.sleep(1)
        killed = time.time()
        service.kill()
        gone, alive = psutil.wait_procs([*workers, front], timeout=30)
        assert not alive, alive
        start = len(results)
        deadline = time.monotonic() + 60
        while len(results) < start + 20:  # answered with no router worker left
            assert time.monotonic() < deadline, results[start:start + 5]
            time.sleep(0.05)
        deadline = time.monotonic() + 120
        while len(router_processes(platform)[1]) < 2:  # the hub starts the router again
            assert time.monotonic() < deadline, "the router was not started again"
            time.sleep(0.2)
        # until the edge has tried the router again (a second after its failure): the new
        # router's own counts (its supervisor removed its predecessor's) show answers
        from aidc.models.routing import read_stats
        deadline = time.monotonic() + 30
        while not any(m == "mnist" and str(c) == "200" and n
                      for stats in read_stats(platform.data_dir) for m, v, c, n in stats.get("requests", ())):
            assert time.monotonic() < deadline, "the router did not serve again"
            time.sleep(0.2)
        back = len(results)
        time.sleep(1)
    assert len(results) > back
    failed = [r for r in results if r != 200]
    assert len(failed) <= 0.01 * len(results), (len(results), failed[:5])
    # meanwhile the models service answered them: its per-caller count is in the audit log

    def by_the_service() -> bool:
        return any(e.get("action") == "infer" and e.get("service") == "models"
                   and e["actor"] == scientist.name and e["result"] == "success"
                   and datetime.fromisoformat(e["period_start"]).timestamp() > killed - 3
                   for e in platform.audit_events())
    deadline = time.monotonic() + 60
    while not by_the_service():
        assert time.monotonic() < deadline, "no inference answered by the models service"
        time.sleep(0.5)
    assert not os.path.exists(front_folder)  # the killed router's: removed by the new one


def test_inference_goes_past_the_proxy_and_on_while_the_proxy_is_down(platform, scientist, served):
    """The public port is nginx (aidc.hub.edge): v2 goes straight to the router, the rest to
    configurable-http-proxy, which listens on a private socket only; while the proxy is
    down, inference goes on and the rest gets a 503 that says why; the hub starts it again."""
    from platform_helpers import grpc_port_owners
    import aidc
    aidc.models.deploy("mnist", version=1, replicas=2, client=served["client"])
    assert grpc_port_owners(platform.port) == {"nginx"}
    [chp] = [p for p in psutil.Process(platform.proc.pid).children(recursive=True)
             if "configurable-http-proxy" in " ".join(p.cmdline())]
    socket = chp.cmdline()[chp.cmdline().index("--socket") + 1]
    assert os.stat(os.path.dirname(socket)).st_mode & 0o777 == 0o700
    listening = {c.laddr.port for c in chp.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert platform.port not in listening and len(listening) == 1, listening  # its API port only
    with under_load(platform, scientist) as (results, versions):
        time.sleep(1)
        chp.kill()
        killed = len(results)
        r = requests.get(f"{platform.url}/hub/api", timeout=30)
        assert r.status_code == 503 and "proxy is restarting" in r.text, (r.status_code, r.text)
        deadline = time.monotonic() + 60
        while requests.get(f"{platform.url}/hub/api", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the hub did not start the proxy again"
            time.sleep(0.2)
        back = len(results)
        time.sleep(0.5)
    assert back > killed  # inference answered while the proxy was down
    failed = [r for r in results if r != 200]
    assert not failed, (len(results), failed[:5])
    assert platform.hub(scientist.token, "GET", f"/users/{scientist.name}").status_code == 200


def test_revoked_token_stops_inference_within_the_cache_time(platform, scientist, served):
    from aidc.hub.config import DEFAULT_AUTH_CACHE_SECONDS
    r = platform.hub(scientist.token, "POST", f"/users/{scientist.name}/tokens", json={"note": "infer"})
    token, token_id = r.json()["token"], r.json()["id"]
    url = f"{platform.url}/services/models/v2/models/mnist/infer"
    name = served["v1"].signature["inputs"][0]["name"]
    body = {"inputs": [{"name": name, "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}

    def infer() -> int:
        return requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60).status_code
    assert infer() == 200  # and known to the router now
    r = platform.hub(scientist.token, "DELETE", f"/users/{scientist.name}/tokens/{token_id}")
    assert r.status_code == 204
    revoked = time.monotonic()
    while (code := infer()) == 200:
        # the cache time plus what a loaded 2-core machine may add to a few requests
        assert time.monotonic() - revoked < DEFAULT_AUTH_CACHE_SECONDS + 4, "still accepted"
        time.sleep(0.2)
    assert code in (401, 403)
    assert infer() in (401, 403)  # and it stays refused


def test_grpc_infer_metadata_and_clear_refusals(platform, scientist, other_scientist, served):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tc = grpcclient.InferenceServerClient(url=f"127.0.0.1:{platform.grpc_port}")
    h = {"authorization": f"Bearer {scientist.token}"}
    assert tc.is_server_live(headers=h) and tc.is_server_ready(headers=h)
    assert tc.is_model_ready("mnist", headers=h)
    meta = tc.get_model_metadata("mnist", headers=h)
    assert meta.inputs[0].datatype == "FP32" and list(meta.inputs[0].shape) == [-1, 1, 28, 28]
    x = np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32)

    def infer(array, name=meta.inputs[0].name, datatype="FP32", headers=h, model="mnist"):
        inp = grpcclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        return tc.infer(model, [inp], headers=headers)

    result = infer(x)
    version = int(result.get_response().model_version)
    scale = {1: 1.0, 2: 2.0}[version]
    assert np.allclose(result.as_numpy(meta.outputs[0].name), reference(scale, x), atol=1e-4)

    def refused(call) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as e:
            call()
        return e.value.status(), e.value.message()

    status, message = refused(lambda: infer(np.zeros((1, 3, 28, 28), np.float32)))
    assert status == "StatusCode.INVALID_ARGUMENT" and "[-1,1,28,28]" in message.replace(" ", ""), message
    status, message = refused(lambda: infer(x.astype(np.float64), datatype="FP64"))
    assert status == "StatusCode.INVALID_ARGUMENT" and "FP32" in message, message
    status, message = refused(lambda: infer(x, name="nope"))
    assert status == "StatusCode.INVALID_ARGUMENT" and "nope" in message, message
    assert refused(lambda: infer(x, model="no-such-model"))[0] == "StatusCode.NOT_FOUND"
    assert refused(lambda: infer(x, headers={}))[0] == "StatusCode.UNAUTHENTICATED"
    assert refused(lambda: infer(x, headers={"authorization": "Bearer not-a-token"}))[0] == \
        "StatusCode.UNAUTHENTICATED"
    other = {"authorization": f"Bearer {other_scientist.token}"}
    status, message = refused(lambda: infer(x, headers=other))  # someone else's model
    assert status == "StatusCode.NOT_FOUND", (status, message)
    assert refused(lambda: tc.get_model_metadata("mnist", headers=other))[0] == "StatusCode.NOT_FOUND"
    big = np.zeros((700, 1, 28, 28), np.float32)  # 2.2 MB: under the limit, served
    assert infer(big).as_numpy(meta.outputs[0].name).shape == (700, 10)
    huge = np.zeros((6000, 1, 28, 28), np.float32)  # 18.8 MB: over the 16 MiB limit
    assert refused(lambda: infer(huge))[0] == "StatusCode.RESOURCE_EXHAUSTED"
    # and it goes on serving
    assert infer(x[:1]).as_numpy(meta.outputs[0].name).shape == (1, 10)
    tc.close()

    # the port is the native front's (nginx, which hands each call to the router as
    # HTTP/1.1: aidc.models.grpc_front); what is not a v2 call gets gRPC's own statuses
    import grpc
    from platform_helpers import grpc_port_owners

    assert grpc_port_owners(platform.grpc_port) == {"nginx"}
    with grpc.insecure_channel(f"127.0.0.1:{platform.grpc_port}") as channel:
        def raw(method: str, body: bytes) -> tuple[grpc.StatusCode, str]:
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as e:
                call(body, metadata=(("authorization", f"Bearer {scientist.token}"),), timeout=30)
            return e.value.code(), e.value.details()

        code, details = raw("ModelInfer", b"\xff\xff not protobuf")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "ModelInferRequest" in details, details
        code, details = raw("RepositoryIndex", b"")
        assert code == grpc.StatusCode.UNIMPLEMENTED and "RepositoryIndex" in details, details


def test_models_service_restart_under_load_inference_goes_on(platform, scientist, served):
    import aidc
    aidc.models.deploy("mnist", version=1, replicas=2, client=served["client"])
    status = models_api(platform, scientist.token, "GET", "/models/mnist/deployment").json()
    pids = sorted(r["pid"] for r in status["versions"][0]["replicas"])
    with under_load(platform, scientist) as (results, versions):
        time.sleep(1)
        for proc in psutil.process_iter(["cmdline", "environ"]):
            cmd = proc.info["cmdline"] or []
            if cmd[-2:] == ["-m", "aidc.models.service"] and "aidc.services.launch" not in cmd \
                    and (proc.info["environ"] or {}).get("AIDC_DATA_DIR") == str(platform.data_dir):
                proc.kill()
                break
        else:
            raise AssertionError("models service not found")
        during = len(results)
        # while it is down, the router still says the model is ready (from its table)
        down = None
        deadline = time.monotonic() + 30
        while down is None and time.monotonic() < deadline:
            if models_api(platform, scientist.token, "GET", "/models/mnist/deployment",
                          timeout=5).status_code == 503:
                tc = triton(platform)
                down = (tc.is_server_live(headers=auth(scientist))
                        and tc.is_model_ready("mnist", headers=auth(scientist)))
        assert down is True
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until the hub has started it again
            try:
                r = models_api(platform, scientist.token, "GET", "/models/mnist/deployment", timeout=5)
                if r.status_code == 200 and r.json()["ready"]:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        time.sleep(1)
    assert r.status_code == 200 and r.json()["ready"], r.text
    # the new service adopted the replicas that kept serving: the same processes
    assert sorted(x["pid"] for x in r.json()["versions"][0]["replicas"]) == pids
    failed = [x for x in results if x != 200]
    assert len(results) > during and len(failed) <= 0.01 * len(results), (len(results), failed[:5])
    x = np.ones((1, 1, 28, 28), np.float32)
    assert np.allclose(aidc.models.predict("mnist", x, client=served["client"]), reference(1.0, x), atol=1e-4)


def test_onnx_and_keras_register_deploy_infer_and_export(platform, scientist, served, tmp_path):
    import aidc
    c = served["client"]
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(np.float32)
    onnx_path = tmp_path / "cnn.onnx"
    torch.onnx.export(CNN(1.0).eval(), torch.from_numpy(x[:1]), str(onnx_path), input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    v = aidc.models.register(onnx_path, name="cnn-onnx", client=c)
    assert v.format == "onnx" and v.signature["inputs"][0]["name"] == "pixels"
    aidc.models.deploy("cnn-onnx", client=c)
    assert np.allclose(aidc.models.predict("cnn-onnx", x, client=c), reference(1.0, x), atol=1e-4)

    import keras
    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2, name="scores")(inputs))
    feats = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    v = aidc.models.register(model, name="tiny-keras", client=c)
    assert v.format == "keras"
    aidc.models.deploy("tiny-keras", client=c)
    assert np.allclose(aidc.models.predict("tiny-keras", feats, client=c), model.predict(feats, verbose=0), atol=1e-5)

    # both through tritonclient's HTTP and gRPC clients as well
    import tritonclient.grpc as grpcclient
    h = {"authorization": f"Bearer {scientist.token}"}
    for name, array, expected in (("cnn-onnx", x, reference(1.0, x)),
                                  ("tiny-keras", feats, model.predict(feats, verbose=0))):
        for lib, client in ((httpclient, triton(platform)),
                            (grpcclient, grpcclient.InferenceServerClient(f"127.0.0.1:{platform.grpc_port}"))):
            meta = client.get_model_metadata(name, headers=dict(h))  # tritonclient.http adds to it
            inputs = meta["inputs"] if isinstance(meta, dict) else meta.inputs
            outputs = meta["outputs"] if isinstance(meta, dict) else meta.outputs
            in_name = inputs[0]["name"] if isinstance(meta, dict) else inputs[0].name
            out_name = outputs[0]["name"] if isinstance(meta, dict) else outputs[0].name
            inp = lib.InferInput(in_name, list(array.shape), "FP32")
            inp.set_data_from_numpy(array)
            got = client.infer(name, [inp], headers=dict(h)).as_numpy(out_name)
            assert np.allclose(got, expected, atol=1e-4), (name, lib.__name__)

    # a Triton/KServe model repository from the registry
    env = {"AIDC_URL": platform.url, "AIDC_TOKEN": scientist.token}
    r = platform.cli("models", "export", "cnn-onnx", "--version", "1", "--format", "triton",
                     str(tmp_path / "repo"), env=env)
    assert r.returncode == 0, r.stderr
    config = (tmp_path / "repo" / "cnn-onnx" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "pixels" in config
    assert (tmp_path / "repo" / "cnn-onnx" / "1" / "model.onnx").exists()
    shown = platform.cli("models", "show", "cnn-onnx", env=env)
    assert "v1" in shown.stdout and "deployed: v1" in shown.stdout
    for name in ("cnn-onnx", "tiny-keras"):
        aidc.models.undeploy(name, client=c)


def scale_onnx(path, factor: float = 3.0):
    """A tiny ONNX model (y = x * factor) written with onnx's own helpers: no torch in a kernel."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


REGISTER_FROM_JOB = """
import os, requests, aidc
from pathlib import Path
{scale_onnx}
path = scale_onnx(Path("scaled.onnx"), factor)
v = aidc.models.register(path, name="from-job", metrics={{"loss": 0.5}})
aidc.record("registered_version", v.version)
# the job's token is its owner's, narrowed: it cannot start a server
hub = os.environ["AIDC_URL"] + "/hub/api"
auth = {{"Authorization": "token " + os.environ["AIDC_TOKEN"]}}
me = requests.get(hub + "/user", headers=auth, timeout=30).json()["name"]
r = requests.post(hub + "/users/" + me + "/server", headers=auth, timeout=30)
aidc.record("server_start_status", r.status_code)
"""


def test_model_registered_from_a_job_records_its_lineage(platform, scientist, other_scientist, admin, served):
    import inspect
    from jobs_helpers import notebook, put, submit, wait
    source = REGISTER_FROM_JOB.format(scale_onnx=inspect.getsource(scale_onnx))
    put(platform, scientist, "train/register.ipynb", notebook(source, parameters="factor = 1.0"))
    job = submit(platform, scientist, "train/register.ipynb", parameters={"factor": 3.0})
    done = wait(platform, scientist, job["id"], timeout=240)
    assert done["status"] == "completed", (done, platform.log()[-4000:])
    assert done["metrics"]["server_start_status"] == 403
    version = done["metrics"]["registered_version"]
    r = models_api(platform, scientist.token, "GET", f"/models/from-job/versions/{version}")
    lineage = r.json()["lineage"]
    assert lineage["job"] == job["id"] and lineage["attempt"] == 1
    assert lineage["notebook"] == "train/register.ipynb" and lineage["parameters"] == {"factor": 3.0}
    assert lineage["owner"] == scientist.name
    # the lineage leads to the executed notebook, which shows the registration ran
    out = platform.api(scientist.token).get(f"{platform.url}/{lineage['output_notebook']}", timeout=60)
    assert out.status_code == 200 and "from-job" in out.text
    # the job's token was revoked when it ended
    tokens = platform.api(admin.token).get(
        f"{platform.url}/hub/api/users/{scientist.name}/tokens", timeout=60).json()["api_tokens"]
    assert not [t for t in tokens if (t.get("note") or "").startswith(f"aidc job {job['id']}")]
    # nobody can claim someone else's job as the lineage of their model
    meta = {"format": "onnx", "filename": "m.onnx", "lineage": {"job": job["id"]},
            "signature": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                          "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}}
    import json
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        raw = scale_onnx(Path(tmp) / "m.onnx").read_bytes()
    r = models_api(platform, other_scientist.token, "POST", "/models/stolen/versions",
                   data={"metadata": json.dumps(meta)}, files={"artifact": ("m.onnx", raw)})
    assert r.status_code == 400 and "not one of your jobs" in r.json()["message"], r.text


def test_public_model_is_readable_without_a_token(platform, scientist, served, tmp_path):
    import aidc
    c = served["client"]
    aidc.models.register(scale_onnx(tmp_path / "demo.onnx", 2.0), name="demo-double", client=c)
    aidc.models.deploy("demo-double", client=c)
    base = f"{platform.url}/services/models/v2"
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}
    r = requests.post(f"{base}/models/demo-double/infer", json=body, timeout=60)  # no token at all
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [3.0, -4.0]
    assert requests.get(f"{base}/models/demo-double", timeout=60).json()["inputs"][0]["name"] == "x"
    tc = triton(platform)  # tritonclient without credentials
    assert tc.is_server_ready() and tc.is_model_ready("demo-double")
    # only what was opened: other models, and the registry API, still need a token
    r = requests.post(f"{base}/models/mnist/infer", json=body, timeout=60)
    assert r.status_code in (401, 403)
    r = requests.get(f"{platform.url}/services/models/api/models/demo-double", timeout=60)
    assert r.status_code in (401, 403)
    aidc.models.undeploy("demo-double", client=c)


def test_replicas_run_as_the_models_owner(platform, scientist, served):
    """A model's code (its graph, its layers) never runs as the service: its replicas are the owner's."""
    import pwd
    from platform_helpers import unix_name
    account = pwd.getpwnam(unix_name(scientist.name, platform.prefix))
    dep = models_api(platform, scientist.token, "GET", "/models/mnist/deployment").json()
    pids = [r["pid"] for v in dep["versions"] for r in v["replicas"]]
    assert pids
    for pid in pids:
        proc = psutil.Process(pid)
        assert proc.uids().real == account.pw_uid and proc.gids().real == account.pw_gid
        assert proc.environ()["HOME"] == account.pw_dir
        artifact = proc.cmdline()[proc.cmdline().index("--artifact") + 1]
        staged = os.stat(os.path.dirname(artifact))  # the owner's own copy, closed to others
        assert staged.st_uid == account.pw_uid and staged.st_mode & 0o777 == 0o700
        assert not artifact.startswith(str(platform.data_dir))
        # the replica's copy is plaintext (a TorchScript zip), the stored one ciphertext
        assert open(artifact, "rb").read(4) == b"PK\x03\x04"
    stored = [p for p in (platform.data_dir / "models" / "artifacts" / "mnist").rglob("*") if p.is_file()]
    assert stored
    for p in stored:
        raw = p.read_bytes()
        assert raw.startswith(b"AIDCENC1") and b"PK\x03\x04" not in raw and b"constants.pkl" not in raw, p
    # the export route decrypts for the owner, into a folder it removes
    r = models_api(platform, scientist.token, "GET", "/models/mnist/versions/1/artifact")
    assert r.status_code == 200 and r.content[:4] == b"PK\x03\x04"


def test_endpoint_metrics_count_every_request_and_federate_replicas(platform, scientist, viewer, admin, served):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(token):
        r = requests.get(f"{platform.url}/services/models/metrics", headers={"Authorization": f"token {token}"},
                         timeout=60)
        assert r.status_code == 200, r.text
        return {f.name: f for f in text_string_to_metric_families(r.text)}  # valid Prometheus text

    def count(families, name, **labels):
        return sum(s.value for s in families[name].samples
                   if s.name == f"{name}_total" and all(s.labels.get(k) == v for k, v in labels.items()))

    import aidc
    deployed = aidc.models.get("mnist", client=served["client"])["deployment"]["version"]
    started = time.time()
    before = scrape(admin.token)
    s = platform.api(scientist.token)
    base = f"{platform.url}/services/models/v2/models/mnist"
    name = served["v1"].signature["inputs"][0]["name"]
    good = {"inputs": [{"name": name, "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    bad = {"inputs": [{"name": name, "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]}]}
    for _ in range(7):
        assert s.post(f"{base}/infer", json=good, timeout=60).status_code == 200
    for _ in range(3):
        assert s.post(f"{base}/infer", json=bad, timeout=60).status_code == 400
    labels = {"model": "mnist", "version": str(deployed)}
    # the router writes its counts for the service every second: wait for them
    deadline = time.monotonic() + 30
    while True:
        after = scrape(viewer.token)  # viewers read metrics too (dashboards)
        done = count(after, "aidc_endpoint_requests", code="200", **labels) - \
            count(before, "aidc_endpoint_requests", code="200", **labels)
        if done >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert done == 7
    assert count(after, "aidc_endpoint_request_errors", **labels) - \
        count(before, "aidc_endpoint_request_errors", **labels) == 3
    latency = [x for x in after["aidc_endpoint_request_duration_seconds"].samples
               if x.name.endswith("_count") and x.labels.get("model") == "mnist"]
    assert sum(x.value for x in latency) >= 10
    # each replica's batching figures, told apart by a replica label
    batches = [x for x in after["aidc_model_batch_size"].samples
               if x.name.endswith("_count") and x.labels.get("model") == "mnist"]
    assert {x.labels["replica"] for x in batches} == {"0", "1"} and sum(x.value for x in batches) >= 7
    r = requests.get(f"{platform.url}/services/models/metrics", headers=auth(scientist), timeout=60)
    assert r.status_code == 403 and "admins and viewers" in r.json()["message"]

    # the audit log counts the calls per caller, version, result and period (2 s here),
    # one event each, not one line per call
    def counted() -> dict[str, int]:
        totals = {"success": 0, "failure": 0}
        for e in platform.audit_events():
            if (e.get("action") == "infer" and e["actor"] == scientist.name
                    and e["target"] == f"mnist@{deployed}"
                    and datetime.fromisoformat(e["period_start"]).timestamp() > started - 2):
                totals[e["result"]] += e["count"]
        return totals
    deadline = time.monotonic() + 60
    while not ((n := counted())["failure"] == 3 and n["success"] >= 7):
        assert time.monotonic() < deadline, n
        time.sleep(0.5)
    # counted where they were answered: the inference router (the direct path); this
    # test's only: while the router was down (an earlier test) the models service answered
    events = [e for e in platform.audit_events() if e.get("action") == "infer"
              and datetime.fromisoformat(e["period_start"]).timestamp() > started - 2]
    assert all(e["service"] == "models-router" and e["period_seconds"] == 2 for e in events)
    assert any(e["count"] > 1 for e in events)


def test_deployment_with_a_gpu_holds_it_in_the_ledger(platform, scientist, admin, served):
    import aidc
    c = served["client"]
    def replica_gpus() -> set[str]:
        dep = models_api(platform, scientist.token, "GET", "/models/mnist/deployment").json()
        seen = {psutil.Process(r["pid"]).environ().get("CUDA_VISIBLE_DEVICES")
                for v in dep["versions"] for r in v["replicas"]}
        assert len(seen) == 1, seen
        return set(filter(None, seen.pop().split(",")))

    aidc.models.deploy("mnist", version=1, replicas=1, gpus=1, client=c)
    held = [u for u in platform.resources(admin.token)["units"] if u["holder"] == "deployment:mnist"]
    assert len(held) == 1
    # its replicas see exactly that GPU (on the simulated inventory the model still runs on the CPU)
    assert replica_gpus() == {held[0]["visible_id"]}
    assert aidc.models.predict("mnist", np.zeros((1, 1, 28, 28), np.float32), client=c).shape == (1, 10)
    aidc.models.deploy("mnist", version=1, replicas=1, gpus=0, client=c)
    holders = {u["holder"] for u in platform.resources(admin.token)["units"] if u["holder"]}
    assert "deployment:mnist" not in holders
    assert replica_gpus() == set()  # and a deployment without GPUs sees none
    aidc.models.undeploy("mnist", client=c)
    r = models_api(platform, scientist.token, "GET", "/models/mnist/deployment")
    assert r.status_code == 404
