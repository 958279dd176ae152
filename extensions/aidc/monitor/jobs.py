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

from .reading import ServiceReader


class JobsReader(ServiceReader):
    """Reads the jobs service every :attr:`every` seconds (the collector asks)."""

    source = "the jobs service"

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

    def default_url(self) -> str:
        base = os.environ.get("AIDC_URL")
        return base.rstrip("/") + "/services/jobs/api" if base else ""

    def _get(self, path: str, **params) -> dict:
        return self.get(f"{self.url}/{path}", **params).json()

    def read(self) -> dict:
        """``{"counts": {status: n}, "running_gpus", "oldest_wait_seconds"}`` (0 when none waits)."""
        summary = self._get("summary")
        now = time.time()
        waiting = self._get("stats", start=f"{now - 60:.3f}", recent="0")["waiting_now"]
        return {"counts": summary["counts"], "running_gpus": summary["running_gpus"],
                "oldest_wait_seconds": waiting["max"] or 0.0}
