"""Per-endpoint metrics of the models service, in Prometheus text format.

Two views, one scrape (``GET /services/models/metrics``):

* what callers saw, measured for every v2 inference request by the inference router
  (:mod:`aidc.models.router`, which writes its counts to a file the service reads:
  :meth:`EndpointMetrics.snapshot`, :meth:`EndpointMetrics.add`) and by the service for
  the requests it routes itself:
  ``aidc_endpoint_requests_total{model,version,code}``,
  ``aidc_endpoint_request_errors_total{model,version}`` and the latency histogram
  ``aidc_endpoint_request_duration_seconds{model,version}`` (routing, queueing,
  batching and the model run, everything but the hub's proxy);
* what each replica did, federated from the replicas' own ``/metrics`` with a
  ``replica`` label added: batch sizes, queue delay, compute time, readiness, in-flight
  requests (see :mod:`aidc.models.server`).

The monitoring dashboards read this one endpoint: the replicas themselves listen only on
private Unix sockets, which only the service may open.
"""

from __future__ import annotations

from . import metrics
from .batching import LATENCY_BUCKETS, Histogram
from .metrics import CONTENT_TYPE  # noqa: F401 - what the service answers with


class EndpointMetrics:
    """Counts and times inference requests (the router's, and those the service routes
    itself); one event loop, no locks."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}

    def record(self, model: str, version: str, code: int, seconds: float) -> None:
        key = (model, version, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get((model, version))
        if hist is None:
            hist = self.latency[(model, version)] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def snapshot(self) -> dict:
        """The counts as JSON data (what the inference router writes for the service)."""
        return {"requests": [[m, v, c, n] for (m, v, c), n in sorted(self.requests.items())],
                "latency": [[m, v, h.counts, h.sum] for (m, v), h in sorted(self.latency.items())]}

    def add(self, snapshot: dict | None) -> EndpointMetrics:
        """These counts plus a :meth:`snapshot`'s, as a new object (this one is unchanged)."""
        out = EndpointMetrics()
        out.requests = dict(self.requests)
        for key, hist in self.latency.items():
            copy = out.latency[key] = Histogram(hist.bounds)
            copy.counts, copy.sum, copy.count = list(hist.counts), hist.sum, hist.count
        for m, v, c, n in (snapshot or {}).get("requests", ()):
            out.requests[(m, v, c)] = out.requests.get((m, v, c), 0) + n
        for m, v, counts, total in (snapshot or {}).get("latency", ()):
            hist = out.latency.get((m, v))
            if hist is None:
                hist = out.latency[(m, v)] = Histogram(LATENCY_BUCKETS)
            if len(counts) != len(hist.counts):
                continue  # another release's buckets: skipped rather than misread
            hist.counts = [a + b for a, b in zip(hist.counts, counts)]
            hist.sum += total
            hist.count += sum(counts)
        return out

    def summary(self, model: str) -> dict:
        """Requests, errors and mean, p50 and p99 latency per version of ``model`` (for the
        deployment API, which the Lab panel shows live)."""
        out: dict[str, dict] = {}
        for (m, version, code), n in self.requests.items():
            if m == model:
                entry = out.setdefault(version, {"requests": 0, "errors": 0})
                entry["requests"] += n
                if code >= 400:
                    entry["errors"] += n
        for (m, version), hist in self.latency.items():
            if m == model and version in out and hist.count:
                out[version]["mean_latency_ms"] = round(hist.sum / hist.count * 1000, 3)
                for name, q in (("p50_latency_ms", 0.5), ("p99_latency_ms", 0.99)):
                    out[version][name] = round(metrics.histogram_quantile(hist.buckets(), q) * 1000, 3)
        return out

    def render(self, replicas: list[tuple[dict[str, str], str]] = ()) -> bytes:
        """The service's metrics plus ``replicas``: (extra labels, that replica's metrics text)."""
        requests = metrics.ENDPOINT_REQUESTS.family()
        errors = metrics.ENDPOINT_REQUEST_ERRORS.family()
        latency = metrics.ENDPOINT_REQUEST_DURATION.family()
        failed: dict[tuple[str, str], int] = {}
        for (model, version, code), n in sorted(self.requests.items()):
            requests.add_metric([model, version, str(code)], n)
            if code >= 400:
                failed[(model, version)] = failed.get((model, version), 0) + n
        for (model, version), n in sorted(failed.items()):
            errors.add_metric([model, version], n)
        for (model, version), hist in sorted(self.latency.items()):
            metrics.add_histogram(latency, [model, version], hist)
        return metrics.exposition([requests, errors, latency, *metrics.federated(replicas)])
