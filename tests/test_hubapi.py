"""The one hub REST client (aidc.hubapi): the same answers to the same failures, sync and async.

A real HTTP server on a local port plays a hub that restarts (503 twice, then answers),
refuses (404, 409, 403) or is gone (nothing listens).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aidc.errors import ConflictError, NotFoundError, PlatformError
from aidc.hubapi import HubAPI


class FakeHub(BaseHTTPRequestHandler):
    """``/flaky``: 503 for the first two calls of each method, then 200; ``/users/gone``: 404;
    ``/users/taken``: 409; ``/forbidden``: 403; every call is counted by method and path."""

    calls: dict[tuple[str, str], int] = {}

    def log_message(self, *args):
        pass

    def answer(self):
        key = (self.command, self.path)
        FakeHub.calls[key] = FakeHub.calls.get(key, 0) + 1
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if self.path == "/flaky" and FakeHub.calls[key] <= 2:
            status, model = 503, {"status": 503, "message": "the hub is starting"}
        elif self.path == "/users/gone":
            status, model = 404, {"status": 404, "message": "No such user: gone"}
        elif self.path == "/users/taken":
            status, model = 409, {"status": 409, "message": "User taken already exists"}
        elif self.path == "/forbidden":
            status, model = 403, {"status": 403, "message": "Action is not authorized"}
        else:
            status, model = 200, {"path": self.path, "auth": self.headers.get("Authorization"),
                                  "body": body}
        data = json.dumps(model).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = answer


@pytest.fixture
def hub():
    FakeHub.calls = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield HubAPI(f"http://127.0.0.1:{server.server_port}/", "secret", timeout=10)
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_and_async_answer_alike(hub):
    for call in (lambda *a: hub.request(*a), lambda *a: asyncio.run(hub.fetch(*a))):
        answer = call("POST", "/users/alice/tokens", {"note": "x"})
        assert answer == {"path": "/users/alice/tokens", "auth": "token secret", "body": {"note": "x"}}
        # a hub restarting behind the proxy (503) is waited for, for a call that may be repeated
        FakeHub.calls.pop(("GET", "/flaky"), None)
        assert call("GET", "/flaky")["path"] == "/flaky"
        assert FakeHub.calls[("GET", "/flaky")] == 3
        # the caller's errors keep the hub's message; other refusals say what the hub answered
        with pytest.raises(NotFoundError, match="No such user: gone"):
            call("GET", "/users/gone")
        with pytest.raises(ConflictError, match="User taken already exists"):
            call("POST", "/users/taken")
        with pytest.raises(PlatformError, match="the hub refused DELETE /forbidden: 403 Action is not authorized"):
            call("DELETE", "/forbidden")


def test_a_post_is_not_repeated(hub):
    """A second POST could make a second token or user: a 503 is reported, not retried."""
    for call in (lambda *a: hub.request(*a), lambda *a: asyncio.run(hub.fetch(*a))):
        FakeHub.calls.pop(("POST", "/flaky"), None)
        with pytest.raises(PlatformError, match="not available.*503"):
            call("POST", "/flaky", {})
        assert FakeHub.calls[("POST", "/flaky")] == 1


def test_a_hub_that_is_gone_is_a_platform_error():
    api = HubAPI(f"http://127.0.0.1:{free_port()}", "secret", timeout=5, retries=1)
    assert not api.answers()
    with pytest.raises(PlatformError, match="stopped answering"):
        api.request("GET", "/users")
    with pytest.raises(PlatformError, match="stopped answering"):
        asyncio.run(api.fetch("GET", "/users"))
