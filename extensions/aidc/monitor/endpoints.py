"""Each endpoint's requests and errors over time, kept as history from the models service's
own Prometheus text (``/services/models/metrics``), read with the metrics service's token
(a viewer's to the models service, :data:`aidc.roles.VIEWING_SERVICES`).

History only: a Prometheus server scrapes the models service itself, so the metrics
service does not export these a second time (a query summing both would count each
request twice); the history lets the dashboards draw requests per second over a range.
"""

from __future__ import annotations

import os

from traitlets import Float, Unicode

from ..models.metrics import ENDPOINT_REQUEST_ERRORS, ENDPOINT_REQUESTS
from .hub import only_lines
from .reading import ServiceReader


def endpoint_figures(text: str) -> dict:
    """``{(model, version): {"requests": n, "errors": n}}`` from the models service's text
    (requests summed over status codes)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {}
    names = {f"{ENDPOINT_REQUESTS.name}_total": "requests", f"{ENDPOINT_REQUEST_ERRORS.name}_total": "errors"}
    for family in text_string_to_metric_families(only_lines(text, (ENDPOINT_REQUESTS.name,
                                                                   ENDPOINT_REQUEST_ERRORS.name))):
        for s in family.samples:
            if s.name in names and "model" in s.labels:
                row = out.setdefault((s.labels["model"], s.labels.get("version", "")), {"requests": 0.0, "errors": 0.0})
                row[names[s.name]] += s.value
    return out


class EndpointsReader(ServiceReader):
    """Reads the models service's metrics every :attr:`every` seconds (the collector asks)."""

    source = "the models service"

    url = Unicode(
        help="""The models service's Prometheus text (default: ``AIDC_URL`` +
        ``/services/models/metrics``).""",
    ).tag(config=True)

    every = Float(
        15.0, min=0.0,
        help="""Seconds between reads of the models service's metrics (each asks every
        replica for its figures); 0 turns them off.""",
    ).tag(config=True)

    timeout = Float(5.0, help="Seconds a read of the models service's metrics may take.").tag(config=True)

    def default_url(self) -> str:
        base = os.environ.get("AIDC_URL")
        return base.rstrip("/") + "/services/models/metrics" if base else ""

    def read(self) -> dict:
        """``{"endpoints": [{"model", "version", "requests", "errors"}]}`` (JSON for the snapshot)."""
        text = self.get(self.url).text
        return {"endpoints": [{"model": m, "version": v, **f} for (m, v), f in sorted(endpoint_figures(text).items())]}
