"""The HTTP server of the platform's own processes (services, model replicas)."""

from __future__ import annotations

from tornado.httpserver import HTTPServer


class NoDelayHTTPServer(HTTPServer):
    """A tornado ``HTTPServer`` with TCP_NODELAY on every connection, for good.

    Tornado turns Nagle's algorithm back on after each response and off again at the
    end of the next one: two system calls per request, and a small response written in
    two parts can wait for the client's delayed ACK. For request/response APIs on
    keep-alive connections (the hub's proxy, v2 clients) every write should go out at once.
    """

    def handle_stream(self, stream, address):
        stream.set_nodelay(True)
        stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]
        super().handle_stream(stream, address)


def _keep_nodelay(value: bool) -> None:
    pass
