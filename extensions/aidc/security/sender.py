"""How a platform service's audit events reach the hub's writer.

A service calls :func:`aidc.security.audit.record` like the hub does; in a service process
that hands the event to :func:`hub_sender`, a background thread that posts what is waiting to
``POST <hub>/hub/api/aidc/audit`` (:mod:`aidc.hub.audit_api`) with the service's own token.
The caller never waits for the hub: an audit event must not slow a job submission or an
inference. While the hub is away (a restart) events wait in memory and are sent when it
answers again; at exit the thread is given a few seconds to send what is left.

Users' own servers, which hold no service token, report the requests they refused the same
way to ``POST <hub>/hub/api/aidc/audit/refusals`` (:func:`refusal_sender`), where the hub
checks each one before it records it (:class:`aidc.hub.audit_api.ServerRefusalsHandler`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("aidc.audit")

#: events kept while the hub does not answer; past that the oldest are dropped, loudly
MAX_PENDING = 10_000
BATCH = 200


class HubSender:
    """A queue of ``(kind, data)`` and the thread that posts it to the hub."""

    def __init__(self, api_url: str, token: str, path: str = "aidc/audit"):
        self.url = api_url.rstrip("/") + "/" + path
        self.token = token
        self.pending: deque[dict[str, Any]] = deque()
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="aidc-audit-sender", daemon=True)
        self.thread.start()
        atexit.register(self.flush, 5.0)

    def send(self, kind: str, data: dict[str, Any], **extra: Any) -> None:
        """Queue one event (``extra``: more fields of the event beside ``kind`` and ``data``)."""
        with self.wake:
            if len(self.pending) >= MAX_PENDING:
                dropped = self.pending.popleft()
                log.error("audit: the hub has not taken events for a while; dropped %s", dropped["data"])
            self.pending.append({"kind": kind, "data": data, **extra})
            self.wake.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until every event was taken by the hub (or ``timeout``); True when all were."""
        deadline = time.monotonic() + timeout
        with self.wake:
            while self.pending and time.monotonic() < deadline:
                self.wake.notify()
                self.wake.wait(0.05)
            return not self.pending

    def _run(self) -> None:
        import requests

        from . import internal_tls

        session = internal_tls.mount(requests.Session())  # the hub's API under internal TLS
        session.headers["Authorization"] = f"token {self.token}"
        backoff = 0.5
        while True:
            with self.wake:
                while not self.pending:
                    self.wake.wait()
                batch = [self.pending[i] for i in range(min(BATCH, len(self.pending)))]
            try:
                r = session.post(self.url, json={"events": batch}, timeout=30)
            except requests.RequestException as e:
                log.warning("audit: the hub did not take %d event(s) (%s); trying again", len(batch), e)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            if r.status_code in (502, 503, 504):
                time.sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            backoff = 0.5
            if r.status_code != 201:  # a refused batch is a bug in the service: say so, go on
                log.error("audit: the hub refused %d event(s): %s %s", len(batch), r.status_code, r.text[:500])
            with self.wake:
                for _ in batch:
                    self.pending.popleft()
                self.wake.notify_all()


_sender: HubSender | None = None
_lock = threading.Lock()


def hub_sender() -> HubSender:
    """This process's sender (made on first use, from the service's hub environment)."""
    global _sender
    with _lock:
        if _sender is None:
            _sender = HubSender(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
        return _sender


_refusals: HubSender | None = None


def refusal_sender(api_url: str, token: str) -> HubSender:
    """A user server's sender of the requests it refused (made on first use, with the
    server's own hub token: JupyterHub's ``HubAuth`` of the server)."""
    global _refusals
    with _lock:
        if _refusals is None:
            _refusals = HubSender(api_url, token, path="aidc/audit/refusals")
        return _refusals
