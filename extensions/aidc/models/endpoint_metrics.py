"""Per-endpoint metrics of the models service, in Prometheus text format.

Two views, one scrape (``GET /services/models/metrics``):

* what callers saw, measured by the service for every v2 inference request it routed:
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

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from .batching import LATENCY_BUCKETS, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EndpointMetrics:
    """Counts and times the inference requests the service routes; one event loop, no locks."""

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

    def summary(self, model: str) -> dict:
        """Requests, errors and mean latency per version of ``model`` (for the deployment API)."""
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
        return out

    def render(self, replicas: list[tuple[dict[str, str], str]] = ()) -> str:
        """The service's metrics plus ``replicas``: (extra labels, that replica's metrics text)."""
        lines: list[str] = []

        def head(metric: str, kind: str, help_: str) -> None:
            lines.append(f"# HELP {metric} {help_}")
            lines.append(f"# TYPE {metric} {kind}")

        head("aidc_endpoint_requests_total", "counter",
             "Inference requests the models service answered, by model, version and status code.")
        for (model, version, code), n in sorted(self.requests.items()):
            lines.append(f"aidc_endpoint_requests_total{{{_labels(model=model, version=version, code=str(code))}}} {n}")
        head("aidc_endpoint_request_errors_total", "counter",
             "Inference requests answered with an error (4xx/5xx), by model and version.")
        errors: dict[tuple[str, str], int] = {}
        for (model, version, code), n in self.requests.items():
            if code >= 400:
                errors[(model, version)] = errors.get((model, version), 0) + n
        for (model, version), n in sorted(errors.items()):
            lines.append(f"aidc_endpoint_request_errors_total{{{_labels(model=model, version=version)}}} {n}")
        head("aidc_endpoint_request_duration_seconds", "histogram",
             "Time from a request reaching the models service to its answer, by model and version.")
        for (model, version), hist in sorted(self.latency.items()):
            labels = _labels(model=model, version=version)
            for bound, n in hist.buckets():
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                lines.append(f'aidc_endpoint_request_duration_seconds_bucket{{{labels},le="{le}"}} {n}')
            lines.append(f"aidc_endpoint_request_duration_seconds_sum{{{labels}}} {hist.sum!r}")
            lines.append(f"aidc_endpoint_request_duration_seconds_count{{{labels}}} {hist.count}")
        lines.extend(federate(replicas))
        return "\n".join(lines) + "\n"


def federate(replicas: list[tuple[dict[str, str], str]]) -> list[str]:
    """Merge several replicas' metrics into one family each, every sample with its replica's labels.

    Concatenating the texts would repeat each family's HELP and TYPE lines, which
    Prometheus rejects; samples of one family must also stay together.
    """
    families: dict[str, tuple[str, str, list[Sample]]] = {}
    for extra, text in replicas:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue  # a replica that answered garbage (dying): skip it for this scrape
        for fam in parsed:
            _, _, samples = families.setdefault(fam.name, (fam.type, fam.documentation, []))
            samples.extend(Sample(s.name, {**s.labels, **extra}, s.value) for s in fam.samples)
    lines: list[str] = []
    for name, (kind, doc, samples) in families.items():
        exposed = f"{name}_total" if kind == "counter" else name
        lines.append(f"# HELP {exposed} {doc}")
        lines.append(f"# TYPE {exposed} {kind}")
        for s in samples:
            lines.append(f"{s.name}{{{_labels(**s.labels)}}} {_number(s.value)}")
    return lines


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
