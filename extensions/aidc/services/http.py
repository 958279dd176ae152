"""The HTTP server of the platform's services (model replicas have a leaner one of their
own, :mod:`aidc.models.rest`)."""

from __future__ import annotations

import json
import logging
import sys

from tornado import httputil
from tornado.httpserver import HTTPServer

from ..errors import size_text

#: tornado's own default body limit (``max_buffer_size``), kept as the default here
DEFAULT_MAX_BODY = 100 * 1024 * 1024

log = logging.getLogger("tornado.access")


class NoDelayHTTPServer(HTTPServer):
    """A tornado ``HTTPServer`` with TCP_NODELAY on every connection, for good, and a JSON
    413 for every request body over ``max_body_size``.

    Tornado turns Nagle's algorithm back on after each response and off again at the
    end of the next one: two system calls per request, and a small response written in
    two parts can wait for the client's delayed ACK. For request/response APIs on
    keep-alive connections (the hub's proxy, v2 clients) every write should go out at once.

    A body over tornado's ``max_body_size`` makes tornado drop the connection while the
    client is still sending, so the hub's proxy sees a reset and answers its own 503 page.
    Here the limit is enforced in front of the application instead (``answer_large_bodies``,
    on unless the application does it itself): such a request never reaches a handler;
    its body, however large, with a Content-Length or chunked, is read and dropped as it
    comes (never kept), and the answer is a 413 with the JSON error body
    ``{"status": 413, "message": ..., "error": ...}`` (the services' shape and the v2
    protocol's), on a connection that stays usable.
    """

    def initialize(self, request_callback, *args, max_body_size: int | None = None,
                   answer_large_bodies: bool = True, **kwargs) -> None:
        self.body_limit = max_body_size if max_body_size is not None else DEFAULT_MAX_BODY
        self.answer_large_bodies = answer_large_bodies
        if answer_large_bodies:
            max_body_size = sys.maxsize  # tornado reads on; _BodyLimit counts and refuses
        super().initialize(request_callback, *args, max_body_size=max_body_size, **kwargs)

    def handle_stream(self, stream, address):
        stream.set_nodelay(True)
        stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]
        super().handle_stream(stream, address)

    def start_request(self, server_conn, request_conn):
        delegate = super().start_request(server_conn, request_conn)
        if not self.answer_large_bodies:
            return delegate
        return _BodyLimit(delegate, request_conn, self.body_limit)


def _keep_nodelay(value: bool) -> None:
    pass


class _BodyLimit(httputil.HTTPMessageDelegate):
    """In front of the application's delegate: passes a request on, unless its body is over
    ``limit`` (declared, or as a chunked body grows), which is dropped and answered 413.

    A handler with ``@stream_request_body`` may set its own limit from ``prepare()``
    with tornado's ``self.request.connection.set_max_body_size(n)``: it lands here.
    """

    def __init__(self, delegate: httputil.HTTPMessageDelegate,
                 connection: httputil.HTTPConnection, limit: int):
        self.delegate = delegate
        self.connection = connection
        self.limit = limit
        self.size = 0
        self.declared: int | None = None
        self.passed = False  # the application has the request (and has not been told it is gone)
        self.refused = False
        self.start_line = None
        self.body_read = False
        connection.set_max_body_size = self._set_limit  # type: ignore[method-assign]
        self._write_headers = connection.write_headers
        connection.write_headers = self._closing_early  # type: ignore[method-assign]

    def _set_limit(self, limit: int) -> None:
        self.limit = limit

    def _closing_early(self, start_line, headers, chunk=None):
        """An answer given before the request's body was read (a streaming handler refusing
        in ``prepare()``) says ``Connection: close``: tornado closes such a connection once
        the body is in, and the hub's proxy, not told, could send its next request on it and
        get a reset (its 503 page) instead of an answer."""
        if not self.body_read:
            headers["Connection"] = "close"
        return self._write_headers(start_line, headers, chunk)

    def headers_received(self, start_line, headers):
        self.start_line = start_line
        length = headers.get("Content-Length")
        if length is not None:
            try:
                self.declared = int(length)
            except ValueError:
                pass  # tornado refuses it (400) before reading any body
        if self.declared is not None and self.declared > self.limit:
            self.refused = True  # never reaches the application
            return None
        self.passed = True
        prepared = self.delegate.headers_received(start_line, headers)
        if prepared is None:
            return None
        return self._check_after(prepared)

    async def _check_after(self, prepared) -> None:
        await prepared  # a streaming handler's prepare(), which may have set its own limit
        if self.declared is not None and self.declared > self.limit:
            self._refuse()

    def _refuse(self) -> None:
        self.refused = True
        if self.passed:
            self.passed = False
            self.delegate.on_connection_close()  # for the application, the request is gone

    def data_received(self, chunk):
        if self.refused:
            return None  # dropped as it comes
        self.size += len(chunk)
        if self.size > self.limit:  # a chunked body grew over the limit
            self._refuse()
            return None
        return self.delegate.data_received(chunk)

    def finish(self):
        self.body_read = True
        if not self.refused:
            self.delegate.finish()
            return
        if getattr(self.connection, "_write_finished", False):
            return  # a streaming handler answered already (tornado then closes the connection)
        message = f"request body too large: at most {size_text(self.limit)}"
        body = json.dumps({"status": 413, "message": message, "error": message}).encode()
        headers = httputil.HTTPHeaders({"Content-Type": "application/json",
                                        "Content-Length": str(len(body))})
        log.warning("413 %s %s: %s", getattr(self.start_line, "method", "?"),
                    getattr(self.start_line, "path", "?"), message)
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 413, "Payload Too Large"), headers, body)
        self.connection.finish()

    def on_connection_close(self):
        if self.passed:
            self.passed = False
            self.delegate.on_connection_close()
