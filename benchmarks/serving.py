"""Model serving: the aidc endpoint vs the raw forward pass and ``mlflow models serve``.

Goals (from the issue), on one small CNN (the MNIST CNN: Conv2d 32 -> pool -> Conv2d 64
-> pool -> Linear 10), single-sample requests:

(i)   at concurrency 32, the aidc endpoint serves at least 6x the throughput of
      ``mlflow models serve`` of the same model, at no worse p99;
(ii)  at concurrency 32, it reaches 0.3x the raw in-process batched forward pass (the
      limit): the fraction is reported;
(iii) at concurrency 1, its p50 is at most 1.5 ms above the raw forward pass of one sample;
(iv)  at concurrency 32, v2 over gRPC (the router's own port) serves at least 1.2x the
      throughput of v2 REST with binary tensors, measured side by side.

How
---
**Model.** :class:`CNN` with fixed weights (seed 0). Every side serves these weights.

**Raw.** The same model in this process, ``torch.inference_mode()``: one sample per call
on one thread (ms per call, median), and batches of 32 and 64 on one thread and on all
(samples/s, from the median call). The best batched figure is "the limit" of goal (ii).

**aidc.** One real platform (``aidc up`` through ``tests/platform_helpers.py``, as root)
with no configuration of its own. A ``scientist`` user registers the model with
``aidc.models.register`` (TorchScript, signature from an example) and deploys it with
the defaults (1 replica, 0 GPUs, max batch 32, max queue delay 2 ms; the replica gets
all cores as compute threads). Requests go where a user sends them: the hub's public
URL ``/services/models/v2/models/cnn/infer`` with ``Authorization: token ...``, i.e.
the public edge (nginx, ``aidc.hub.edge``) -> inference router (token check, cached;
forward) -> replica; configurable-http-proxy, behind the edge, is not on this path.
gRPC goes to the router's own port (``aidc up --grpc-port``), ``ModelInfer`` with raw
input bytes as ``tritonclient.grpc`` sends them, from a ``grpc.aio`` closed loop; with
``--wrk``, also from nghttp2's ``h2load`` (C; Debian's ``nghttp2-client``) beside ``wrk``
sending REST binary, so that neither side's Python client decides goal (iv).
Two encodings: v2 JSON tensors (what ``aidc.models.predict`` sends; the goals use this
one, as MLflow gets JSON too) and the binary tensor extension as ``tritonclient.http``
sends it. The replica itself is measured too, on its Unix socket (its only address: the
deployment's status names it; this script runs as root, so it may connect), to show what
the hub proxy and the models service add, and a configurable-http-proxy of its own (the
hub's binary and flags, ``--default-target http+unix://...``) in front of the replica
splits that between the proxy and the service. (configurable-http-proxy keeps no
connections open to a Unix-socket target: there, each request opens one and the answer
says ``Connection: close``, so this line costs more per request than it did while the
replicas also listened on TCP; the hub path, through the models service, is unaffected.) Then the deployment is switched to 2 replicas (one compute thread each)
and measured again.

**MLflow.** A separate venv (``benchmarks/.mlflow-venv``, made on first use with
``python3.11 -m venv`` and ``pip install mlflow==3.17.2 torch==2.13.0 numpy``) saves the
same model with ``mlflow.pytorch.save_model`` (its default format, ``pt2``, with an input
example and a signature from ``infer_signature``) and serves it with ``mlflow models
serve -m DIR --env-manager local -w 1``. One worker, because uvicorn with more than one
worker never sets TCP_NODELAY on its listening socket, which adds ~44 ms to every
keep-alive request here. Requests: ``POST /invocations`` with ``{"inputs": [[[[...]]]]}``
(the 1x1x28x28 sample as nested lists); answers ``{"predictions": [[...]]}``.

**Load.** One asyncio process with a minimal HTTP/1.1 client (an ``asyncio.Protocol``
per keep-alive connection, requests built in advance), so that the client costs as
little CPU as possible on a 2-core machine (its CPU is printed). Closed loop: each of
the ``N`` connections sends the next request as soon as the answer is in. Each run:
``--warmup`` s (not counted), then ``--seconds`` s counted (requests sent and answered
inside the window). The samples cycle through 64 fixed random inputs.

**Checks.** Every counted answer must be 200 and its output must match the raw model's
output for the same input within 1e-4 (checked after each run, from the stored answers,
so the check costs nothing while measuring); any other answer, a wrong output or a
dropped connection counts as an error and fails the run.

**Order.** ``--rounds`` rounds of MLflow c=1, aidc c=1, MLflow c=32, aidc c=32 (hub,
JSON), alternating which side goes first; the goals use the medians over rounds. Then
once each: aidc hub binary, replica direct JSON and binary, CHP alone -> replica, and 2
replicas.

**Where the time goes.** For each run the script prints the CPU used (in cores, over
the counted window) by each process: the hub, configurable-http-proxy, the models
service, the replica(s), the MLflow server, the load generator, and the whole machine,
and the replicas' own batching counters (rows per model run, model time, queue delay).
``--profile`` also samples the models service and the replica with py-spy (installed
into the MLflow venv, not into the project's) during one extra hub c=32 run and prints
their busiest functions.

**Clean-up.** The process groups of the MLflow server and of the extra proxy, and the
platform (its Unix accounts and processes), are stopped whatever happens, Ctrl-C
included, and the temporary folder is removed; the script checks nothing is left.

**The replica alone, before and after** (``--replica-only [--baseline REV]``): no
platform and no MLflow (and no root): the replica (``python -m aidc.models.server`` on a
TCP port, the deployment's defaults) of git revision REV (extracted with ``git archive``)
and of this working tree, side by side in one run: ``--rounds`` rounds of v2 JSON and
binary at c=1 and c=32, alternating which side goes first, every answer checked as
above, CPU per request of the replica, and each side's cold start (process start to
ready, three starts each). At c=32 a third side, this tree as 2 replicas of 1 compute
thread each, shows which of replicas x threads to choose on the machine. The full run
also prints the deployment's cold start as its status reports it (``ready_seconds``).

Usage (as root, from the repository root)::

    .venv/bin/python benchmarks/serving.py [--rounds 3] [--seconds 10] [--warmup 2]
        [--no-two-replicas] [--profile] [--keep]
    .venv/bin/python benchmarks/serving.py --replica-only --baseline REV [--rounds 3] [--seconds 5]

Exit status 0 when every answer was checked correct and clean-up left nothing (even if
a goal is missed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import inspect
import itertools
import json
import os
import platform as py_platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "extensions"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402

import aidc.models  # noqa: E402
from aidc.client import Client  # noqa: E402
from bench_platforms import begin, clean_up, process_tree, report_end, wait_for_service  # noqa: E402
from platform_helpers import Platform, free_port, new_prefix  # noqa: E402

MLFLOW_VERSION = "3.17.2"
MLFLOW_VENV = ROOT / "benchmarks" / ".mlflow-venv"
TMP_PREFIX = "aidc-bench-serving-"
MODEL = "cnn"
SAMPLES = 64  # distinct inputs the requests cycle through
TOLERANCE = 1e-4
GOAL_THROUGHPUT = 6.0  # aidc / MLflow at c=32
GOAL_RAW_FRACTION = 0.3  # aidc c=32 / raw batched
GOAL_P50_OVER_RAW_MS = 1.5  # aidc c=1 p50 - raw single forward
GOAL_GRPC = 1.2  # aidc gRPC / aidc REST (binary tensors both) at c=32


class CNN(torch.nn.Module):
    """The MNIST CNN of the issue (and of tests/test_models.py); seed 0 fixes the weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(1, 32, 3)
        self.c2 = torch.nn.Conv2d(32, 64, 3)
        self.fc = torch.nn.Linear(64 * 5 * 5, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


class CheckFailed(Exception):
    """An answer was wrong or missing: the run does not count."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- raw forward pass -----------------------------------------------------------------------
def time_calls(fn: Callable[[], object], seconds: float) -> list[float]:
    """Durations of repeated calls of ``fn`` for about ``seconds`` (after 20 untimed)."""
    for _ in range(20):
        fn()
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def raw_forward(model: torch.nn.Module, x: np.ndarray, seconds: float = 2.0) -> dict:
    """The limit: the model called in this process. One sample on 1 thread; batches of 32
    and 64 on 1 thread and on all cores. Rates come from the median call, so that a few
    calls slowed by other work on the machine do not set them."""
    cores = torch.get_num_threads()
    one = torch.from_numpy(x[:1])
    res: dict = {"cores": cores, "batched": {}}
    with torch.inference_mode():
        torch.set_num_threads(1)
        single = statistics.median(time_calls(lambda: model(one), seconds))
        res["single_ms"] = single * 1000
        res["single_sps"] = 1 / single
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            for batch in (32, 64):
                xb = torch.from_numpy(np.resize(x, (batch, *x.shape[1:])).copy())
                t = statistics.median(time_calls(lambda: model(xb), seconds))
                res["batched"][(batch, threads)] = (batch / t, t * 1000)
        torch.set_num_threads(cores)
    (batch, threads), (sps, _) = max(res["batched"].items(), key=lambda kv: kv[1][0])
    res["batched_sps"], res["batched_best"] = sps, f"batch {batch} on {threads} thread(s)"
    return res


# -- requests and answers of each kind ------------------------------------------------------
#: where a target listens: a TCP port on 127.0.0.1, or a Unix socket's path (a replica)
Address = Union[int, str]


def host_header(address: Address) -> str:
    return f"127.0.0.1:{address}" if isinstance(address, int) else "localhost"


def http_request(address: Address, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One POST as bytes, built once: the load generator only writes it."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host_header(address)}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def v2_json_body(x: np.ndarray, input_name: str) -> tuple[bytes, dict[str, str]]:
    """A v2 request with JSON tensor data (what ``aidc.models.predict`` sends)."""
    body = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    return body, {"Content-Type": "application/json"}


def v2_binary_body(x: np.ndarray, input_name: str, output_name: str) -> tuple[bytes, dict[str, str]]:
    """A v2 request with the binary tensor extension, as tritonclient.http sends it."""
    raw = np.ascontiguousarray(x, dtype=np.float32).tobytes()
    header = json.dumps({
        "inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }).encode()
    return header + raw, {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(header))}


def mlflow_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """MLflow's scoring format for a tensor signature: ``{"inputs": <nested lists>}``."""
    return json.dumps({"inputs": x.tolist()}).encode(), {"Content-Type": "application/json"}


def header_value(head: bytes, name: bytes) -> bytes | None:
    """A header's value from a raw response head (``name`` in lower case)."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def parse_v2_json(head: bytes, body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float32)


def parse_v2_binary(head: bytes, body: bytes) -> np.ndarray:
    size = int(header_value(head, b"inference-header-content-length"))
    meta = json.loads(body[:size])["outputs"][0]
    return np.frombuffer(body, dtype=np.float32, offset=size,
                         count=meta["parameters"]["binary_data_size"] // 4)


def parse_mlflow(head: bytes, body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["predictions"], dtype=np.float32).ravel()


@dataclass
class Target:
    """One endpoint: where it listens, its pre-built requests (one per sample), its answers."""

    label: str
    ports: list[Address]
    requests: dict[Address, list[bytes]]  # address -> one request per sample
    parse: Callable[[bytes, bytes], np.ndarray]
    procs: Callable[[], dict[str, list[psutil.Process]]]  # its server processes, by role
    stats: Callable[[], dict[str, float]] | None = None  # the replicas' batching counters


def make_target(label: str, ports: list[Address], path: str,
                build: Callable[[np.ndarray], tuple[bytes, dict[str, str]]],
                parse: Callable[[bytes, bytes], np.ndarray], samples: np.ndarray,
                procs: Callable[[], dict[str, list[psutil.Process]]],
                auth: str | None = None,
                stats: Callable[[], dict[str, float]] | None = None) -> Target:
    reqs = {}
    for port in ports:
        built = []
        for x in samples:
            body, headers = build(x[None])
            if auth:
                headers = {**headers, "Authorization": f"token {auth}"}
            built.append(http_request(port, path, body, headers))
        reqs[port] = built
    return Target(label, ports, reqs, parse, procs, stats)


# -- the load generator ----------------------------------------------------------------------
@dataclass
class LoadRun:
    """The shared state of one closed-loop run."""

    target: Target
    concurrency: int
    window: tuple[float, float]  # counted: requests sent and answered inside it
    stop_at: float
    next_sample: int = 0
    latencies: list[float] = field(default_factory=list)
    answers: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    warmup_answers: int = 0
    dropped: int = 0
    reconnects: int = 0
    open_conns: int = 0
    finished: asyncio.Future | None = None


class Connection(asyncio.Protocol):
    """One keep-alive connection: send, read the whole answer, send the next, until stop."""

    def __init__(self, run: LoadRun, port: Address):
        self.run = run
        self.port = port
        self.requests = run.target.requests[port]
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: bytes | None = None
        self.length = -1  # body length; -1: chunked
        self.sample = 0
        self.t0 = 0.0
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        run = self.run
        if time.perf_counter() >= run.stop_at:
            self.close()
            return
        self.sample = run.next_sample
        run.next_sample = (run.next_sample + 1) % SAMPLES
        self.busy = True
        self.t0 = time.perf_counter()
        self.transport.write(self.requests[self.sample])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(self.buf[:end])
            del self.buf[:end + 4]
            value = header_value(self.head, b"content-length")
            self.length = int(value) if value is not None else -1
        if self.length >= 0:
            if len(self.buf) < self.length:
                return
            body = bytes(self.buf[:self.length])
            del self.buf[:self.length]
        else:
            if not self.buf.endswith(b"0\r\n\r\n"):
                return
            body = dechunk(bytes(self.buf))
            self.buf.clear()
        self.answered(self.head, body)

    def answered(self, head: bytes, body: bytes) -> None:
        t1 = time.perf_counter()
        run = self.run
        self.head = None
        self.busy = False
        if run.window[0] <= self.t0 and t1 <= run.window[1]:
            run.latencies.append(t1 - self.t0)
            run.answers.append((self.sample, head, body))
        elif t1 < run.window[0]:
            run.warmup_answers += 1
        closing = (header_value(head, b"connection") or b"").lower() == b"close"
        if closing:
            run.reconnects += 1
            self.transport.close()
            open_connection(run, self.port)
            return
        self.send()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        run = self.run
        run.open_conns -= 1
        if self.busy and time.perf_counter() < run.stop_at:
            run.dropped += 1
            open_connection(run, self.port)
        if run.open_conns == 0 and not run.finished.done() and time.perf_counter() >= run.stop_at:
            run.finished.set_result(None)


def dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2


def open_connection(run: LoadRun, port: Address) -> asyncio.Task:
    """A new connection to ``port`` (a TCP port or a Unix socket); counted as open at once, so a run never ends between
    one connection closing and its replacement opening."""
    run.open_conns += 1
    return asyncio.get_running_loop().create_task(_open(run, port))


async def _open(run: LoadRun, port: Address) -> None:
    loop = asyncio.get_running_loop()
    try:
        if isinstance(port, str):
            await loop.create_unix_connection(lambda: Connection(run, port), port)
        else:
            await loop.create_connection(lambda: Connection(run, port), "127.0.0.1", port)
    except OSError:
        run.open_conns -= 1
        run.dropped += 1
        if run.open_conns == 0 and not run.finished.done():
            run.finished.set_result(None)


async def drive(target: Target, concurrency: int, warmup: float, seconds: float,
                at_window: Callable[[str], None]) -> LoadRun:
    """``concurrency`` connections in a closed loop; ``at_window('start'|'end')`` is called
    at the edges of the counted window (to snapshot CPU times)."""
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    run = LoadRun(target, concurrency, (t + warmup, t + warmup + seconds), t + warmup + seconds)
    run.finished = loop.create_future()
    loop.call_later(warmup, at_window, "start")
    loop.call_later(warmup + seconds, at_window, "end")
    await asyncio.gather(*(open_connection(run, target.ports[i % len(target.ports)])
                           for i in range(concurrency)))
    try:
        await asyncio.wait_for(asyncio.shield(run.finished), warmup + seconds + 60)
    except asyncio.TimeoutError:
        pass  # answers still missing after a minute: they count as dropped below
    return run


# -- CPU by process -----------------------------------------------------------------------
def cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, procs in groups.items():
        total = 0.0
        for p in procs:
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        out[label] = total
    t = psutil.cpu_times()
    out["machine (all processes)"] = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return out


def platform_roles(platform: Platform) -> dict[str, list[psutil.Process]]:
    """The platform's processes by role: hub, proxy, models service, replicas, the rest."""
    roles: dict[str, list[psutil.Process]] = defaultdict(list)
    tree = process_tree(platform)
    for i, p in enumerate(tree):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if i == 0:
            roles["hub"].append(p)
        elif "configurable-http-proxy" in cmd:
            roles["proxy (CHP, node)"].append(p)
        elif "aidc-edge-" in cmd:
            roles["public edge (nginx)"].append(p)
        elif "aidc.models.service" in cmd:
            roles["models service"].append(p)
        elif "aidc.models.router" in cmd:
            roles["inference router"].append(p)
        elif "aidc-grpc-front-" in cmd:
            roles["gRPC front (nginx)"].append(p)
        elif "aidc.models.server" in cmd:
            roles["replica(s)"].append(p)
        else:
            roles["other platform"].append(p)
    return dict(roles)


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (a replica's only address)."""

    def __init__(self, path: str, timeout: float = 5):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def replica_get(socket_path: str, path: str) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(socket_path)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def replica_counters(sockets: list[str]) -> dict[str, float]:
    """The replicas' own batching counters (``GET /v2/models/NAME/stats``), summed."""
    total: Counter = Counter()
    for path in sockets:
        m = json.loads(replica_get(path, f"/v2/models/{MODEL}/stats")[1])
        m = m["model_stats"][0]
        total["rows"] += m["inference_count"]
        total["batches"] += m["execution_count"]
        total["compute_s"] += m["aidc"]["compute_seconds"]["sum"]
        total["queue_s"] += m["aidc"]["queue_delay_seconds"]["sum"]
    return dict(total)


def batching_in_window(c: dict[str, dict[str, float]], wall: float) -> dict[str, float]:
    """Rows per model run, model time per run, queue delay per request, model busy share."""
    d = {k: c["end"][k] - c["start"][k] for k in c["start"]}
    if not d["batches"]:
        return {}
    return {"rows_per_batch": d["rows"] / d["batches"],
            "compute_ms_per_batch": d["compute_s"] / d["batches"] * 1000,
            "queue_ms_per_request": d["queue_s"] / max(d["rows"], 1) * 1000,
            "model_busy": d["compute_s"] / wall}


# -- one measured run ----------------------------------------------------------------------
@dataclass
class Result:
    label: str
    concurrency: int
    n: int
    rps: float
    p50: float
    p90: float
    p99: float
    max: float
    errors: int
    cpu: dict[str, float]  # cores, by role, over the counted window
    note: str = ""
    batching: dict[str, float] = field(default_factory=dict)  # replicas, over the window


def verify(run: LoadRun, expected: np.ndarray) -> tuple[int, list[str]]:
    """Errors among the counted answers (status, output vs the raw model) and examples."""
    errors, examples = run.dropped, []
    if run.dropped:
        examples.append(f"{run.dropped} requests got no answer (dropped connection)")
    for sample, head, body in run.answers:
        status = int(head[9:12])
        problem = None
        if status != 200:
            problem = f"HTTP {status}: {body[:200]!r}"
        else:
            try:
                got = run.target.parse(head, body)
                if got.shape != expected[sample].shape or not np.allclose(got, expected[sample],
                                                                          atol=TOLERANCE, rtol=0):
                    problem = f"wrong output for sample {sample}: {got[:3]} vs {expected[sample][:3]}"
            except Exception as e:  # noqa: BLE001 - an unreadable answer is an error
                problem = f"unreadable answer ({type(e).__name__}: {e}): {body[:200]!r}"
        if problem:
            errors += 1
            if len(examples) < 3:
                examples.append(problem)
    return errors, examples


def measure_grpc(label: str, port: int, token: str, input_name: str, samples: np.ndarray,
                 procs: Callable[[], dict[str, list[psutil.Process]]], concurrency: int,
                 args: argparse.Namespace, expected: np.ndarray) -> Result:
    """One closed-loop run of v2 ``ModelInfer`` over gRPC (the router's own port):
    ``concurrency`` calls in flight over up to 4 HTTP/2 channels (so that every router
    process gets some), raw input bytes as ``tritonclient.grpc`` sends them."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    requests = []
    for x in samples:
        r = pb.ModelInferRequest(model_name=MODEL)
        r.inputs.add(name=input_name, datatype="FP32", shape=[1, *x.shape])
        r.raw_input_contents.append(x[None].tobytes())
        requests.append(r)
    metadata = (("authorization", f"Bearer {token}"),)
    me = psutil.Process()
    groups = {**procs(), "load generator (this process)": [me]}
    snaps: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    latencies: list[float] = []
    answers: list[tuple[int, object]] = []
    failures: list[str] = []

    def at_window(edge: str) -> None:
        snaps[edge] = cpu_seconds(groups)
        walls[edge] = time.perf_counter()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(min(concurrency, 4))]
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
        t = time.perf_counter()
        window = (t + args.warmup, t + args.warmup + args.seconds)
        loop.call_later(args.warmup, at_window, "start")
        loop.call_later(args.warmup + args.seconds, at_window, "end")
        turn = itertools.count()

        async def caller(stub) -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= window[1]:
                    return
                i = next(turn) % SAMPLES
                try:
                    answer = await stub.ModelInfer(requests[i], metadata=metadata)
                except grpc.RpcError as e:
                    failures.append(f"{e.code()}: {e.details()}")
                    continue
                t1 = time.perf_counter()
                if window[0] <= t0 and t1 <= window[1]:
                    latencies.append(t1 - t0)
                    answers.append((i, answer))

        await asyncio.gather(*(caller(stubs[k % len(stubs)]) for k in range(concurrency)))
        for c in channels:
            await c.close()

    asyncio.run(go())
    errors = len(failures)
    for i, answer in answers:
        got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
        if got.shape != expected[i].shape or not np.allclose(got, expected[i], atol=TOLERANCE, rtol=0):
            errors += 1
            failures.append(f"wrong output for sample {i}")
    if errors:
        raise CheckFailed(f"{label} c={concurrency}: {errors} errors: " + "; ".join(failures[:3]))
    wall = walls["end"] - walls["start"]
    cpu = {k: (snaps["end"][k] - snaps["start"][k]) / wall for k in snaps["start"]}
    lat = np.array(latencies) * 1000
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    res = Result(label, concurrency, len(lat), len(lat) / args.seconds, p50, p90, p99, lat.max(),
                 errors, cpu)
    log(f"  {res.label:<34} c={concurrency:<3} {res.rps:8.0f} req/s  p50 {p50:7.2f} ms  "
        f"p99 {p99:7.2f} ms  ({res.n} answers checked)")
    return res


def wrk_run(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float,
            folder: Path) -> dict:
    """The same closed loop with Debian's ``wrk`` (C, one thread): a second load generator
    whose own cost cannot flatter or hide a result. Requests/s, p50 and p99 (ms), and the
    answers that were not 2xx (which fail the check)."""
    (folder / "wrk-body").write_bytes(body)
    lua = folder / "wrk.lua"
    lua.write_text('wrk.method = "POST"\n' + "".join(
        f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        + f'local f = io.open("{folder / "wrk-body"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency",
                          "-s", str(lua), url], capture_output=True, text=True, timeout=seconds + 60)

    def ms(text: str) -> float:
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if text.endswith(unit):
                return float(text[:-len(unit)]) * scale
        return float(text)

    fields = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.split()}
    non_2xx = next((int(line.split()[-1]) for line in out.stdout.splitlines() if "Non-2xx" in line), 0)
    return {"rps": float(fields["Requests/sec:"][1]), "p50": ms(fields["50%"][1]),
            "p99": ms(fields["99%"][1]), "non_2xx": non_2xx}


def h2load_grpc(port: int, token: str, message: bytes, expected_answer: int, concurrency: int,
                seconds: float, folder: Path) -> dict:
    """gRPC ``ModelInfer`` in a closed loop with nghttp2's ``h2load`` (C, one thread; Debian's
    ``nghttp2-client``), the gRPC counterpart of :func:`wrk_run`: ``concurrency`` streams over
    up to 4 HTTP/2 connections, one serialized request (``message``) framed as gRPC sends it.
    h2load checks HTTP statuses only and a gRPC error is a 200 with no message, so every
    answer must also have carried ``expected_answer`` bytes of data (one framed response):
    ``short`` counts those that did not (which fail the check). No ``--warm-up-time``: h2load
    counts the warm-up's bytes in its traffic but not its requests (the runs before warm the
    path up)."""
    body = folder / "grpc-body"
    body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    connections = min(concurrency, 4)
    out = subprocess.run(
        ["h2load", "-t1", f"-c{connections}", f"-m{-(-concurrency // connections)}",
         "-D", f"{seconds:g}", f"--data={body}",
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "-H", f"authorization: Bearer {token}",
         f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"],
        capture_output=True, text=True, timeout=seconds + 60).stdout
    done = int(re.search(r"(\d+) succeeded", out).group(1))
    data = int(re.search(r"traffic: .*?\((\d+)\) data", out).group(1))
    return {"rps": float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1)),
            "short": done - data // expected_answer if data % expected_answer == 0 else done}


def grpc_message(b: "Bench") -> tuple[bytes, int]:
    """One ``ModelInferRequest`` (sample 0, raw input bytes) serialized, and the size of its
    framed answer, which is checked against the raw model's output here."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    r = pb.ModelInferRequest(model_name=MODEL)
    r.inputs.add(name=b.side.input_name, datatype="FP32", shape=[1, *b.samples[0].shape])
    r.raw_input_contents.append(b.samples[:1].tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{b.side.platform.grpc_port}") as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            r, metadata=(("authorization", f"Bearer {b.side.token}"),), timeout=60)
    got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
    if not np.allclose(got, b.expected[0].ravel(), atol=TOLERANCE, rtol=0):
        raise CheckFailed("h2load's gRPC request: the answer is not the model's output")
    return r.SerializeToString(), 5 + answer.ByteSize()


def measure_wrk(b: "Bench", mlflow_port: int) -> list[str]:
    """Goals (i) and (iii) again, with ``wrk`` on both sides, alternating (``--wrk``)."""
    x = b.samples[:1]
    hub_body, hub_headers = v2_json_body(x, b.side.input_name)
    hub_headers = {**hub_headers, "Authorization": f"token {b.side.token}"}
    ml_body, ml_headers = mlflow_body(x)
    sides = {"aidc hub, v2 JSON": (f"{b.side.platform.url}/services/models/v2/models/{MODEL}/infer",
                                   hub_body, hub_headers),
             "mlflow": (f"http://127.0.0.1:{mlflow_port}/invocations", ml_body, ml_headers)}
    got: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for rnd in range(b.args.rounds):
        for conc in (1, 32):
            order = list(sides) if (rnd + conc) % 2 else list(sides)[::-1]
            for name in order:
                url, body, headers = sides[name]
                r = wrk_run(url, body, {k: v for k, v in headers.items() if k != "Content-Length"},
                            conc, b.args.seconds, b.root)
                if r["non_2xx"]:
                    raise CheckFailed(f"wrk {name} c={conc}: {r['non_2xx']} answers were not 2xx")
                got[(name, conc)].append(r)
                log(f"  wrk {name:<30} c={conc:<3} {r['rps']:8.0f} req/s  p50 {r['p50']:7.2f} ms  "
                    f"p99 {r['p99']:7.2f} ms")

    # goal (iv) with C load generators on both sides: h2load (gRPC) and wrk (REST binary)
    message, answer_size = grpc_message(b)
    binary_body, binary_headers = v2_binary_body(b.samples[:1], b.side.input_name, b.side.output_name)
    binary_headers = {**binary_headers, "Authorization": f"token {b.side.token}"}
    for rnd in range(b.args.rounds):
        for name in (("grpc", "rest") if rnd % 2 == 0 else ("rest", "grpc")):
            if name == "grpc":
                r = h2load_grpc(b.side.platform.grpc_port, b.side.token, message, answer_size, 32,
                                b.args.seconds, b.root)
                if r["short"]:
                    raise CheckFailed(f"h2load gRPC: {r['short']} answers were not a model output")
                label = "h2load aidc gRPC (router port)"
            else:
                r = wrk_run(sides["aidc hub, v2 JSON"][0], binary_body, binary_headers, 32,
                            b.args.seconds, b.root)
                if r["non_2xx"]:
                    raise CheckFailed(f"wrk REST binary: {r['non_2xx']} answers were not 2xx")
                label = "wrk aidc hub, v2 binary"
            got[(name, 32)].append(r)
            log(f"  {label:<34} c=32  {r['rps']:8.0f} req/s")

    def m(name: str, conc: int, key: str) -> float:
        return statistics.median(r[key] for r in got[(name, conc)])
    hub, ml = "aidc hub, v2 JSON", "mlflow"
    grpc_ratio = m("grpc", 32, "rps") / m("rest", 32, "rps")
    grpc_line = (f"goal (iv) with h2load (gRPC) and wrk (REST binary), medians of {b.args.rounds} "
                 f"rounds: {m('grpc', 32, 'rps'):.0f} vs {m('rest', 32, 'rps'):.0f} req/s = "
                 f"{grpc_ratio:.2f}x: {'PASS' if grpc_ratio >= GOAL_GRPC else 'FAIL'}; REST binary "
                 f"{m('rest', 32, 'rps') / b.raw['batched_sps']:.3f}x raw batched")
    return [f"with wrk (medians of {b.args.rounds} rounds): c=32 {m(hub, 32, 'rps'):.0f} vs "
            f"{m(ml, 32, 'rps'):.0f} req/s = {m(hub, 32, 'rps') / m(ml, 32, 'rps'):.2f}x MLflow, p99 "
            f"{m(hub, 32, 'p99'):.1f} vs {m(ml, 32, 'p99'):.1f} ms; {m(hub, 32, 'rps') / b.raw['batched_sps']:.3f}x "
            f"raw batched; c=1 p50 {m(hub, 1, 'p50'):.2f} ms (+{m(hub, 1, 'p50') - b.raw['single_ms']:.2f} ms "
            f"over raw)", grpc_line]


def measure(target: Target, concurrency: int, args: argparse.Namespace,
            expected: np.ndarray, note: str = "") -> Result:
    """One run of ``target`` at ``concurrency``: throughput, latency, CPU by process."""
    me = psutil.Process()
    snaps: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}

    def groups() -> dict[str, list[psutil.Process]]:
        return {**target.procs(), "load generator (this process)": [me]}

    procs = groups()
    counters: dict[str, dict[str, float]] = {}

    def at_window(edge: str) -> None:
        snaps[edge] = cpu_seconds(procs)
        walls[edge] = time.perf_counter()
        if target.stats is not None:  # a few ms on the load generator's loop, at the edges only
            counters[edge] = target.stats()

    run = asyncio.run(drive(target, concurrency, args.warmup, args.seconds, at_window))
    errors, examples = verify(run, expected)
    if errors:
        raise CheckFailed(f"{target.label} c={concurrency}: {errors} errors of {len(run.answers)}: "
                          + "; ".join(examples))
    wall = walls["end"] - walls["start"]
    cpu = {k: (snaps["end"][k] - snaps["start"][k]) / wall for k in snaps["start"]}
    batching = batching_in_window(counters, wall) if len(counters) == 2 else {}
    lat = np.array(run.latencies) * 1000
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    res = Result(target.label, concurrency, len(lat), len(lat) / args.seconds, p50, p90, p99,
                 lat.max(), errors, cpu, note, batching)
    log(f"  {res.label:<34} c={concurrency:<3} {res.rps:8.0f} req/s  p50 {p50:7.2f} ms  "
        f"p99 {p99:7.2f} ms  ({res.n} answers checked, {run.reconnects} reconnects)")
    return res


