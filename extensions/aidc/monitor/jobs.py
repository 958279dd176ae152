"""The jobs service's figures for the monitor's history and Prometheus text: jobs in its
store by status, the GPUs running jobs hold, and how long the job queued longest has
waited, read from its own API (``api/summary``, ``api/stats``) through the platform's URL
with the metrics service's token, which the jobs service reads as a viewer's
(:data:`aidc.roles.VIEWING_SERVICES`).
"""

from __future__ import annotations

import os
import time

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable


class JobsReader(LoggingConfigurable):
    """Reads the jobs service every :attr:`every` seconds (the collector asks)."""

    url = Unicode(
        help="""The jobs service's API (default: ``AIDC_URL`` + ``/services/jobs/api``, the
        platform's URL the hub hands every service).""",
    ).tag(config=True)

    every = Float(
        5.0, min=0.0,
        help="""Seconds between reads of the jobs service's figures (two requests: its
        summary, one count by status, and its statistics over the last minute, a few
        indexed counts); 0 turns them off.""",
    ).tag(config=True)

    timeout = Float(5.0, help="Seconds a read of the jobs service's figures may take.").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.url and os.environ.get("AIDC_URL"):
            self.url = os.environ["AIDC_URL"].rstrip("/") + "/services/jobs/api"
        self._token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self._session = None

    @property
    def enabled(self) -> bool:
        return bool(self.every and self.url)

    def _get(self, path: str, **params) -> dict:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers["Authorization"] = f"token {self._token}"
        try:
            r = self._session.get(f"{self.url}/{path}", params=params, timeout=self.timeout)
        except requests.RequestException as e:
            raise OSError(f"the jobs service at {self.url} does not answer ({type(e).__name__})") from None
        if r.status_code != 200:
            raise OSError(f"the jobs service answered {r.status_code} for {path}")
        return r.json()

    def read(self) -> dict:
        """``{"counts": {status: n}, "running_gpus", "oldest_wait_seconds"}`` (0 when none waits)."""
        summary = self._get("summary")
        now = time.time()
        waiting = self._get("stats", start=f"{now - 60:.3f}", recent="0")["waiting_now"]
        return {"counts": summary["counts"], "running_gpus": summary["running_gpus"],
                "oldest_wait_seconds": waiting["max"] or 0.0}
