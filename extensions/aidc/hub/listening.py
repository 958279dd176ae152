"""A spawner's ``start()`` that returns once the new server listens, not as soon as it runs.

After ``Spawner.start()`` returns, JupyterHub asks the new server for ``/api`` with a
randomized exponential backoff (``jupyterhub.utils.exponential_backoff``: a try, then
sleeps drawn from 0-0.2 s, 0-0.4 s, 0-0.8 s, ... up to 0-5 s). A server that starts
listening 3.5 s after ``Popen`` is therefore seen by the hub anywhere from 3.5 s to about
7 s, at random: on this platform's spawns that wait was 0-4 s of every spawn-to-ready,
for nothing. So the spawner itself checks the server's port every 50 ms (a TCP connect,
which the server accepts only once its event loop runs and its routes are in place) and
returns when it answers: the hub's first try then succeeds at once.

The check gives up, and ``start()`` returns as before, when the process ends (the hub
reports the failure as it always does) or after ``Spawner.http_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Callable

from traitlets import Bool, Float
from traitlets.config import LoggingConfigurable


async def wait_listening(host: str, port: int, alive: Callable[[], bool], timeout: float,
                         interval: float = 0.05) -> bool:
    """Whether ``host:port`` accepted a TCP connection within ``timeout`` seconds, checked
    every ``interval`` while ``alive()`` says the server's process still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(interval)
            continue
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class ListeningStartMixin(LoggingConfigurable):
    """Goes in front of a ``LocalProcessSpawner``: ``start()`` returns once the server's
    port accepts connections (see the module's docstring)."""

    wait_until_listening = Bool(
        True,
        help="""Return from start() only once the new server accepts connections on its
        port (checked every `listening_interval` seconds), so that the hub's own readiness
        check, which backs off exponentially, succeeds at its first try. Off: start()
        returns as soon as the process runs, as JupyterHub's LocalProcessSpawner does.""",
    ).tag(config=True)

    listening_interval = Float(
        0.05,
        help="""Seconds between two checks of the new server's port while it starts.""",
    ).tag(config=True)

    async def start(self):
        result = await super().start()
        proc = getattr(self, "proc", None)
        if self.wait_until_listening and proc is not None and isinstance(result, tuple):
            host, port = result
            listening = await wait_listening(host, port, lambda: proc.poll() is None,
                                             self.http_timeout, self.listening_interval)
            if not listening:
                self.log.info("%s's server did not listen on %s:%s yet; the hub checks it",
                              self.user.name, host, port)
        return result