# -- MLflow --------------------------------------------------------------------------------
MLFLOW_SAVE = '''\
import sys
import numpy as np
import torch
import mlflow
import mlflow.pytorch
from mlflow.models import infer_signature

folder, weights, target = sys.argv[1:4]
sys.path.insert(0, folder)
from cnn import CNN

model = CNN()
model.load_state_dict(torch.load(weights))
model.eval()
x = np.zeros((1, 1, 28, 28), dtype=np.float32)
with torch.no_grad():
    y = model(torch.from_numpy(x)).numpy()
mlflow.pytorch.save_model(model, target, signature=infer_signature(x, y), input_example=x,
                          code_paths=[folder + "/cnn.py"])
print(mlflow.__version__)
'''


def mlflow_venv() -> Path:
    """The MLflow venv's python, made on first use (the project's own venv never gets MLflow)."""
    python = MLFLOW_VENV / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    if not python.exists():
        log(f"making {MLFLOW_VENV} (python3.11 -m venv; mlflow=={MLFLOW_VERSION}, torch==2.13.0, "
            "numpy): a few minutes, once")
        subprocess.run(["python3.11", "-m", "venv", str(MLFLOW_VENV)], check=True)
    have = subprocess.run([str(python), "-c", "import mlflow; print(mlflow.__version__)"],
                          capture_output=True, text=True)
    if have.stdout.strip() != MLFLOW_VERSION:
        subprocess.run([*pip, f"mlflow=={MLFLOW_VERSION}", "torch==2.13.0", "numpy"], check=True)
    return python


