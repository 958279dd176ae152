"""Model server: one version of one model over the Open Inference Protocol (KServe v2, REST).

Run as a process per replica::

    python -m aidc.models.server --format torchscript --artifact /path/model.pt \\
        --signature-json '{"inputs": [...], "outputs": [...]}' --name mnist --version 3 \\
        (--unix-socket /path/r0.sock | --port 8101 [--host 127.0.0.1]) \\
        [--max-batch-size 32] [--max-queue-delay-ms 2.0] [--threads N] [--prefix /url/prefix]

The server has no authentication of its own: whoever can connect may call it. The
models service therefore starts its replicas with ``--unix-socket`` only (mode 0600, in a
0700 folder of the model's owner), so that the only way in is the service's
authenticated ``/services/models/v2/...``; a TCP ``--port`` is for running the server by
hand (tests, ``bench``), where anyone on the host can reach it.

``--signature-json`` is the signature's JSON (:meth:`Signature.to_dict`), or ``@FILE``.
The process listens at once, loads the artifact with :func:`aidc.models.formats.load` in a
thread, warms the model up, and only then answers ready (``/v2/health/ready`` is 503 until
then, and again once a shutdown has begun; ``/v2/health/live`` is 200 all along).

Endpoints (KServe v2 / Triton HTTP; ``{name}`` and ``{v}`` must be this server's):

- ``GET /v2/health/live``, ``GET /v2/health/ready``: 200, or 503 while loading or stopping
- ``GET /v2``: server metadata (extensions: ``binary_tensor_data``)
- ``GET /v2/models/{name}[/versions/{v}]``: model metadata (inputs and outputs)
- ``GET /v2/models/{name}[/versions/{v}]/ready``
- ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON tensors and the binary tensor
  data extension (``Inference-Header-Content-Length``, ``binary_data_size``,
  ``binary_data``, ``binary_data_output``), as tritonclient.http sends and reads them
- ``GET /v2/models/{name}[/versions/{v}]/stats``, ``GET /v2/models/stats``: statistics
  shaped like Triton's, plus this server's HTTP metrics under ``"aidc"``
- ``GET /metrics``: the same in Prometheus text format

Errors are ``{"error": message}``: 400 for a malformed request or tensors that do not
match the signature (the message states the expected signature), 404 for another model
or version, 405 for a wrong method, 413 for a body over ``--max-body-size`` (refused from
its Content-Length, before the body is read), 503 before ready, 500 if the model fails.

Concurrent requests are batched (:mod:`aidc.models.batching`); the model runs in worker
threads, so the event loop keeps reading and answering requests meanwhile. SIGTERM (or
SIGINT) stops listening and readiness, lets the requests in progress finish (up to
``--shutdown-timeout``), then exits 0; during loading it exits 0 at once.

Run ``python -m aidc.models.server bench --url http://127.0.0.1:PORT --name NAME`` to
measure requests per second and latency with tritonclient.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import struct
import sys
import threading
import time
import traceback
import zlib
from functools import partial
from urllib.parse import quote, unquote

import numpy as np
from tornado import httputil, iostream
from tornado.netutil import bind_unix_socket

from aidc.errors import AidcError, UsageError
from aidc.models import metrics
from aidc.models.formats import model_formats
from aidc.models.batching import LATENCY_BUCKETS, Batcher, Histogram
from aidc.services.http import NoDelayHTTPServer

try:  # the fastest JSON at hand
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import rapidjson

        def _dumps(obj) -> bytes:
            return rapidjson.dumps(obj).encode()

        _loads = rapidjson.loads
    except ImportError:
        import json

        def _dumps(obj) -> bytes:
            return json.dumps(obj, separators=(",", ":")).encode()

        _loads = json.loads

log = logging.getLogger("aidc.models.server")

DEFAULT_MAX_BODY = 16 * 1024 * 1024
_JSON = "application/json"
_BINARY = "application/octet-stream"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_EMPTY = b""
_UNKNOWN = np.empty(0, dtype=np.float32)  # stands for an input the model does not have


class _HTTPError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- tensors ------------------------------------------------------------------------------
def _check_shape(name: str, shape) -> list[int]:
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _HTTPError(400, f"input {name!r}: 'shape' must be a list of non-negative integers, "
                              f"not {shape!r}")
    return shape


def _flatten(data, out: list) -> None:
    for x in data:
        if isinstance(x, list):
            _flatten(x, out)
        else:
            out.append(x)


def _bytes_from_json(name: str, data) -> list[bytes]:
    flat: list = []
    _flatten(data if isinstance(data, list) else [data], flat)
    out = []
    for x in flat:
        if isinstance(x, str):
            out.append(x.encode())
        elif isinstance(x, (bytes, bytearray)):
            out.append(bytes(x))
        else:
            raise _HTTPError(400, f"input {name!r}: BYTES data must be strings, "
                                  f"not {type(x).__name__}")
    return out


def _bytes_from_binary(name: str, buf, offset: int, size: int) -> list[bytes]:
    """Triton's BYTES serialization: each element is a 4-byte little-endian length, then bytes."""
    out = []
    end = offset + size
    mv = memoryview(buf)
    while offset < end:
        if offset + 4 > end:
            raise _HTTPError(400, f"input {name!r}: truncated BYTES element in the binary data")
        (n,) = struct.unpack_from("<I", buf, offset)
        offset += 4
        if offset + n > end:
            raise _HTTPError(400, f"input {name!r}: truncated BYTES element in the binary data")
        out.append(bytes(mv[offset:offset + n]))
        offset += n
    return out


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for x in array.ravel():
        b = x if isinstance(x, bytes) else str(x).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _bytes_to_json(array: np.ndarray) -> list:
    return [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)
            for x in array.ravel()]


