"""The data plane of one served model version: what it answers, whatever carries the request.

Readiness, metadata, inference (decoded and encoded by :mod:`aidc.models.v2`, batched
by :mod:`aidc.models.batching`), statistics shaped like Triton's and Prometheus metrics
(:mod:`aidc.models.metrics`). It knows nothing of HTTP: a transport
(:mod:`aidc.models.rest` today) maps its requests to these methods, sends the
:class:`Reply` they return, and reports each answered request with :meth:`DataPlane.record`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from functools import partial
from typing import Callable, NamedTuple

from ..errors import AidcError
from . import metrics, v2
from .batching import LATENCY_BUCKETS, Batcher, Histogram
from .formats import model_formats

log = logging.getLogger("aidc.models.server")

DEFAULT_MAX_BODY = 16 * 1024 * 1024
_EMPTY = b""


class Reply(NamedTuple):
    """An answer for the transport to send: status code, body, content type, extra headers."""

    code: int
    body: bytes
    content_type: str = v2.JSON
    headers: dict | None = None


def error(code: int, message: str) -> Reply:
    return Reply(code, v2.error_body(message))


class DataPlane:
    """State and answers of one served model version."""

    def __init__(self, *, name: str, version: str, format: str, signature,
                 max_body_size: int = DEFAULT_MAX_BODY, max_batch_size: int = 32,
                 max_queue_delay: float = 0.002, instances: int = 1, inline_max: float = 0.0,
                 thread_init: Callable[[], None] | None = None):
        self.name = name
        self.version = version
        self.format = format
        self.max_body_size = max_body_size
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.instances = instances
        self.inline_max = inline_max
        #: run in each batch thread first (the process sizes the frameworks' thread pools)
        self.thread_init = thread_init
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

    def _set_signature(self, signature) -> None:
        self.signature = signature
        self._outputs = {spec.name: spec for spec in signature.outputs}
        self._output_types = {spec.name: spec.datatype for spec in signature.outputs}
        self._input_names = frozenset(spec.name for spec in signature.inputs)
        self._metadata = v2.dumps({
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
                               thread_init=self.thread_init,
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

    # -- simple answers --------------------------------------------------------------------
    def live(self) -> Reply:
        return Reply(200, _EMPTY)

    def not_ready(self) -> Reply:
        why = "the model is still loading" if self.state == "loading" else "the server is stopping"
        return error(503, f"not ready: {why}")

    def model_ready(self) -> Reply:
        return Reply(200, _EMPTY) if self.ready else self.not_ready()

    def server_metadata(self) -> Reply:
        from aidc import __version__

        return Reply(200, v2.dumps({"name": "aidc", "version": __version__,
                                    "extensions": ["binary_tensor_data"]}))

    def model_metadata(self) -> Reply:
        return Reply(200, self._metadata)

    # -- inference -------------------------------------------------------------------------
    def infer(self, body, content_encoding: str | None, header_length: str | None,
              done: Callable[[Reply], None], is_cancelled: Callable[[], bool]) -> Reply | None:
        """Decode the request and queue it for the model; ``done`` gets the answer later
        (unless ``is_cancelled`` by then). Returns a :class:`Reply` only when it answers at once."""
        if not self.ready and not (self.draining and self.batcher is not None):
            return self.not_ready()
        if content_encoding:
            body = v2.decompress(body, content_encoding.strip().lower(), self.max_body_size)
        request, offset = v2.split_request(body, header_length)
        tensors = v2.decode_inputs(request, body, offset, self._input_names, self._expected)
        try:
            self.signature.check_inputs(tensors)
        except AidcError as e:
            raise v2.V2Error(400, str(e)) from None
        selected = v2.select_outputs(request, self._outputs, self._expected, self._expected_outputs)
        self.batcher.submit(tensors, partial(self._infer_done, done, is_cancelled,
                                             request.get("id"), selected))
        return None

    def _infer_done(self, done, is_cancelled, request_id, selected, outputs) -> None:
        if is_cancelled():
            return
        if isinstance(outputs, BaseException):
            e = outputs
            if isinstance(e, AidcError):
                return done(error(400, str(e)))
            log.error("the model failed on a request:\n%s",
                      "".join(traceback.format_exception(type(e), e, e.__traceback__)))
            first = (str(e).strip().splitlines() or [""])[0][:300]
            return done(error(500, f"the model failed: {type(e).__name__}: {first}"))
        try:
            body, binary_len = v2.encode_response(self.name, self.version, outputs, selected,
                                                  request_id, self._output_types)
        except Exception:
            log.error("could not encode the model's outputs:\n%s", traceback.format_exc())
            return done(error(500, "could not encode the model's outputs (see the model server's log)"))
        if binary_len is None:
            done(Reply(200, body))
        else:
            done(Reply(200, body, v2.BINARY, {v2.HEADER_LENGTH: str(binary_len)}))

    # -- statistics and metrics ------------------------------------------------------------
    def record(self, endpoint: str, code: int, seconds: float) -> None:
        """One answered request (the transport reports each)."""
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

    def model_stats(self) -> Reply:
        return Reply(200, v2.dumps(self.stats()))

    def metrics(self) -> Reply:
        return Reply(200, self.prometheus(), metrics.CONTENT_TYPE)

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