def private_tmp(folder: Path) -> dict[str, str]:
    """``TMPDIR`` in the benchmark's own folder, for MLflow's processes: its ``pt2`` format
    goes through ``torch.export``, whose compile cache is ``$TMPDIR/torchinductor_<user>``,
    and a ``/tmp/torchinductor_root`` that another account made first would hand root its
    code (aidc's own processes get a private TMPDIR the same way, ``accounts.private_tmp``)."""
    tmp = folder / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    return {"TMPDIR": str(tmp)}


def save_mlflow_model(python: Path, model: CNN, folder: Path) -> tuple[Path, str]:
    """The same weights saved with ``mlflow.pytorch.save_model`` in the MLflow venv."""
    (folder / "cnn.py").write_text("import torch\n\n\n" + inspect.getsource(CNN))
    torch.save(model.state_dict(), folder / "cnn-weights.pt")
    target = folder / "mlflow-model"
    proc = subprocess.run([str(python), "-c", MLFLOW_SAVE, str(folder), str(folder / "cnn-weights.pt"),
                           str(target)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **private_tmp(folder)})
    if proc.returncode != 0:
        raise RuntimeError(f"mlflow.pytorch.save_model failed:\n{proc.stderr[-3000:]}")
    return target, proc.stdout.strip().splitlines()[-1]