# -- the server ---------------------------------------------------------------------------
class ModelServer:
    """State and endpoints of one served model version."""

    def __init__(self, *, name: str, version: str, format: str, signature, prefix: str = "",
                 max_body_size: int = DEFAULT_MAX_BODY, max_batch_size: int = 32,
                 max_queue_delay: float = 0.002, instances: int = 1, inline_max: float = 0.0):
        from aidc.models import signature as sigmod

        self.sigmod = sigmod
        self.name = name
        self.version = version
        self.format = format
        self.signature = signature
        self.prefix = prefix.rstrip("/")
        self.max_body_size = max_body_size
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.instances = instances
        self.inline_max = inline_max
        self.runner = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.state = "loading"
        self.draining = False
        self.inflight = 0
        self.reading = 0  # requests whose headers came and whose body is still coming
        self._idle: asyncio.Event | None = None
        self.started = time.time()
        # metrics (event loop thread only)
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.infer_success = [0, 0]  # count, ns
        self.infer_fail = [0, 0]
        self._set_signature(signature)
        self._datatypes = sigmod.DATATYPES
        qname = quote(name, safe="")
        base = f"/v2/models/{qname}"
        vbase = f"{base}/versions/{quote(version, safe='')}"
        self._routes = {
            "/v2/health/live": ("health_live", "GET", self._live),
            "/v2/health/ready": ("health_ready", "GET", self._ready),
            "/v2": ("server_metadata", "GET", self._server_metadata),
            "/metrics": ("metrics", "GET", self._metrics),
            "/v2/models/stats": ("model_stats", "GET", self._stats),
        }
        for b in (base, vbase):
            self._routes.update({
                b: ("model_metadata", "GET", self._model_metadata),
                f"{b}/ready": ("model_ready", "GET", self._model_ready),
                f"{b}/infer": ("infer", "POST", self._infer),
                f"{b}/stats": ("model_stats", "GET", self._stats),
            })

    def _set_signature(self, signature) -> None:
        self.signature = signature
        self._outputs = {spec.name: spec for spec in signature.outputs}
        self._input_names = frozenset(spec.name for spec in signature.inputs)
        self._metadata = _dumps({
            "name": self.name, "versions": [self.version],
            "platform": model_formats.platform(self.format),
            "inputs": [spec.to_dict() for spec in signature.inputs],
            "outputs": [spec.to_dict() for spec in signature.outputs],
        })
        self._expected = signature.expected_inputs()  # "expected inputs: input FP32 [-1,...]"
        self._expected_outputs = "the model's outputs: " + ", ".join(self._outputs)

    # -- lifecycle -------------------------------------------------------------------------
    def loaded(self, runner, single_row_seconds: float | None = None) -> None:
        """The model is loaded and warm: start serving inferences."""
        self.runner = runner
        self._set_signature(runner.signature)
        self.batcher = Batcher(runner.predict, max_batch_size=self.max_batch_size,
                               max_queue_delay=self.max_queue_delay, instances=self.instances,
                               batchable=self.signature.batchable,
                               thread_init=_size_framework_threads,
                               inline_max=self.inline_max, inline_estimate=single_row_seconds,
                               quiet=self._quiet)
        self.ready = True
        self.state = "ready"

    def begin_drain(self) -> None:
        self.ready = False
        self.draining = True
        self.state = "stopping"

    async def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.inflight > 0:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                return False
            finally:
                self._idle = None
        return True

    def _quiet(self) -> bool:
        return self.reading == 0

    def request_done(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    # -- routing ---------------------------------------------------------------------------
    def handle(self, req: "_Request") -> None:
        path = req.path
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        if self.prefix:
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                return req.error(404, f"not found: {path}", "unknown")
            path = path[len(self.prefix):]
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        route = self._routes.get(path)
        if route is None:
            route = self._model_route(req, path)
            if route is None:
                return
        endpoint, method, fn = route
        req.endpoint = endpoint
        if req.method != method:
            message = f"{req.method} is not allowed on {path}; use {method}"
            return req.send(405, _dumps({"error": message}), _JSON, {"Allow": method})
        try:
            fn(req)
        except _HTTPError as e:
            req.error(e.code, e.message)
        except Exception:
            log.error("error answering %s %s:\n%s", req.method, path, traceback.format_exc())
            req.error(500, "internal server error (see the model server's log)")

    def _model_route(self, req: "_Request", path: str):
        if not path.startswith("/v2/models/"):
            req.error(404, f"not found: {path}", "unknown")
            return None
        parts = path[len("/v2/models/"):].split("/")
        name = unquote(parts[0])
        if name != self.name:
            req.error(404, f"unknown model {name!r}: this server serves model {self.name!r} "
                           f"version {self.version}", "unknown")
            return None
        rest = parts[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            version = unquote(rest[1])
            if version != self.version:
                req.error(404, f"unknown version {version!r} of model {self.name!r}: this server "
                               f"serves version {self.version}", "unknown")
                return None
            rest = rest[2:]
        action = "/".join(rest)
        base = f"/v2/models/{quote(self.name, safe='')}"
        route = self._routes.get(f"{base}/{action}" if action else base)
        if route is None:
            req.error(404, f"not found: {path}", "unknown")
        return route

    # -- simple endpoints ------------------------------------------------------------------
    def _live(self, req: "_Request") -> None:
        req.send(200, _EMPTY, _JSON)

    def _not_ready(self, req: "_Request") -> None:
        why = "the model is still loading" if self.state == "loading" else "the server is stopping"
        req.error(503, f"not ready: {why}")

    def _ready(self, req: "_Request") -> None:
        if self.ready:
            req.send(200, _EMPTY, _JSON)
        else:
            self._not_ready(req)

    _model_ready = _ready

    def _server_metadata(self, req: "_Request") -> None:
        from aidc import __version__

        req.send(200, _dumps({"name": "aidc", "version": __version__,
                              "extensions": ["binary_tensor_data"]}), _JSON)

    def _model_metadata(self, req: "_Request") -> None:
        req.send(200, self._metadata, _JSON)

    # -- inference -------------------------------------------------------------------------
    def _bad(self, message: str) -> _HTTPError:
        return _HTTPError(400, f"{message}; {self._expected}")

    def _infer(self, req: "_Request") -> None:
        if not self.ready and not (self.draining and self.batcher is not None):
            return self._not_ready(req)
        body = req.body()
        encoding = req.headers.get("Content-Encoding")
        if encoding:
            body = self._decompress(body, encoding.strip().lower())
        hlen = req.headers.get("Inference-Header-Content-Length")
        if hlen is None:
            header = body
            size = len(body)  # no binary data
        else:
            try:
                size = int(hlen)
            except ValueError:
                raise _HTTPError(400, "Inference-Header-Content-Length is not a number: "
                                      f"{hlen!r}") from None
            if size < 0 or size > len(body):
                raise _HTTPError(400, f"Inference-Header-Content-Length {size} does not fit the "
                                      f"{len(body)}-byte body")
            header = body[:size]
        try:
            request = _loads(header)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise _HTTPError(400, f"the request is not valid JSON ({e}); send an inference request "
                                  'object: {"inputs": [{"name", "shape", "datatype", "data"}]}'
                             ) from None
        if not isinstance(request, dict):
            raise _HTTPError(400, "the request must be a JSON object with \"inputs\"")
        tensors = self._decode_inputs(request, body, size)
        try:
            self.signature.check_inputs(tensors)
        except AidcError as e:
            raise _HTTPError(400, str(e)) from None
        selected = self._select_outputs(request)
        self.batcher.submit(tensors, partial(self._infer_done, req, request.get("id"), selected))

    def _decompress(self, body, encoding: str):
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise _HTTPError(400, f"unsupported Content-Encoding {encoding!r} "
                                  "(use gzip or deflate)")
        d = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            out = d.decompress(body, self.max_body_size + 1)
        except zlib.error as e:
            raise _HTTPError(400, f"the body is not valid {encoding} data: {e}") from None
        if len(out) > self.max_body_size or d.unconsumed_tail:
            raise _HTTPError(413, "the decompressed request is larger than "
                                  f"{self.max_body_size} bytes")
        return bytearray(out)

    def _decode_inputs(self, request: dict, body, offset: int) -> dict[str, np.ndarray]:
        inputs = request.get("inputs")
        if not isinstance(inputs, list):
            raise self._bad("the request has no \"inputs\" list")
        binary_end = len(body)
        datatypes = self._datatypes
        tensors: dict[str, np.ndarray] = {}
        for t in inputs:
            if not isinstance(t, dict):
                raise self._bad("each input must be an object with name, shape, datatype and data")
            name = t.get("name")
            if not isinstance(name, str):
                raise self._bad("an input has no \"name\"")
            if name in tensors:
                raise self._bad(f"input {name!r} is given twice")
            datatype = t.get("datatype")
            dtype = datatypes.get(datatype) if isinstance(datatype, str) else None
            if dtype is None:
                raise self._bad(f"input {name!r}: unknown datatype {datatype!r} "
                                f"(one of {', '.join(datatypes)})")
            shape = _check_shape(name, t.get("shape"))
            count = math.prod(shape)
            params = t.get("parameters")
            nbytes = params.get("binary_data_size") if isinstance(params, dict) else None
            if name not in self._input_names:
                # not decoded: the signature check names it (and what is missing)
                tensors[name] = _UNKNOWN
                if isinstance(nbytes, int) and nbytes > 0:
                    offset += nbytes
                continue
            if nbytes is not None:
                if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
                    raise _HTTPError(400, f"input {name!r}: binary_data_size must be a "
                                          f"non-negative integer, not {nbytes!r}")
                if offset + nbytes > binary_end:
                    raise _HTTPError(400, f"input {name!r}: binary_data_size {nbytes} is more "
                                          f"than the {binary_end - offset} bytes of binary data "
                                          "left in the request")
                if datatype == "BYTES":
                    values = _bytes_from_binary(name, body, offset, nbytes)
                    array = self._object_array(name, values, shape, count)
                else:
                    itemsize = np.dtype(dtype).itemsize
                    if count * itemsize != nbytes:
                        raise self._bad(f"input {name!r}: shape {shape} of {datatype} is "
                                        f"{count * itemsize} bytes, but binary_data_size "
                                        f"is {nbytes}")
                    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
                    if offset % itemsize:  # unaligned: copy
                        array = array.copy()
                    array = array.reshape(shape)
                offset += nbytes
            else:
                if "data" not in t:
                    raise self._bad(f"input {name!r} has neither \"data\" nor binary_data_size")
                data = t["data"]
                if datatype == "BYTES":
                    array = self._object_array(name, _bytes_from_json(name, data), shape, count)
                else:
                    try:
                        array = np.asarray(data, dtype=dtype)
                    except (ValueError, TypeError, OverflowError):
                        raise self._bad(f"input {name!r}: \"data\" is not a (nested) list of "
                                        f"{datatype} values") from None
                    if array.size != count:
                        raise self._bad(f"input {name!r}: shape {shape} needs {count} values, "
                                        f"\"data\" has {array.size}")
                    array = array.reshape(shape)
            tensors[name] = array
        if offset != binary_end:
            raise _HTTPError(400, f"the request has {binary_end - offset} bytes of binary data "
                                  "that no input's binary_data_size accounts for")
        return tensors

    def _object_array(self, name, values, shape, count) -> np.ndarray:
        if len(values) != count:
            raise self._bad(f"input {name!r}: shape {shape} needs {count} values, "
                            f"got {len(values)}")
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)

    def _select_outputs(self, request: dict) -> list[tuple[str, bool]] | None:
        params = request.get("parameters")
        default = isinstance(params, dict) and bool(params.get("binary_data_output", False))
        wanted = request.get("outputs")
        if wanted is None:
            return [(name, default) for name in self._outputs] or None
        if not isinstance(wanted, list):
            raise self._bad("\"outputs\" must be a list of {\"name\": ...} objects")
        selected = []
        for o in wanted:
            name = o.get("name") if isinstance(o, dict) else None
            if name not in self._outputs:
                raise _HTTPError(400, f"unknown output {name!r} requested; "
                                      f"{self._expected_outputs}")
            p = o.get("parameters")
            binary = default
            if isinstance(p, dict):
                if p.get("classification"):
                    raise _HTTPError(400, "the classification extension is not supported; "
                                          "request the output tensor itself")
                binary = bool(p.get("binary_data", default))
            selected.append((name, binary))
        return selected

    def _infer_done(self, req: "_Request", request_id, selected, outputs) -> None:
        if req.finished:
            return
        if isinstance(outputs, BaseException):
            e = outputs
            if isinstance(e, AidcError):
                return req.error(400, str(e))
            log.error("the model failed on a request:\n%s",
                      "".join(traceback.format_exception(type(e), e, e.__traceback__)))
            first = (str(e).strip().splitlines() or [""])[0][:300]
            return req.error(500, f"the model failed: {type(e).__name__}: {first}")
        try:
            body, binary_len = self._encode_outputs(outputs, selected, request_id)
        except Exception:
            log.error("could not encode the model's outputs:\n%s", traceback.format_exc())
            return req.error(500, "could not encode the model's outputs "
                                  "(see the model server's log)")
        if binary_len is None:
            req.send(200, body, _JSON)
        else:
            req.send(200, body, _BINARY, {"Inference-Header-Content-Length": str(binary_len)})

    def _encode_outputs(self, outputs: dict, selected, request_id):
        if selected is None:  # the signature names no outputs: all the model gave
            selected = [(name, False) for name in outputs]
        datatypes = self._datatypes
        entries = []
        blobs = []
        for name, binary in selected:
            array = outputs[name]
            if not isinstance(array, np.ndarray):
                array = np.asarray(array)
            spec = self._outputs.get(name)
            if spec is not None:
                datatype = spec.datatype
                dtype = datatypes[datatype]
                if array.dtype != dtype and datatype != "BYTES":
                    array = array.astype(dtype)
            else:
                datatype = self.sigmod.datatype_of(array.dtype)
            entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
            if binary:
                raw = _serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = (_bytes_to_json(array) if datatype == "BYTES"
                                 else array.ravel().tolist())
            entries.append(entry)
        response = {"model_name": self.name, "model_version": self.version}
        if request_id is not None:
            response["id"] = request_id
        response["outputs"] = entries
        header = _dumps(response)
        if not blobs:
            return header, None
        return b"".join([header, *blobs]), len(header)

    # -- metrics ---------------------------------------------------------------------------
    def record(self, endpoint: str, code: int, seconds: float) -> None:
        key = (endpoint, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(endpoint)
        if hist is None:
            hist = self.latency[endpoint] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)
        if endpoint == "infer":
            acc = self.infer_success if code == 200 else self.infer_fail
            acc[0] += 1
            acc[1] += int(seconds * 1e9)

    def stats(self) -> dict:
        b = self.batcher.stats if self.batcher is not None else None
        zero = {"count": 0, "ns": 0}
        model = {
            "name": self.name,
            "version": self.version,
            "last_inference": b.last_inference if b else 0,
            "inference_count": b.inference_count if b else 0,
            "execution_count": b.execution_count if b else 0,
            "inference_stats": {
                "success": {"count": self.infer_success[0], "ns": self.infer_success[1]},
                "fail": {"count": self.infer_fail[0], "ns": self.infer_fail[1]},
                "queue": b.queue.to_dict() if b else zero,
                "compute_input": b.compute_input.to_dict() if b else zero,
                "compute_infer": b.compute_infer.to_dict() if b else zero,
                "compute_output": b.compute_output.to_dict() if b else zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": b.batch_stats() if b else [],
            "memory_usage": [],
            "aidc": {
                "state": self.state,
                "ready": self.ready,
                "uptime_seconds": time.time() - self.started,
                "inflight_requests": self.inflight,
                "queued_requests": self.batcher.queued if self.batcher else 0,
                "max_batch_size": self.max_batch_size,
                "batching": bool(self.batcher and self.batcher.enabled),
                "requests": [{"endpoint": e, "code": c, "count": n}
                             for (e, c), n in sorted(self.requests.items())],
                "errors": sum(n for (e, c), n in self.requests.items() if c >= 400),
                "request_duration_seconds": {e: h.to_dict()
                                             for e, h in sorted(self.latency.items())},
                "batch_size": b.batch_rows.to_dict() if b else None,
                "batch_requests": b.batch_requests.to_dict() if b else None,
                "queue_delay_seconds": b.queue_delay.to_dict() if b else None,
                "compute_seconds": b.compute_seconds.to_dict() if b else None,
            },
        }
        return {"model_stats": [model]}

    def _stats(self, req: "_Request") -> None:
        req.send(200, _dumps(self.stats()), _JSON)

    def _metrics(self, req: "_Request") -> None:
        req.send(200, self.prometheus(), metrics.CONTENT_TYPE)

    def prometheus(self) -> bytes:
        """This replica's metrics (:mod:`aidc.models.metrics`) in Prometheus text."""
        ml = [self.name, self.version]
        ready = metrics.MODEL_READY.family()
        ready.add_metric(ml, int(self.ready))
        requests = metrics.MODEL_REQUESTS.family()
        failed: dict[str, int] = {}
        for (endpoint, code), n in sorted(self.requests.items()):
            requests.add_metric([*ml, endpoint, str(code)], n)
            if code >= 400:
                failed[endpoint] = failed.get(endpoint, 0) + n
        errors = metrics.MODEL_REQUEST_ERRORS.family()
        for endpoint, n in sorted(failed.items()):
            errors.add_metric([*ml, endpoint], n)
        duration = metrics.MODEL_REQUEST_DURATION.family()
        for endpoint, h in sorted(self.latency.items()):
            metrics.add_histogram(duration, [*ml, endpoint], h)
        inflight = metrics.MODEL_INFLIGHT.family()
        inflight.add_metric(ml, self.inflight)
        queued = metrics.MODEL_QUEUED.family()
        queued.add_metric(ml, self.batcher.queued if self.batcher else 0)
        families = [ready, requests, errors, duration, inflight, queued]
        b = self.batcher.stats if self.batcher is not None else None
        if b is not None:
            for declared, hist in ((metrics.MODEL_BATCH_SIZE, b.batch_rows),
                                   (metrics.MODEL_BATCH_REQUESTS, b.batch_requests),
                                   (metrics.MODEL_QUEUE_DELAY, b.queue_delay),
                                   (metrics.MODEL_COMPUTE, b.compute_seconds)):
                family = declared.family()
                metrics.add_histogram(family, ml, hist)
                families.append(family)
            for declared, value in ((metrics.MODEL_ROWS, b.inference_count),
                                    (metrics.MODEL_EXECUTIONS, b.execution_count)):
                family = declared.family()
                family.add_metric(ml, value)
                families.append(family)
        return metrics.exposition(families)


# -- HTTP plumbing --------------------------------------------------------------------------
class _Request(httputil.HTTPMessageDelegate):
    """One request on a connection: collects the body, then hands it to the ModelServer."""

    __slots__ = ("server", "conn", "method", "path", "headers", "chunks", "size", "t0",
                 "endpoint", "finished", "reading")

    def __init__(self, server: ModelServer, conn: httputil.HTTPConnection):
        self.server = server
        self.conn = conn
        self.chunks: list[bytes] = []
        self.size = 0
        self.endpoint = "unknown"
        self.finished = False
        self.reading = False

    def headers_received(self, start_line, headers):
        self.t0 = time.perf_counter()
        self.method = start_line.method
        self.path = start_line.path
        self.headers = headers
        server = self.server
        server.inflight += 1
        server.reading += 1
        self.reading = True
        length = headers.get("Content-Length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return None  # tornado answers 400
            if declared > server.max_body_size:
                self._refuse_too_large(declared)
        return None

    def data_received(self, chunk):
        if self.finished:
            return None
        self.size += len(chunk)
        if self.size > self.server.max_body_size:
            # a chunked body (no Content-Length) grew too large: answer now; tornado
            # closes the connection once the answer is written
            self.chunks = []
            self.error(413, f"the request body is larger than {self.server.max_body_size} bytes")
        else:
            self.chunks.append(chunk)
        return None

    def finish(self):
        self._read()
        if self.finished:
            return
        self.server.handle(self)

    def _read(self) -> None:
        if self.reading:
            self.reading = False
            self.server.reading -= 1

    def on_connection_close(self):
        self._read()
        if not self.finished:
            self.finished = True
            self.server.record(self.endpoint, 499, time.perf_counter() - self.t0)
            self.server.request_done()

    def body(self) -> bytearray:
        chunks = self.chunks
        if not chunks:
            return bytearray()
        return bytearray(chunks[0]) if len(chunks) == 1 else bytearray().join(chunks)

    # -- answers ---------------------------------------------------------------------------
    def error(self, code: int, message: str, endpoint: str | None = None) -> None:
        if endpoint is not None:
            self.endpoint = endpoint
        self.send(code, _dumps({"error": message}), _JSON)

    def send(self, code: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        server = self.server
        headers = httputil.HTTPHeaders()
        headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(body))
        if extra:
            headers.update(extra)
        if server.draining:
            headers["Connection"] = "close"
        try:
            start = httputil.ResponseStartLine("HTTP/1.1", code, _REASONS.get(code, ""))
            self.conn.write_headers(start, headers, body)
            self.conn.finish()
        except iostream.StreamClosedError:
            pass
        server.record(self.endpoint, code, time.perf_counter() - self.t0)
        server.request_done()

    def _refuse_too_large(self, declared: int) -> None:
        """Answer 413 from the Content-Length alone and take the connection from tornado."""
        server = self.server
        self._read()
        self.finished = True
        self.endpoint = "infer" if self.path.endswith("/infer") else "unknown"
        stream = self.conn.detach()
        body = _dumps({"error": f"the request body ({declared} bytes) is larger than the limit of "
                                f"{server.max_body_size} bytes"})
        head = (f"HTTP/1.1 413 Payload Too Large\r\nContent-Type: {_JSON}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        server.record(self.endpoint, 413, time.perf_counter() - self.t0)
        server.request_done()
        task = asyncio.ensure_future(_answer_and_discard(stream, head + body, declared))
        _BACKGROUND.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task] = set()


async def _answer_and_discard(stream: iostream.IOStream, response: bytes, declared: int,
                              timeout: float = 10.0) -> None:
    """Write the response, then read and drop what the client still sends (without keeping
    it) so that it sees the response instead of a connection reset; then close."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        await stream.write(response)
        left = declared
        while left > 0:
            chunk = await asyncio.wait_for(stream.read_bytes(min(left, 1 << 20), partial=True),
                                           max(deadline - loop.time(), 0.001))
            left -= len(chunk)
    except (iostream.StreamClosedError, asyncio.TimeoutError, OSError):
        pass
    finally:
        stream.close()


class _Router(httputil.HTTPServerConnectionDelegate):
    def __init__(self, server: ModelServer):
        self.server = server

    def start_request(self, server_conn, request_conn):
        return _Request(self.server, request_conn)


# -- process --------------------------------------------------------------------------------
def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_THREADS = 1


def _limit_threads_env(threads: int) -> None:
    """Size the frameworks' thread pools before they are imported (unless already set)."""
    global _THREADS
    _THREADS = threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    # idle OpenMP threads sleep instead of spinning: spinning threads starve the event
    # loop (and everything else on the cores); on 2 busy cores it made requests 30x slower
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _size_framework_threads() -> None:
    """In each worker thread and after loading: the frameworks use ``--threads`` threads."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.get_num_threads() != _THREADS:
                torch.set_num_threads(_THREADS)
        except Exception:  # pragma: no cover
            pass


def _size_tensorflow_threads() -> None:
    """TensorFlow's pools can only be sized before its runtime starts: before loading."""
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(min(_THREADS, 2))
    except Exception:  # pragma: no cover - no TensorFlow, or already started
        pass


def _time_single_row(runner) -> float | None:
    """The model's time for one row (median of a few runs on zeros), or None."""
    try:
        inputs = runner.signature.zeros(1)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            runner.predict(inputs)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]
    except Exception:
        return None


def _parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aidc.models.server",
                                description="Serve one model version over the KServe v2 protocol.")
    p.add_argument("--format", required=True,
                   help="artifact format as aidc.models.formats names it (torchscript, keras, "
                        "onnx)")
    p.add_argument("--artifact", required=True, help="path of the saved model")
    p.add_argument("--signature-json", required=True,
                   help="the model's signature as JSON, or @FILE to read it from a file")
    p.add_argument("--name", required=True, help="model name in the URLs")
    p.add_argument("--version", required=True, help="model version in the URLs")
    p.add_argument("--port", type=int, default=None,
                   help="listen on this TCP port (unauthenticated: anyone on the host may "
                        "call it; for running the server by hand)")
    p.add_argument("--host", default="127.0.0.1", help="the address of --port")
    p.add_argument("--unix-socket", default=None,
                   help="listen on this Unix socket (mode 0600: only this account and root "
                        "may connect); the models service starts its replicas with this alone")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="most rows per model run; 0 or 1 turns dynamic batching off")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0,
                   help="longest a request waits for batch-mates while a free worker could "
                        "start it")
    p.add_argument("--threads", type=int, default=0,
                   help="compute threads (default: the CPU cores)")
    p.add_argument("--instances", type=int, default=1, help="batches run at the same time")
    p.add_argument("--inline-max-ms", type=float, default=1.0,
                   help="a lone one-row request runs on the event loop, skipping the hop to a "
                        "worker thread, when the model takes less than this for one row "
                        "(0: always use the worker threads)")
    p.add_argument("--prefix", default="", help="URL prefix in front of all paths")
    p.add_argument("--device", default="auto",
                   help="device to load the model on: cpu, cuda, cuda:N, or auto (cuda when this "
                        "process was given GPUs its runtime can use)")
    p.add_argument("--max-body-size", type=_parse_size, default=DEFAULT_MAX_BODY,
                   help="largest request body in bytes (K/M/G suffixes allowed); larger gets 413")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds requests in progress get to finish after SIGTERM")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.port is None and not args.unix_socket:
        p.error("give --unix-socket PATH, --port PORT, or both")
    return args


