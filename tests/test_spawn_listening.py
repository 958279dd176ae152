"""A spawner's start returns once the new server listens (``aidc.hub.listening``): when its
port accepts connections, and when its process has ended (the hub then reports the failure)
without waiting out the time-out. In-process, on loopback ports; well under 1 s."""

from __future__ import annotations

import asyncio
import socket

from aidc.hub.listening import wait_listening


def test_returns_once_the_port_listens_and_gives_up_when_the_process_ends():
    async def scenario():
        with socket.socket() as refusing:
            refusing.bind(("127.0.0.1", 0))  # bound, not listening: every connection refused
            checks = []

            def alive() -> bool:  # the process ends after three refused checks
                checks.append(1)
                return len(checks) <= 3

            # a time-out of an hour: only the ended process can end this wait in time
            ended = await asyncio.wait_for(
                wait_listening("127.0.0.1", refusing.getsockname()[1], alive, 3600,
                               interval=0.01), 60)
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            listening = await asyncio.wait_for(
                wait_listening("127.0.0.1", server.getsockname()[1], lambda: True, 3600), 60)
        return ended, len(checks), listening

    ended, checks, listening = asyncio.run(scenario())
    assert ended is False and checks == 4
    assert listening is True