class ServerGroup:
    """A server we start in a new session (its own process group), ended as a whole."""

    role = "server"

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, **(env or {})})

    def wait_ready(self, url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.role} did not answer in {timeout} s")

    def processes(self) -> dict[str, list[psutil.Process]]:
        try:
            parent = psutil.Process(self.proc.pid)
            return {self.role: [parent, *parent.children(recursive=True)]}
        except psutil.NoSuchProcess:
            return {self.role: []}

    def stop(self) -> list[str]:
        """SIGTERM to its process group (ours: started in a new session), then SIGKILL."""
        procs = self.processes()[self.role]
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return []
        _, alive = psutil.wait_procs(procs, timeout=20)
        problems = []
        if alive:
            problems.append(f"{self.role}: {len(alive)} processes did not stop on SIGTERM; killed")
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        return problems


class MLflowServer(ServerGroup):
    """``mlflow models serve`` with one uvicorn worker."""

    role = "mlflow server"

    def __init__(self, python: Path, model_dir: Path, log_path: Path):
        self.port = free_port()
        venv_bin = python.parent
        super().__init__(
            [str(venv_bin / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager",
             "local", "-h", "127.0.0.1", "-p", str(self.port), "-w", "1"],
            log_path, env={"PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",  # it execs uvicorn
                           **private_tmp(model_dir.parent)})


class LoneProxy(ServerGroup):
    """configurable-http-proxy alone (the hub's own binary and flags) in front of a replica:
    the proxy's share of the hub path, without the models service."""

    role = "proxy (CHP, node)"

    def __init__(self, replica_socket: str, log_path: Path):
        from aidc.paths import find_proxy_command

        self.port = free_port()
        super().__init__(
            [find_proxy_command(), "--ip", "127.0.0.1", "--port", str(self.port), "--api-ip",
             "127.0.0.1", "--api-port", str(free_port()), "--default-target",
             f"http+unix://{quote(replica_socket, safe='')}", "--log-level", "info"],
            log_path, env={"CONFIGPROXY_AUTH_TOKEN": os.urandom(16).hex()})


# -- aidc ----------------------------------------------------------------------------------
class AidcSide:
    """The platform, the registered and deployed model, and its endpoints."""

    def __init__(self, root: Path):
        self.platform = Platform(root / "platform", prefix=new_prefix())
        self.client: Client | None = None
        self.token = ""
        self.signature: dict = {}
        #: each deploy's cold start as the deployment's status reports it (replicas, seconds)
        self.cold_starts: list[tuple[int, float, list[float]]] = []

    def start(self, model: CNN, example: np.ndarray) -> None:
        p = self.platform
        t = time.monotonic()
        p.start(timeout=240)
        user = p.new_user("scientist")
        self.token = user.token
        self.client = Client(p.url, user.token, timeout=600)
        wait_for_service(self.client, "services/models/api/models", "models", p)
        v = aidc.models.register(model, name=MODEL, example=example, client=self.client)
        self.signature = v.signature
        log(f"platform up in {time.monotonic() - t:.1f} s ({p.url}); registered {MODEL} "
            f"v{v.version} ({v.format})")

    def deploy(self, replicas: int) -> dict:
        dep = aidc.models.deploy(MODEL, version=1, replicas=replicas, client=self.client)
        if not dep.get("ready"):
            raise RuntimeError(f"deployment not ready: {dep}")
        deadline = time.monotonic() + 120
        while True:  # every replica ready, and the replaced version's replicas gone
            status = self.client.get_json(f"services/models/api/models/{MODEL}/deployment")
            reps = status["versions"][0]["replicas"]
            if (len(reps) == replicas and all(r["ready"] for r in reps)
                    and len(platform_roles(self.platform).get("replica(s)", [])) == replicas):
                self.cold_starts.append((replicas, status["versions"][0].get("ready_seconds"),
                                         [r.get("ready_seconds") for r in reps]))
                return status
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replicas} replicas not ready in 120 s: {status}")
            time.sleep(0.3)

    @property
    def input_name(self) -> str:
        return self.signature["inputs"][0]["name"]

    @property
    def output_name(self) -> str:
        return self.signature["outputs"][0]["name"]

    def processes(self) -> dict[str, list[psutil.Process]]:
        return platform_roles(self.platform)

    def targets(self, status: dict, samples: np.ndarray, suffix: str = "") -> dict[str, Target]:
        sockets = [r["socket"] for r in status["versions"][0]["replicas"]]
        hub, inp, outp = [self.platform.port], self.input_name, self.output_name
        pub = f"/services/models/v2/models/{MODEL}/infer"
        own = f"/v2/models/{MODEL}/infer"

        def make(label: str, target_ports: list[Address], path: str, build, parse,
                 auth: str | None = None) -> Target:
            return make_target(label, target_ports, path, build, parse, samples, self.processes,
                               auth=auth, stats=lambda: replica_counters(sockets))

        json_in = lambda x: v2_json_body(x, inp)  # noqa: E731
        binary_in = lambda x: v2_binary_body(x, inp, outp)  # noqa: E731
        return {
            "hub json": make(f"aidc hub, v2 JSON{suffix}", hub, pub, json_in, parse_v2_json,
                             auth=self.token),
            "hub binary": make(f"aidc hub, v2 binary{suffix}", hub, pub, binary_in, parse_v2_binary,
                               auth=self.token),
            "direct json": make(f"replica direct, v2 JSON{suffix}", sockets, own, json_in, parse_v2_json),
            "direct binary": make(f"replica direct, v2 binary{suffix}", sockets, own, binary_in,
                                  parse_v2_binary),
        }