def _where(args: argparse.Namespace) -> str:
    """Where the server listens, for its log lines."""
    places = [f"unix:{args.unix_socket}"] if args.unix_socket else []
    if args.port is not None:
        places.append(f"http://{args.host}:{args.port}")
    return " and ".join(places)


def _read_signature(text: str):
    import json

    from aidc.models.signature import Signature

    if text.startswith("@"):
        try:
            with open(text[1:]) as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read the signature file {text[1:]}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--signature-json is not valid JSON: {e}") from None
    try:
        return Signature.from_dict(data)
    except AidcError:
        raise
    except Exception as e:
        raise UsageError(f"--signature-json is not a model signature: {type(e).__name__}: {e}"
                         ) from None


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def serve(args: argparse.Namespace, signature) -> int:
    loop = asyncio.get_running_loop()
    model = ModelServer(name=args.name, version=args.version, format=args.format,
                        signature=signature, prefix=args.prefix,
                        max_body_size=args.max_body_size, max_batch_size=args.max_batch_size,
                        max_queue_delay=args.max_queue_delay_ms / 1000.0,
                        instances=args.instances, inline_max=args.inline_max_ms / 1000.0)
    # bodies with a Content-Length over the limit are refused from their headers, chunked
    # ones as they pass the limit (_Request); tornado's own limit (a bare 400) is only a
    # backstop
    backstop = max(args.max_body_size, 1) * 4 + (1 << 20)
    http = NoDelayHTTPServer(_Router(model), max_body_size=backstop, answer_large_bodies=False,
                             idle_connection_timeout=3600)
    try:
        if args.unix_socket:
            http.add_socket(bind_unix_socket(args.unix_socket, mode=0o600, backlog=1024))
        if args.port is not None:
            http.listen(args.port, args.host, backlog=1024)
    except OSError as e:
        log.error("cannot listen on %s: %s", _where(args), e.strerror or e)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    loaded: asyncio.Future = loop.create_future()

    def load() -> None:
        t0 = time.perf_counter()
        try:
            from aidc.models import formats

            if args.format == "keras":
                _size_tensorflow_threads()
            device = formats.auto_device(args.format) if args.device == "auto" else args.device
            log.info("model %s version %s runs on %s (CUDA_VISIBLE_DEVICES=%r)", args.name, args.version,
                     device, os.environ.get("CUDA_VISIBLE_DEVICES", ""))
            runner = formats.load(args.format, args.artifact, signature, device=device,
                                  threads=_THREADS)
            _size_framework_threads()
            runner.warmup()
            seconds = time.perf_counter() - t0
            result = (runner, seconds, _time_single_row(runner), None)
        except BaseException as e:  # noqa: BLE001 - reported on the loop
            result = (None, 0.0, None, e)
        loop.call_soon_threadsafe(lambda: loaded.done() or loaded.set_result(result))

    log.info("loading %s model %s version %s from %s (listening on %s)", args.format,
             args.name, args.version, args.artifact, _where(args))
    threading.Thread(target=load, name="aidc-load", daemon=True).start()
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loaded, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not loaded.done():
        log.info("stopped while loading the model")
        http.stop()
        _exit_now(0)
    runner, seconds, single_row, error = loaded.result()
    if error is not None:
        if isinstance(error, AidcError):
            log.error("cannot load the model: %s", error)
        else:
            log.error("cannot load the model:\n%s",
                      "".join(traceback.format_exception(type(error), error, error.__traceback__)))
        http.stop()
        return 1
    model.loaded(runner, single_row)
    log.info("ready: model %s version %s (%s) on %s, at %s/v2 (loaded and warm in %.2f s, "
             "%s per row; batching %s, max batch %d, %d threads)", args.name, args.version,
             args.format, _where(args), model.prefix, seconds,
             f"{single_row * 1000:.2f} ms" if single_row is not None else "? ms",
             "on" if model.batcher.enabled else "off", args.max_batch_size, _THREADS)
    await stopping
    log.info("stopping: not ready, no new connections; finishing %d requests in progress",
             model.inflight)
    model.begin_drain()
    http.stop()
    if not await model.wait_idle(args.shutdown_timeout):
        log.warning("%d requests still in progress after %.0f s; stopping anyway",
                    model.inflight, args.shutdown_timeout)
    else:
        await model.batcher.drain()
    try:
        await asyncio.wait_for(http.close_all_connections(), 5)
    except asyncio.TimeoutError:
        pass
    model.batcher.close()
    log.info("stopped")
    return 0


