"""Each endpoint's requests, errors, latency and batch sizes over time, kept as history from
the models service's own Prometheus text (``/services/models/metrics``), read with the
metrics service's token (a viewer's to the models service,
:data:`aidc.roles.VIEWING_SERVICES`).

Requests, errors and the seconds they took are the models service's counters as they are;
latency (median and 99th percentile) and the median batch size are what the histograms
counted between two reads (their buckets' growth, as Prometheus' ``histogram_quantile``
over ``increase`` gives them), so a chart over a range shows how each endpoint answered
then, not since it started. A canary's split is the versions' requests side by side.

History only: a Prometheus server scrapes the models service itself, so the metrics
service does not export these a second time (a query summing both would count each
request twice); the history lets the dashboards draw them over a range.
"""

from __future__ import annotations

import os

from traitlets import Float, Unicode

from ..models.metrics import (ENDPOINT_REQUEST_DURATION, ENDPOINT_REQUEST_ERRORS, ENDPOINT_REQUESTS,
                              MODEL_BATCH_SIZE, histogram_quantile)
from .hub import only_lines
from .reading import ServiceReader


def endpoint_figures(text: str) -> dict:
    """``{(model, version): {"requests", "errors", "seconds", "latency": {le: n},
    "batches": {le: n}}}`` from the models service's text: requests summed over status
    codes; ``latency`` the request-duration histogram's cumulative buckets, ``batches`` the
    replicas' batch-size buckets summed over the replicas."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {}
    counters = {f"{ENDPOINT_REQUESTS.name}_total": "requests", f"{ENDPOINT_REQUEST_ERRORS.name}_total": "errors",
                f"{ENDPOINT_REQUEST_DURATION.name}_sum": "seconds"}
    buckets = {f"{ENDPOINT_REQUEST_DURATION.name}_bucket": "latency", f"{MODEL_BATCH_SIZE.name}_bucket": "batches"}
    wanted = (ENDPOINT_REQUESTS.name, ENDPOINT_REQUEST_ERRORS.name, ENDPOINT_REQUEST_DURATION.name,
              MODEL_BATCH_SIZE.name)
    for family in text_string_to_metric_families(only_lines(text, wanted)):
        for s in family.samples:
            if "model" not in s.labels or (s.name not in counters and s.name not in buckets):
                continue
            row = out.setdefault((s.labels["model"], s.labels.get("version", "")), {
                "requests": 0.0, "errors": 0.0, "seconds": 0.0, "latency": {}, "batches": {}})
            if s.name in counters:
                row[counters[s.name]] += s.value
            else:
                le = float(s.labels["le"])
                row[buckets[s.name]][le] = row[buckets[s.name]].get(le, 0.0) + s.value
    return out


def grown(now: dict[float, float], before: dict[float, float] | None) -> list[tuple[float, float]]:
    """The cumulative buckets of what a histogram counted since ``before`` (its buckets at
    the previous read; None: since it started). A histogram that counted less than before
    was restarted (its process, or a replica), and counts from zero, as Prometheus'
    ``increase`` takes it."""
    if before is None or sum(now.values()) < sum(before.values()) or any(
            now.get(le, 0.0) < n for le, n in before.items()):
        return sorted(now.items())
    return sorted((le, n - before.get(le, 0.0)) for le, n in now.items())


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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._before: dict = {}  # (model, version) -> the histograms' buckets at the last read

    def read(self) -> dict:
        """``{"endpoints": [{"model", "version", "requests", "errors", "seconds",
        "latency_p50_seconds", "latency_p99_seconds", "batch_size_p50"}]}`` (JSON for the
        snapshot; a quantile is None when nothing was counted since the last read)."""
        figures = endpoint_figures(self.get(self.url).text)
        found = []
        for (model, version), f in sorted(figures.items()):
            before = self._before.get((model, version), {})
            latency = grown(f["latency"], before.get("latency"))
            batches = grown(f["batches"], before.get("batches"))
            found.append({"model": model, "version": version, "requests": f["requests"],
                          "errors": f["errors"], "seconds": f["seconds"],
                          "latency_p50_seconds": histogram_quantile(latency, 0.5),
                          "latency_p99_seconds": histogram_quantile(latency, 0.99),
                          "batch_size_p50": histogram_quantile(batches, 0.5)})
        self._before = {key: {"latency": f["latency"], "batches": f["batches"]} for key, f in figures.items()}
        return {"endpoints": found}