# -- profile ---------------------------------------------------------------------------------
def py_spy(python: Path) -> Path:
    """py-spy in the MLflow venv (a profiler for this benchmark only)."""
    exe = python.parent / "py-spy"
    if not exe.exists():
        subprocess.run([str(python), "-m", "pip", "install", "-q", "py-spy"], check=True)
    return exe


def profile_run(exe: Path, target: Target, b: "Bench") -> list[str]:
    """One hub c=32 run while py-spy samples the models service and the replica."""
    roles = b.side.processes()
    pids = {"models service": roles["models service"][0].pid,
            "replica": roles["replica(s)"][0].pid}
    duration = int(b.args.warmup + b.args.seconds)
    spies = {name: subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--duration", str(duration), "--rate", "200",
         "--nonblocking", "--format", "raw", "--output", str(b.root / f"{name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()}
    res = b.one("profiled hub json", target, 32, note="under py-spy")
    for spy in spies.values():
        spy.wait(timeout=60)
    out = [f"profile (py-spy, 200 Hz, --nonblocking) during {res.label} c=32: "
           f"{res.rps:.0f} req/s under the profiler"]
    for name in spies:
        out += summarize_profile(b.root / f"{name}.txt", name)
    return out


#: event-loop, thread and start-up frames: in nearly every sample, they say nothing
INFRA = ("<module>", "_run_code", "_run_module_as_main", "main", "run", "Runner.run",
         "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever", "BaseEventLoop._run_once",
         "Handle._run", "Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "run_service",
         "serve", "Context.run")


def summarize_profile(path: Path, name: str, top: int = 14) -> list[str]:
    """A py-spy raw (collapsed stacks) file: busiest functions (self and inclusive %) and
    the hottest call paths (last frames), with event-loop frames left out."""
    if not path.exists():
        return [f"  {name}: no profile written"]
    own: Counter = Counter()
    incl: Counter = Counter()
    paths: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [short_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f.split(" (")[0] not in INFRA]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        paths[" > ".join(frames[-4:])] += n
    if not total:
        return [f"  {name}: no samples"]
    pct = lambda n: f"{n / total * 100:5.1f}%"  # noqa: E731
    out = [f"  {name}: {total} samples; busiest functions, self:"]
    out += [f"    {pct(n)}  {f}" for f, n in own.most_common(top)]
    out.append(f"  {name}: inclusive (the function and what it calls):")
    out += [f"    {pct(n)}  {f}" for f, n in incl.most_common(top)]
    out.append(f"  {name}: hottest call paths (last 4 frames):")
    out += [f"    {pct(n)}  {p}" for p, n in paths.most_common(8)]
    return out


def short_frame(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``: one entry per function."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else func


# -- report -----------------------------------------------------------------------------------
def table(results: list[Result]) -> list[str]:
    head = "  {:<36} {:>3} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}"
    row = "  {:<36} {:>3} {:>7} {:>8.0f} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.1f} {:>6}"
    out = [head.format("target", "c", "n", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors")]
    out += [row.format(r.label + (f" ({r.note})" if r.note else ""), r.concurrency, r.n, r.rps,
                       r.p50, r.p90, r.p99, r.max, r.errors) for r in results]
    return out


def cpu_table(results: list[Result]) -> list[str]:
    roles = ["public edge (nginx)", "proxy (CHP, node)", "hub", "models service", "inference router",
             "gRPC front (nginx)",
             "replica(s)", "other platform", "mlflow server", "load generator (this process)",
             "machine (all processes)"]
    short = ["edge", "proxy", "hub", "service", "router", "gfront", "replicas", "other", "mlflow", "loadgen",
             "machine"]
    out = ["  {:<36} {:>3} ".format("target", "c") + " ".join(f"{s:>8}" for s in short)]
    for r in results:
        cells = [f"{r.cpu[k]:8.2f}" if k in r.cpu else f"{'-':>8}" for k in roles]
        out.append("  {:<36} {:>3} ".format(r.label, r.concurrency) + " ".join(cells))
    out.append("  (CPU in cores, over the counted window; 'machine' is every process on the "
               f"machine, of {os.cpu_count()} cores)")
    out.append("  CPU-ms per request (cores / req/s x 1000):")
    for r in results:
        if r.rps:
            out.append(f"    {r.label:<36} c={r.concurrency:<3} " + ", ".join(
                f"{s} {r.cpu[k] / r.rps * 1000:.2f}" for k, s in zip(roles, short)
                if r.cpu.get(k, 0) > 0.005))
    return out


def batching_table(results: list[Result]) -> list[str]:
    """What the replicas did with the requests of each aidc run (their own counters)."""
    out = ["  {:<36} {:>3} {:>9} {:>13} {:>13} {:>11}".format(
        "target", "c", "rows/run", "model ms/run", "queue ms/req", "model busy")]
    for r in results:
        b = r.batching
        if b:
            out.append("  {:<36} {:>3} {:>9.2f} {:>13.3f} {:>13.3f} {:>11.2f}".format(
                r.label, r.concurrency, b["rows_per_batch"], b["compute_ms_per_batch"],
                b["queue_ms_per_request"], b["model_busy"]))
    out.append("  (the replicas' own counters over the window. rows/run: the batch size reached; "
               "model ms/run: the model's time per run, concatenating and splitting included; "
               "queue ms/req: wait before its batch started; model busy: seconds of model runs "
               "per second, all replicas together)")
    return out


def med(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def goals(runs: dict[tuple[str, int], list[Result]], raw: dict, label: str = "hub json") -> list[str]:
    """The three goal lines for the aidc target ``label`` (medians over rounds)."""
    a32, m32, a1 = runs[(label, 32)], runs[("mlflow", 32)], runs[(label, 1)]
    ratio = med(a32, "rps") / med(m32, "rps")
    p99_a, p99_m = med(a32, "p99"), med(m32, "p99")
    ok1 = ratio >= GOAL_THROUGHPUT and p99_a <= p99_m
    frac = med(a32, "rps") / raw["batched_sps"]
    over = med(a1, "p50") - raw["single_ms"]
    ok3 = over <= GOAL_P50_OVER_RAW_MS
    n = len(a32)
    rounds = f" (medians of {n} rounds)" if n > 1 else ""
    out = [
        f"goal (i): aidc c=32 throughput >= {GOAL_THROUGHPUT:g}x MLflow c=32 at no worse p99{rounds}: "
        f"{ratio:.2f}x ({med(a32, 'rps'):.0f} vs {med(m32, 'rps'):.0f} req/s), p99 {p99_a:.1f} ms vs "
        f"{p99_m:.1f} ms: {'PASS' if ok1 else 'FAIL'}",
        f"goal (ii): aidc c=32 throughput on the way to {GOAL_RAW_FRACTION:g}x the raw batched "
        f"forward pass: {frac:.3f}x ({med(a32, 'rps'):.0f} vs {raw['batched_sps']:.0f} samples/s; "
        f"{frac / GOAL_RAW_FRACTION:.0%} of the way): {'PASS' if frac >= GOAL_RAW_FRACTION else 'not yet'}",
        f"goal (iii): aidc c=1 p50 <= raw single forward + {GOAL_P50_OVER_RAW_MS:g} ms: "
        f"{med(a1, 'p50'):.2f} ms vs {raw['single_ms']:.2f} ms (+{over:.2f} ms){rounds}: "
        f"{'PASS' if ok3 else 'FAIL'}",
    ]
    return out


def code_state() -> str:
    """The commit measured, and whether the serving code had uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "extensions/aidc/models",
                            "extensions/aidc/services"], capture_output=True, text=True)
    files = [line[3:] for line in dirty.stdout.splitlines()]
    return f"{head.stdout.strip() or '?'}" + (f" + uncommitted changes in {', '.join(files)}"
                                              if files else "")


# -- main -------------------------------------------------------------------------------------
Runs = dict[tuple[str, int], list[Result]]


@dataclass
class Bench:
    """Everything one benchmark run starts, measures and must stop."""

    args: argparse.Namespace
    root: Path
    side: AidcSide
    samples: np.ndarray = field(default_factory=lambda: np.random.default_rng(0).standard_normal(
        (SAMPLES, 1, 28, 28)).astype(np.float32))
    expected: np.ndarray | None = None
    servers: dict[str, ServerGroup] = field(default_factory=dict)  # ours to stop
    mlflow_version: str = MLFLOW_VERSION
    raw: dict = field(default_factory=dict)
    runs: Runs = field(default_factory=lambda: defaultdict(list))
    results: list[Result] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    wrk: list[str] = field(default_factory=list)

    def one(self, key: str, target: Target, conc: int, note: str = "") -> Result:
        res = measure(target, conc, self.args, self.expected, note)
        self.runs[(key, conc)].append(res)
        self.results.append(res)
        return res

    def stop_servers(self) -> list[str]:
        problems = []
        for name in list(self.servers):
            problems += self.servers.pop(name).stop()
        return problems


def start_sides(b: Bench, model: CNN) -> tuple[Path, dict]:
    """MLflow (venv, saved model, server) and the platform with the model deployed."""
    python = mlflow_venv()
    model_dir, b.mlflow_version = save_mlflow_model(python, model, b.root)
    mlflow = b.servers["mlflow"] = MLflowServer(python, model_dir, b.root / "mlflow-serve.log")
    b.side.start(model, b.samples[:1])
    mlflow.wait_ready(f"http://127.0.0.1:{mlflow.port}/ping")
    status = b.side.deploy(1)
    log(f"MLflow {b.mlflow_version} serving on port {mlflow.port}; aidc deployment ready, replica "
        f"socket(s) {[r['socket'] for r in status['versions'][0]['replicas']]}")
    return python, status


def measure_lone_proxy(b: Bench, status: dict) -> None:
    """CHP alone in front of the replica: splits the hub path's cost into proxy and service."""
    proxy = b.servers["proxy"] = LoneProxy(status["versions"][0]["replicas"][0]["socket"],
                                           b.root / "lone-proxy.log")
    proxy.wait_ready(f"http://127.0.0.1:{proxy.port}/v2/health/ready")
    direct = b.side.targets(status, b.samples)["direct json"]
    target = make_target("CHP alone -> replica, v2 JSON", [proxy.port], f"/v2/models/{MODEL}/infer",
                         lambda x: v2_json_body(x, b.side.input_name), parse_v2_json, b.samples,
                         lambda: {**b.side.processes(), **proxy.processes()}, stats=direct.stats)
    for conc in (1, 32):
        b.one("proxy json", target, conc)
    problems = b.servers.pop("proxy").stop()
    if problems:
        raise RuntimeError("; ".join(problems))


def run_all(b: Bench) -> None:
    """Start both sides, then every run in order (see the module docstring)."""
    model = CNN().eval()
    with torch.inference_mode():
        b.expected = model(torch.from_numpy(b.samples)).numpy()
    python, status = start_sides(b, model)
    log("raw forward pass (in this process)")
    b.raw = raw_forward(model, b.samples)
    mlflow = b.servers["mlflow"]
    mlflow_target = make_target("mlflow models serve (1 worker)", [mlflow.port], "/invocations",
                                mlflow_body, parse_mlflow, b.samples, mlflow.processes)
    aidc_targets = b.side.targets(status, b.samples)
    for rnd in range(b.args.rounds):
        log(f"round {rnd + 1}/{b.args.rounds}")
        for conc in (1, 32):
            sides = [("mlflow", mlflow_target), ("hub json", aidc_targets["hub json"])]
            for key, target in (sides if (rnd + conc) % 2 else sides[::-1]):
                b.one(key, target, conc)
    log("other aidc paths")
    for key in ("hub binary", "direct json", "direct binary"):
        for conc in (1, 32):
            b.one(key, aidc_targets[key], conc)
    for conc in (1, 32):  # gRPC, on the router's own port, and REST binary again beside it
        side = b.side
        res = measure_grpc("aidc gRPC (router port), raw tensors", side.platform.grpc_port,
                           side.token, side.input_name, b.samples, side.processes, conc,
                           b.args, b.expected)
        b.runs[("grpc", conc)].append(res)
        b.results.append(res)
        b.one("hub binary", aidc_targets["hub binary"], conc)
    if b.args.wrk:
        log("goals (i) and (iii) with wrk")
        b.wrk = measure_wrk(b, mlflow.port)
    measure_lone_proxy(b, status)
    if b.args.profile:
        b.profile = profile_run(py_spy(python), aidc_targets["hub json"], b)
    if b.args.two_replicas:
        two = b.side.targets(b.side.deploy(2), b.samples, suffix=", 2 replicas")
        log("2 replicas (1 compute thread each)")
        for key, conc in (("hub json", 1), ("hub json", 32), ("hub binary", 32), ("direct json", 32)):
            b.one(key + " x2", two[key], conc)


def report(b: Bench) -> list[str]:
    """The raw figures, the tables and the goal lines."""
    raw, runs = b.raw, b.runs
    out = [f"raw forward pass (torch {torch.__version__}, inference_mode, eager, median call): "
           f"one sample on 1 thread {raw['single_ms']:.3f} ms ({raw['single_sps']:.0f} samples/s)",
           "  batched: " + "; ".join(f"batch {n} on {t} thread(s) {sps:.0f} samples/s ({ms:.2f} ms)"
                                     for (n, t), (sps, ms) in raw["batched"].items())
           + f"; the limit: {raw['batched_best']}", ""]
    out += table(b.results) + ["", "CPU by process during each run:"] + cpu_table(b.results)
    out += ["", "batching in the replicas during each aidc run:"] + batching_table(b.results)
    out += [""] + goals(runs, raw)
    out += ["  " + line for line in b.wrk]
    if ("grpc", 32) in runs:
        ratio = med(runs[("grpc", 32)], "rps") / med(runs[("hub binary", 32)], "rps")
        out.append(f"goal (iv): gRPC c=32 throughput >= {GOAL_GRPC:g}x REST (hub, binary tensors) "
                   f"c=32: {ratio:.2f}x ({med(runs[('grpc', 32)], 'rps'):.0f} vs "
                   f"{med(runs[('hub binary', 32)], 'rps'):.0f} req/s; medians of the runs side by "
                   f"side): {'PASS' if ratio >= GOAL_GRPC else 'FAIL'}; gRPC c=1 p50 "
                   f"+{med(runs[('grpc', 1)], 'p50') - raw['single_ms']:.2f} ms over raw")
    for replicas, version_s, replica_s in b.side.cold_starts:
        out.append(f"  cold start of the deployment with {replicas} replica(s), as its status "
                   f"reports it (ready_seconds): {version_s} s from the start of serving (staging "
                   f"included); replicas from their process start: {replica_s} s (goal: under 2 s)")
    if ("hub binary", 32) in runs:
        ratio = med(runs[("hub binary", 32)], "rps") / med(runs[("mlflow", 32)], "rps")
        out.append(f"  (with the binary tensor extension: {ratio:.2f}x MLflow at c=32, "
                   f"{med(runs[('hub binary', 32)], 'rps') / raw['batched_sps']:.3f}x raw batched, "
                   f"c=1 p50 +{med(runs[('hub binary', 1)], 'p50') - raw['single_ms']:.2f} ms over raw)")
    if ("proxy json", 32) in runs:
        out.append("  where the c=1 p50 goes (JSON): " + " -> ".join(
            f"{name} {med(runs[(key, 1)], 'p50'):.2f} ms"
            for name, key in (("replica direct", "direct json"), ("+ CHP", "proxy json"),
                              ("edge (nginx) + inference router (the hub path)", "hub json")))
            + f"; raw forward {raw['single_ms']:.2f} ms")
        out.append("  c=32 throughput (JSON): " + ", ".join(
            f"{name} {med(runs[(key, 32)], 'rps'):.0f} req/s"
            for name, key in (("replica direct", "direct json"), ("CHP -> replica", "proxy json"),
                              ("hub path", "hub json"))))
    return out


# -- the replica alone, before and after a change ---------------------------------------------
class LoneReplica(ServerGroup):
    """``python -m aidc.models.server`` on a TCP port of its own, run from ``tree`` (a folder
    that holds ``aidc``), with the deployment's defaults (max batch 32, 2 ms, all cores)."""

    role = "replica(s)"

    def __init__(self, tree: Path, artifact: Path, signature: dict, log_path: Path,
                 threads: int = 0):
        self.port = free_port()
        self.t0 = time.monotonic()
        super().__init__(
            [sys.executable, "-m", "aidc.models.server", "--format", "torchscript", "--artifact",
             str(artifact), "--signature-json", json.dumps(signature), "--name", MODEL,
             "--version", "1", "--port", str(self.port),
             "--threads", str(threads or os.cpu_count() or 1)],
            log_path, env={"PYTHONPATH": str(tree)})

    def wait_ready_seconds(self) -> float:
        """Seconds from the process start until it answered ready (polled every 10 ms)."""
        deadline = time.monotonic() + 120
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - self.t0
            except requests.RequestException:
                pass
            time.sleep(0.01)
        raise RuntimeError("the replica was not ready in 120 s")

    def counters(self) -> dict[str, float]:
        total: Counter = Counter()
        m = requests.get(f"http://127.0.0.1:{self.port}/v2/models/{MODEL}/stats",
                         timeout=5).json()["model_stats"][0]
        total["rows"] += m["inference_count"]
        total["batches"] += m["execution_count"]
        total["compute_s"] += m["aidc"]["compute_seconds"]["sum"]
        total["queue_s"] += m["aidc"]["queue_delay_seconds"]["sum"]
        return dict(total)


def replica_only(args: argparse.Namespace) -> int:
    """``--replica-only``: the replica of ``--baseline`` (a git revision) and of this working
    tree, each alone on a TCP port, measured in alternating order in one run (no platform,
    no MLflow): c=1 and c=32, v2 JSON and binary; plus each one's cold start (process start
    to ready, three starts each, alternating). At c=32 a third side, this tree as 2
    replicas of 1 compute thread each (the load split over both), shows which of
    replicas x threads to choose on this machine."""
    from aidc.models import formats

    root = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    load0 = os.getloadavg()
    started = time.monotonic()
    samples = np.random.default_rng(0).standard_normal((SAMPLES, 1, 28, 28)).astype(np.float32)
    model = CNN().eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(samples)).numpy()
    fmt, filename, signature = formats.save(model, root / "model", example=samples[:1])
    sig = signature.to_dict()
    inp, outp = sig["inputs"][0]["name"], sig["outputs"][0]["name"]
    base = root / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "extensions/aidc"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
                          capture_output=True, text=True).stdout.strip()
    trees = {f"before ({head})": base / "extensions", "after (this tree)": ROOT / "extensions"}
    servers: dict[str, list[LoneReplica]] = {}
    cold: dict[str, list[float]] = defaultdict(list)
    results: list[Result] = []
    runs: Runs = defaultdict(list)
    failed = None
    try:
        for rnd in range(3):  # cold starts, alternating; the last ones stay up
            for side, tree in (trees.items() if rnd % 2 == 0 else list(trees.items())[::-1]):
                if side in servers:
                    servers.pop(side)[0].stop()
                s = LoneReplica(tree, root / "model" / filename, sig,
                                root / f"replica-{len(cold[side])}-{side[:5]}.log")
                servers[side] = [s]
                cold[side].append(s.wait_ready_seconds())
                log(f"  {side}: ready {cold[side][-1]:.2f} s after its start")
        two = "after, 2 replicas x 1 thread"
        servers[two] = [LoneReplica(trees["after (this tree)"], root / "model" / filename, sig,
                                    root / f"replica-two-{i}.log", threads=1) for i in range(2)]
        for s in servers[two]:
            s.wait_ready_seconds()
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}/{args.rounds}")
            for enc, build, parse in (("JSON", lambda x: v2_json_body(x, inp), parse_v2_json),
                                      ("binary", lambda x: v2_binary_body(x, inp, outp),
                                       parse_v2_binary)):
                for conc in (1, 32):
                    order = [(k, v) for k, v in servers.items() if conc > 1 or k != two]
                    for side, group in (order if (rnd + conc) % 2 else order[::-1]):
                        target = make_target(
                            f"replica {side}, v2 {enc}", [s.port for s in group],
                            f"/v2/models/{MODEL}/infer", build, parse, samples,
                            lambda group=group: {"replica(s)": [p for s in group for p in
                                                                s.processes()["replica(s)"]]},
                            stats=lambda group=group: dict(sum((Counter(s.counters())
                                                                for s in group), Counter())))
                        res = measure(target, conc, args, expected)
                        runs[(side, enc, conc)].append(res)
                        results.append(res)
    except CheckFailed as e:
        failed = str(e)
    finally:
        problems = []
        for group in servers.values():
            for s in group:
                problems += s.stop()
        shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()
    print()
    print("The replica alone (python -m aidc.models.server on a TCP port, the deployment's "
          "defaults), before and after, MNIST CNN, single-sample requests")
    print(f"machine: {os.cpu_count()} CPUs, CPython {py_platform.python_version()}; load average "
          f"at start {load0[0]:.2f}, at end {load1[0]:.2f}")
    print(f"code: before = {head}, after = {code_state()}")
    print(f"each run: {args.warmup:g} s warm-up, then {args.seconds:g} s counted; {args.rounds} "
          "rounds, alternating which side goes first; every counted answer checked")
    print()
    if failed:
        print(f"CHECK FAILED: {failed}")
    print("\n".join(table(results)))
    print("\nbatching in the replica during each run:")
    print("\n".join(batching_table(results)))
    print("\nmedians over rounds (after / before):")
    sides = list(trees)
    for enc in ("JSON", "binary"):
        for conc in (1, 32):
            b, a = runs.get((sides[0], enc, conc)), runs.get((sides[1], enc, conc))
            if not (a and b):
                continue
            cpu_b = statistics.median(r.cpu["replica(s)"] / r.rps * 1000 for r in b)
            cpu_a = statistics.median(r.cpu["replica(s)"] / r.rps * 1000 for r in a)
            print(f"  v2 {enc:<6} c={conc:<3} req/s {med(b, 'rps'):7.0f} -> {med(a, 'rps'):7.0f} "
                  f"({med(a, 'rps') / med(b, 'rps'):.2f}x); p50 {med(b, 'p50'):6.2f} -> "
                  f"{med(a, 'p50'):6.2f} ms; p99 {med(b, 'p99'):6.2f} -> {med(a, 'p99'):6.2f} ms; "
                  f"replica CPU-ms/request {cpu_b:.2f} -> {cpu_a:.2f}")
            if conc > 1 and runs.get((two, enc, conc)):
                t = runs[(two, enc, conc)]
                print(f"  {'':<13} {two}: {med(t, 'rps'):7.0f} req/s "
                      f"({med(t, 'rps') / med(a, 'rps'):.2f}x the 1 replica x "
                      f"{os.cpu_count()} threads), p50 {med(t, 'p50'):6.2f} ms, "
                      f"p99 {med(t, 'p99'):6.2f} ms")
    print("  cold start (process start -> ready, loaded and warm), median of 3: " + "; ".join(
        f"{side} {statistics.median(v):.2f} s ({', '.join(f'{x:.2f}' for x in v)})"
        for side, v in cold.items()))
    report_end(problems, "replicas stopped, temporary folder removed", time.monotonic() - started)
    return 1 if (failed or problems) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of MLflow and aidc (hub, JSON) at c=1 and c=32; goals use medians")
    ap.add_argument("--seconds", type=float, default=10.0, help="counted seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds before each run")
    ap.add_argument("--no-two-replicas", dest="two_replicas", action="store_false",
                    help="skip the runs with 2 replicas")
    ap.add_argument("--wrk", action="store_true",
                    help="goals (i) and (iii) again with Debian's wrk on both sides (rounds x 4 runs)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the models service and replica during one extra hub c=32 run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    ap.add_argument("--replica-only", action="store_true",
                    help="only the replica, of --baseline and of this tree, side by side (no "
                         "platform, no MLflow; needs no root)")
    ap.add_argument("--baseline", default="HEAD",
                    help="the git revision --replica-only compares this tree with")
    args = ap.parse_args(argv)
    if args.replica_only:
        return replica_only(args)
    root = begin(TMP_PREFIX, "the platform makes Unix accounts for its users", log)
    if root is None:
        return 2
    started = time.monotonic()
    load0 = os.getloadavg()
    code = code_state()
    bench = Bench(args, root, AidcSide(root))
    failed = None
    interrupted = False

    try:
        run_all(bench)
    except CheckFailed as e:
        failed = str(e)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        problems = bench.stop_servers()
        problems += clean_up(bench.side.platform)
        if args.keep:
            log(f"kept {root} (MLflow log: {root / 'mlflow-serve.log'}, platform output: "
                f"{bench.side.platform.log_path})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()

    print()
    print(f"Model serving: aidc endpoint (hub -> models service -> replica) vs raw forward pass vs "
          f"mlflow models serve {bench.mlflow_version} (1 worker), MNIST CNN, "
          "single-sample requests")
    print(f"machine: {os.cpu_count()} CPUs, CPython {py_platform.python_version()}, "
          f"{py_platform.platform()}; load average at start {load0[0]:.2f}, at end {load1[0]:.2f}")
    print(f"code: {code}")
    print(f"each run: {args.warmup:g} s warm-up, then {args.seconds:g} s counted; closed loop over "
          f"keep-alive connections; every counted answer checked (HTTP 200, output within "
          f"{TOLERANCE:g} of the raw model's)")
    print()
    if not failed and not interrupted:
        for line in report(bench):
            print(line)
    if failed or interrupted:
        print(f"CHECK FAILED: {failed}" if failed else "INTERRUPTED")
        if bench.results:
            print("results so far:")
            for line in table(bench.results):
                print(line)
    else:
        print("checks: OK: every counted answer was HTTP 200 with the raw model's output")
    for line in bench.profile:
        print(line)
    report_end(problems, "MLflow server and platform stopped, Unix accounts and processes gone"
               + (", temporary folder removed" if not args.keep else " (folder kept)"),
               time.monotonic() - started)
    if interrupted:
        return 130
    return 1 if (failed or problems) else 0


if __name__ == "__main__":
    sys.exit(main())