def main(argv=None) -> None:
    # until the event loop takes over, SIGTERM ends the process quietly
    signal.signal(signal.SIGTERM, lambda *_: _exit_now(0))
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s aidc.models.server[{args.name}:{args.version}] "
               "%(message)s")
    logging.getLogger("tornado").setLevel(logging.WARNING)
    _limit_threads_env(args.threads if args.threads > 0 else _cpu_count())
    try:
        signature = _read_signature(args.signature_json)
    except AidcError as e:
        log.error("%s", e)
        sys.exit(2)
    try:
        code = asyncio.run(serve(args, signature))
    except KeyboardInterrupt:
        code = 0
    _exit_now(code)


# -- benchmark ----------------------------------------------------------------------------
def bench(argv=None) -> None:
    """Requests/s and latency through tritonclient.http (the MNIST shape by default)."""
    p = argparse.ArgumentParser(prog="python -m aidc.models.server bench")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--name", required=True)
    p.add_argument("--input", default="input")
    p.add_argument("--output", default="output")
    p.add_argument("--shape", default="1,1,28,28")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", action="store_true", help="JSON tensors instead of binary")
    a = p.parse_args(argv)

    import gevent
    import tritonclient.http as httpclient

    url = a.url.split("://", 1)[-1]
    shape = [int(x) for x in a.shape.split(",")]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for conc in [int(c) for c in a.concurrency.split(",")]:
        client = httpclient.InferenceServerClient(url, concurrency=conc, connection_timeout=30,
                                                  network_timeout=30)
        latencies: list[float] = []

        def worker(deadline):
            inp = httpclient.InferInput(a.input, shape, "FP32")
            inp.set_data_from_numpy(x, binary_data=not a.json)
            out = [httpclient.InferRequestedOutput(a.output, binary_data=not a.json)]
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                client.infer(a.name, [inp], outputs=out)
                latencies.append(time.perf_counter() - t)

        warm = time.perf_counter() + 1.0
        gevent.joinall([gevent.spawn(worker, warm) for _ in range(conc)])
        latencies.clear()
        t0 = time.perf_counter()
        gevent.joinall([gevent.spawn(worker, t0 + a.seconds) for _ in range(conc)])
        elapsed = time.perf_counter() - t0
        lat = np.array(latencies) * 1000
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        print(f"concurrency {conc:3d}: {len(lat) / elapsed:8.0f} req/s   p50 {p50:.3f} ms   "
              f"p90 {p90:.3f} ms   p99 {p99:.3f} ms", flush=True)
        client.close()


if __name__ == "__main__":
    main()
