"""Pooled keep-alive HTTP/1.1 connections to model-server replicas over their Unix sockets.

The inference router's way to a replica (:mod:`aidc.models.router`). A general client
(aiohttp, which the models service uses for health checks) costs more CPU per request
than the router's whole job; this one writes a request in one call and reads the one
answer a replica gives (:mod:`aidc.models.rest`: always ``Content-Length``, never chunked)
in the protocol's callback, with no per-request coroutine of its own.
"""

from __future__ import annotations

import asyncio


class ReplicaGone(ConnectionError):
    """The replica did not answer: nothing listens, or the connection broke mid-request."""


class _Conn(asyncio.Protocol):
    """One connection; one request at a time."""

    __slots__ = ("transport", "buf", "waiter", "status", "headers", "length", "closed", "keep")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.status = 0
        self.headers: dict[str, str] | None = None
        self.length = -1
        self.closed = False
        self.keep = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ReplicaGone(str(exc or "the replica closed the connection")))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        buf = self.buf
        if self.headers is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            try:
                self.status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self._fail("the replica's answer is not HTTP")
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.headers = headers
            self.length = int(headers.get("content-length", "0"))
            self.keep = headers.get("connection", "").lower() != "close"
        if len(buf) < self.length:
            return
        body = bytes(buf[:self.length])
        del buf[:self.length]
        waiter, self.waiter = self.waiter, None
        headers, self.headers = self.headers, None
        waiter.set_result((self.status, headers, body))

    def _fail(self, message: str) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ReplicaGone(message))
        self.transport.close()

    def send(self, head: bytes, body: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        if len(body) < 65536:  # one write, one segment
            self.transport.write(head + body)
        else:  # no copy of a large body
            self.transport.write(head)
            self.transport.write(body)
        return self.waiter


class ReplicaPool:
    """Idle connections to one replica's socket; a request takes one or opens one."""

    def __init__(self, socket: str):
        self.socket = socket
        self.idle: list[_Conn] = []
        self.inflight = 0
        #: the router saw this replica fail (until this monotonic time, it is not chosen)
        self.down_until = 0.0

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one request (``head`` ends with the blank line); its status, headers, body."""
        conn = None
        while self.idle:
            candidate = self.idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            try:
                _, conn = await asyncio.get_running_loop().create_unix_connection(_Conn, self.socket)
            except OSError as e:
                raise ReplicaGone(f"cannot connect to {self.socket}: {e}") from None
        self.inflight += 1
        try:
            answer = await conn.send(head, body)
        except BaseException:
            conn.transport.close()
            raise
        finally:
            self.inflight -= 1
        if conn.keep and not conn.closed:
            self.idle.append(conn)
        else:
            conn.transport.close()
        return answer

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()
