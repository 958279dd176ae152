"""A widget's live refresh: a daemon thread that calls the widget's ``tick`` every interval.

The thread does the waiting and the HTTP calls, so a refreshing widget never holds the
kernel: cells run while it ticks, and its values change even while a long cell runs (a
GPU gauge next to a training loop). ipywidgets' messages go out on the kernel's IOPub
socket, which accepts them from any thread. :meth:`Refresher.stop` ends the thread at
its next wait: a closed widget makes no more calls.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Refresher:
    """Runs ``tick()`` now and then every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, tick: Callable[[], None], interval: float, name: str = "aidc-widget"):
        if interval <= 0:
            raise ValueError("a refresh interval must be more than 0 seconds")
        self.tick = tick
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Refresher:
        self._thread.start()
        return self

    def stop(self, wait: float | None = None) -> None:
        """No tick starts after this; with ``wait``, also wait that long for a running one."""
        self._stopped.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(wait)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    @property
    def alive(self) -> bool:
        """Whether the thread still exists (a tick in progress finishes after :meth:`stop`)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.tick()
            except Exception:  # the widget shows its own errors; a bug must not end the refresh
                log.exception("aidc widget refresh")
            if self._stopped.wait(self.interval):
                return
