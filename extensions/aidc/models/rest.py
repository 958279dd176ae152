"""The replica's HTTP transport: v2 REST routes onto the data plane, over a lean HTTP/1.1
protocol of its own on asyncio (:class:`_Connection`).

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

from ..errors import size_text
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


class _Headers(dict):
    """A request's headers by lower-case name; ``get`` takes the name in any case."""

    __slots__ = ()

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)


class _Request:
    """One request of a connection, as the routes see it; ``reply`` answers it once."""

    __slots__ = ("conn", "plane", "method", "path", "headers", "data", "t0", "endpoint",
                 "finished", "keep_alive")

    def __init__(self, conn: "_Connection", method: str, path: str, headers: _Headers,
                 keep_alive: bool, t0: float):
        self.conn = conn
        self.plane = conn.plane
        self.method = method
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive
        self.t0 = t0
        self.data = bytearray()
        self.endpoint = "unknown"
        self.finished = False

    def body(self) -> bytearray:
        return self.data

    def is_finished(self) -> bool:
        return self.finished

    def error(self, code: int, message: str, endpoint: str | None = None) -> None:
        if endpoint is not None:
            self.endpoint = endpoint
        shape = getattr(self.conn.routes, "error_reply", None)  # routes may word it their way
        self.reply(shape(self, code, message) if shape is not None
                   else Reply(code, v2.error_body(message)))

    def reply(self, reply: Reply) -> None:
        if self.finished:
            return
        self.finished = True
        plane = self.plane
        close = not self.keep_alive or plane.draining
        body = reply.body
        head = (f"HTTP/1.1 {reply.code} {_REASONS.get(reply.code, '')}\r\n"
                f"Content-Type: {reply.content_type}\r\nContent-Length: {len(body)}\r\n")
        if reply.headers:  # a dict, or (name, value) pairs (a name may repeat: Set-Cookie)
            pairs = reply.headers.items() if isinstance(reply.headers, dict) else reply.headers
            head += "".join(f"{k}: {v}\r\n" for k, v in pairs)
        if close:
            head += "Connection: close\r\n"
        self.conn.send(self, (head + "\r\n").encode("latin-1"), body, close)
        plane.record(self.endpoint, reply.code, time.perf_counter() - self.t0)
        plane.request_done()


class _BadRequest(Exception):
    """The bytes on the connection are not an HTTP/1.1 request we can read: 400, then close."""


