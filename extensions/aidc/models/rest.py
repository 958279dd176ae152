"""The replica's HTTP transport: v2 REST routes onto the data plane, on tornado's HTTP/1.1.

Thin on purpose: it reads a request (refusing a body over the limit from its
Content-Length, before reading it), finds the route, calls the
:class:`~aidc.models.dataplane.DataPlane` and writes the :class:`~aidc.models.dataplane.Reply`;
it reports every answered request to the data plane's statistics. Another transport
(gRPC) would do the same with its own framing, touching neither the data plane nor the
wire format (:mod:`aidc.models.v2`).

Routes (KServe v2 / Triton HTTP; ``{name}`` and ``{v}`` must be this server's), under an
optional URL prefix:

- ``GET /v2/health/live``, ``GET /v2/health/ready``
- ``GET /v2``: server metadata
- ``GET /v2/models/{name}[/versions/{v}]``: model metadata
- ``GET /v2/models/{name}[/versions/{v}]/ready``
- ``POST /v2/models/{name}[/versions/{v}]/infer``
- ``GET /v2/models/{name}[/versions/{v}]/stats``, ``GET /v2/models/stats``
- ``GET /metrics``: Prometheus text
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from urllib.parse import quote, unquote

from tornado import httputil, iostream

from ..services.http import NoDelayHTTPServer
from . import v2
from .dataplane import DataPlane, Reply

log = logging.getLogger("aidc.models.server")

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class Routes:
    """Paths of one served model version to (endpoint name, method, answer)."""

    def __init__(self, plane: DataPlane, prefix: str = ""):
        self.plane = plane
        self.prefix = prefix.rstrip("/")
        base = f"/v2/models/{quote(plane.name, safe='')}"
        vbase = f"{base}/versions/{quote(plane.version, safe='')}"
        self.base = base
        self._routes = {
            "/v2/health/live": ("health_live", "GET", lambda req: plane.live()),
            "/v2/health/ready": ("health_ready", "GET", lambda req: plane.model_ready()),
            "/v2": ("server_metadata", "GET", lambda req: plane.server_metadata()),
            "/metrics": ("metrics", "GET", lambda req: plane.metrics()),
            "/v2/models/stats": ("model_stats", "GET", lambda req: plane.model_stats()),
        }
        for b in (base, vbase):
            self._routes.update({
                b: ("model_metadata", "GET", lambda req: plane.model_metadata()),
                f"{b}/ready": ("model_ready", "GET", lambda req: plane.model_ready()),
                f"{b}/infer": ("infer", "POST", self._infer),
                f"{b}/stats": ("model_stats", "GET", lambda req: plane.model_stats()),
            })

    def _infer(self, req: "_Request") -> Reply | None:
        headers = req.headers
        return self.plane.infer(req.body(), headers.get("Content-Encoding"),
                                headers.get(v2.HEADER_LENGTH), req.reply, req.is_finished)

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
        endpoint, method, answer = route
        req.endpoint = endpoint
        if req.method != method:
            message = f"{req.method} is not allowed on {path}; use {method}"
            return req.reply(Reply(405, v2.error_body(message), v2.JSON, {"Allow": method}))
        try:
            reply = answer(req)
        except v2.V2Error as e:
            return req.error(e.code, e.message)
        except Exception:
            log.error("error answering %s %s:\n%s", req.method, path, traceback.format_exc())
            return req.error(500, "internal server error (see the model server's log)")
        if reply is not None:
            req.reply(reply)

    def _model_route(self, req: "_Request", path: str):
        plane = self.plane
        if not path.startswith("/v2/models/"):
            req.error(404, f"not found: {path}", "unknown")
            return None
        parts = path[len("/v2/models/"):].split("/")
        name, rest = unquote(parts[0]), parts[1:]
        version = unquote(rest[1]) if len(rest) >= 2 and rest[0] == "versions" else None
        route = None
        if name != plane.name:
            unknown = f"unknown model {name!r}"
        elif version is not None and version != plane.version:
            unknown = f"unknown version {version!r} of model {plane.name!r}"
        else:
            action = "/".join(rest[2:] if version is not None else rest)
            route = self._routes.get(f"{self.base}/{action}" if action else self.base)
            unknown = None
        if unknown is not None:
            req.error(404, f"{unknown}: this server serves model {plane.name!r} version "
                           f"{plane.version}", "unknown")
        elif route is None:
            req.error(404, f"not found: {path}", "unknown")
        return route


class _Request(httputil.HTTPMessageDelegate):
    """One request on a connection: collects the body, then hands it to the routes."""

    __slots__ = ("routes", "plane", "conn", "method", "path", "headers", "chunks", "size", "t0",
                 "endpoint", "finished", "reading")

    def __init__(self, routes: Routes, conn: httputil.HTTPConnection):
        self.routes = routes
        self.plane = routes.plane
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
        plane = self.plane
        plane.inflight += 1
        plane.reading += 1
        self.reading = True
        length = headers.get("Content-Length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return None  # tornado answers 400
            if declared > plane.max_body_size:
                self._refuse_too_large(declared)
        return None

    def data_received(self, chunk):
        if self.finished:
            return None
        self.size += len(chunk)
        if self.size > self.plane.max_body_size:
            # a chunked body (no Content-Length) grew too large: answer now; tornado
            # closes the connection once the answer is written
            self.chunks = []
            self.error(413, f"the request body is larger than {self.plane.max_body_size} bytes")
        else:
            self.chunks.append(chunk)
        return None

    def finish(self):
        self._read()
        if self.finished:
            return
        self.routes.handle(self)

    def _read(self) -> None:
        if self.reading:
            self.reading = False
            self.plane.reading -= 1

    def on_connection_close(self):
        self._read()
        if not self.finished:
            self.finished = True
            self.plane.record(self.endpoint, 499, time.perf_counter() - self.t0)
            self.plane.request_done()

    def body(self) -> bytearray:
        chunks = self.chunks
        if not chunks:
            return bytearray()
        return bytearray(chunks[0]) if len(chunks) == 1 else bytearray().join(chunks)

    def is_finished(self) -> bool:
        return self.finished

    # -- answers ---------------------------------------------------------------------------
    def error(self, code: int, message: str, endpoint: str | None = None) -> None:
        if endpoint is not None:
            self.endpoint = endpoint
        self.reply(Reply(code, v2.error_body(message)))

    def reply(self, reply: Reply) -> None:
        if self.finished:
            return
        self.finished = True
        plane = self.plane
        headers = httputil.HTTPHeaders()
        headers["Content-Type"] = reply.content_type
        headers["Content-Length"] = str(len(reply.body))
        if reply.headers:
            headers.update(reply.headers)
        if plane.draining:
            headers["Connection"] = "close"
        try:
            start = httputil.ResponseStartLine("HTTP/1.1", reply.code, _REASONS.get(reply.code, ""))
            self.conn.write_headers(start, headers, reply.body)
            self.conn.finish()
        except iostream.StreamClosedError:
            pass
        plane.record(self.endpoint, reply.code, time.perf_counter() - self.t0)
        plane.request_done()

    def _refuse_too_large(self, declared: int) -> None:
        """Answer 413 from the Content-Length alone and take the connection from tornado."""
        plane = self.plane
        self._read()
        self.finished = True
        self.endpoint = "infer" if self.path.endswith("/infer") else "unknown"
        stream = self.conn.detach()
        body = v2.error_body(f"the request body ({declared} bytes) is larger than the limit of "
                             f"{plane.max_body_size} bytes")
        head = (f"HTTP/1.1 413 Payload Too Large\r\nContent-Type: {v2.JSON}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        plane.record(self.endpoint, 413, time.perf_counter() - self.t0)
        plane.request_done()
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
    def __init__(self, routes: Routes):
        self.routes = routes

    def start_request(self, server_conn, request_conn):
        return _Request(self.routes, request_conn)


def http_server(plane: DataPlane, prefix: str = "") -> NoDelayHTTPServer:
    """The HTTP server of ``plane`` (not listening yet: add sockets or ``listen``)."""
    # bodies with a Content-Length over the limit are refused from their headers, chunked
    # ones as they pass the limit (_Request); tornado's own limit (a bare 400) is only a
    # backstop
    backstop = max(plane.max_body_size, 1) * 4 + (1 << 20)
    return NoDelayHTTPServer(_Router(Routes(plane, prefix)), max_body_size=backstop,
                             answer_large_bodies=False, idle_connection_timeout=3600)