class _Connection(asyncio.Protocol):
    """One client connection: an HTTP/1.1 parser and writer over asyncio's transport.

    Why not tornado's ``HTTPServer`` (which this replaced): tornado reads every request
    through a chain of coroutines and futures (head, body, write, finish), which cost more
    CPU than the v2 decoding and made the replica's event loop, not the model, the limit
    for single-sample requests. Here a request that arrives in one read (the usual case)
    is parsed and handed to the routes in the same callback, and its answer goes out in
    one write. One request at a time per connection, in order (pipelined requests wait in
    the buffer). A body whose Content-Length is over the limit is refused from the head
    alone (413, ``Connection: close``), and what the client still sends is read and dropped
    (never kept) so that it sees the answer instead of a reset; a chunked one the same way
    as soon as it passes the limit.
    """

    def __init__(self, server: "HTTPServer"):
        self.server = server
        self.routes = server.routes
        self.plane = server.routes.plane
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.request: _Request | None = None  # head read; its body or its answer pending
        self.length = 0  # the pending body's length; -1: chunked
        self.answering = False  # the routes have the request: no reading of the next one
        self.processing = False
        self.discarding = False  # after a 413: drop what comes, then close
        self.closed = False
        self.paused = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio -----------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        req = self.request
        if req is not None and not req.finished:
            req.finished = True
            if not self.answering:
                self.plane.reading -= 1
            self.plane.record(req.endpoint, 499, time.perf_counter() - req.t0)
            self.plane.request_done()
        self.request = None

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            if self.length < 0:  # chunked: until its last chunk
                if data.endswith(b"0\r\n\r\n"):
                    self.transport.close()
            else:
                self.length -= len(data)
                if self.length <= 0:
                    self.transport.close()
            return
        self.buf += data
        if self.answering:
            if len(self.buf) > self.plane.max_body_size + _MAX_HEAD and not self.paused:
                self.paused = True  # pipelined requests pile up: wait for this answer
                self.transport.pause_reading()
            return
        self._process()

    # -- reading requests --------------------------------------------------------------------
    def _process(self) -> None:
        if self.processing:
            return
        self.processing = True
        try:
            while not self.answering and not self.closed and not self.discarding:
                if self.request is None and not self._read_head():
                    return
                if not self._read_body():
                    return
                req = self.request
                self.plane.reading -= 1
                self.answering = True
                self.routes.handle(req)
        except _BadRequest as e:
            self._bad_request(str(e))
        finally:
            self.processing = False

    def _read_head(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise _BadRequest(f"the request's head is longer than {_MAX_HEAD} bytes")
            return False
        if end == 0 or buf.startswith(b"\r\n"):  # blank lines between requests are allowed
            del buf[:2]
            return self._read_head()
        t0 = time.perf_counter()
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[:end + 4]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        method, path, version = parts
        headers = _Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t":
                raise _BadRequest("malformed header line")
            headers[name.lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = ("close" not in connection if version == "HTTP/1.1"
                      else "keep-alive" in connection)
        req = self.request = _Request(self, method, path, headers, keep_alive, t0)
        plane = self.plane
        plane.inflight += 1
        plane.reading += 1
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.length = -1
            req.data = bytearray()
        else:
            declared = headers.get("content-length")
            try:
                self.length = int(declared) if declared is not None else 0
                if self.length < 0:
                    raise ValueError
            except ValueError:
                raise _BadRequest(f"Content-Length is not a number: {declared!r}") from None
            if self.length > plane.max_body_size:
                self._refuse_too_large(self.length)
                return False
        if headers.get("expect", "").lower() == "100-continue" and not buf:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _read_body(self) -> bool:
        """The pending request's body is complete (in ``request.data``)."""
        buf = self.buf
        if self.length >= 0:
            if len(buf) < self.length:
                return False
            if self.length:
                if len(buf) == self.length:  # the whole buffer: hand it over, no copy
                    self.request.data, self.buf = buf, bytearray()
                else:
                    self.request.data = buf[:self.length]
                    del buf[:self.length]
            return True
        while True:  # chunked: size line, data, CRLF; a 0 chunk (and trailers) ends it
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > _MAX_HEAD:
                    raise _BadRequest("malformed chunked body")
                return False
            try:
                size = int(bytes(buf[:line_end]).split(b";")[0].strip(), 16)
            except ValueError:
                raise _BadRequest("malformed chunked body") from None
            if size == 0:
                end = buf.find(b"\r\n\r\n", line_end - 2 if line_end >= 2 else 0)
                if end < 0:
                    return False
                del buf[:end + 4]
                return True
            if len(buf) < line_end + 2 + size + 2:
                return False
            data = self.request.data
            if len(data) + size > self.plane.max_body_size:
                self.request.data = bytearray()
                infer = self.request.path.endswith("/infer")
                self.request.endpoint = "infer" if infer else "unknown"
                self.plane.reading -= 1
                self.answering = True
                self.discarding = True
                self.request.keep_alive = False
                tail = bytes(buf[-5:])
                self.buf = bytearray()
                self.request.error(413, f"request body too large: at most "
                                        f"{size_text(self.plane.max_body_size)}")
                if tail.endswith(b"0\r\n\r\n"):
                    self.transport.close()
                else:
                    self._timer = asyncio.get_running_loop().call_later(
                        _DISCARD_SECONDS, self.transport.close)
                return False
            data += buf[line_end + 2:line_end + 2 + size]
            del buf[:line_end + 2 + size + 2]

    def _refuse_too_large(self, declared: int) -> None:
        """Answer 413 from the Content-Length alone; drop the body as it comes, then close."""
        plane = self.plane
        req = self.request
        req.endpoint = "infer" if req.path.endswith("/infer") else "unknown"
        plane.reading -= 1
        self.answering = True
        self.discarding = True
        self.length = declared - len(self.buf)
        self.buf = bytearray()
        req.keep_alive = False
        req.error(413, f"request body too large ({declared} bytes): at most "
                       f"{size_text(plane.max_body_size)}")
        if self.length <= 0:
            self.transport.close()
        else:
            self._timer = asyncio.get_running_loop().call_later(_DISCARD_SECONDS,
                                                                self.transport.close)

    def _bad_request(self, message: str) -> None:
        req = self.request
        if req is not None and not req.finished:
            self.plane.reading -= 1
            req.keep_alive = False
            req.error(400, message)
            return
        body = v2.error_body(message)
        self.transport.write(f"HTTP/1.1 400 Bad Request\r\nContent-Type: {v2.JSON}\r\n"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                             .encode() + body)
        self.transport.close()
        self.closed = True

    # -- writing answers ---------------------------------------------------------------------
    def send(self, req: _Request, head: bytes, body: bytes, close: bool) -> None:
        if self.closed or req is not self.request:
            return
        transport = self.transport
        if len(body) < 65536:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        if self.discarding:
            return  # closed once the rest of the refused body is dropped
        self.request = None
        self.answering = False
        if close:
            transport.close()
            self.closed = True
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if self.buf and not self.processing:
            self._process()


#: a request's head (request line and headers) may be at most this long
_MAX_HEAD = 64 * 1024
#: how long the rest of a refused (413) body is read and dropped before the connection closes
_DISCARD_SECONDS = 10.0


class HTTPServer:
    """The replica's HTTP/1.1 server (:class:`_Connection`): listens on Unix sockets and
    TCP ports, stops listening, and closes the connections left at the end."""

    def __init__(self, routes: Routes):
        self.routes = routes
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def add_unix_socket(self, sock) -> None:
        """Serve on a bound Unix socket (e.g. from ``tornado.netutil.bind_unix_socket``)."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(lambda: _Connection(self), sock=sock))

    async def listen(self, port: int, host: str = "127.0.0.1", backlog: int = 1024,
                     ssl=None, reuse_port: bool = False) -> None:
        """Serve on a TCP port (``ssl``: an ``SSLContext`` for HTTPS; ``reuse_port``: with
        other processes on the same port, the kernel spreading connections over them)."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True, ssl=ssl,
            reuse_port=reuse_port))

    def stop(self) -> None:
        """Stop listening (connections already open stay)."""
        for server in self._servers:
            server.close()

    async def close_all_connections(self) -> None:
        """Close the idle connections, then wait for the others to end."""
        while self.connections:
            for conn in list(self.connections):
                if conn.request is None and conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0.01)


def http_server(plane: DataPlane, prefix: str = "") -> HTTPServer:
    """The HTTP server of ``plane`` (not listening yet: ``add_unix_socket`` or ``listen``)."""
    return HTTPServer(Routes(plane, prefix))
