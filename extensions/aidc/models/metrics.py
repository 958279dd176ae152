"""The Prometheus metrics of model serving, declared once, exposed by ``prometheus_client``.

Two sources fill them: each replica (:mod:`aidc.models.dataplane`, ``GET /metrics`` on its
socket) and the models service (:mod:`aidc.models.endpoint_metrics`, which also federates
the replicas' metrics under ``/services/models/metrics``). The counts themselves are kept
by the code that measures them (one event loop or one batch thread, without locks, on
the inference path); a scrape turns them into metric families here, so every name, help
text and label set is written in one place, and the text is ``prometheus_client``'s.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

#: the text format every name here fits (no UTF-8 names)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class Declared(NamedTuple):
    """A metric's name (without ``_total`` for counters), kind, help and labels."""

    name: str
    kind: str  # counter, gauge, histogram
    help: str
    labels: tuple[str, ...]

    def family(self) -> Metric:
        kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                 "histogram": HistogramMetricFamily}
        return kinds[self.kind](self.name, self.help, labels=self.labels)


_MODEL = ("model", "version")

# -- a replica (one model version) ---------------------------------------------------------
MODEL_READY = Declared("aidc_model_ready", "gauge",
                       "1 when the model is loaded, warm and not stopping.", _MODEL)
MODEL_REQUESTS = Declared("aidc_model_requests", "counter",
                          "HTTP requests answered, by endpoint and status code.",
                          (*_MODEL, "endpoint", "code"))
MODEL_REQUEST_ERRORS = Declared("aidc_model_request_errors", "counter",
                                "HTTP requests answered with an error (4xx/5xx), by endpoint.",
                                (*_MODEL, "endpoint"))
MODEL_REQUEST_DURATION = Declared("aidc_model_request_duration_seconds", "histogram",
                                  "Time from the request's headers to its response, by endpoint.",
                                  (*_MODEL, "endpoint"))
MODEL_INFLIGHT = Declared("aidc_model_inflight_requests", "gauge",
                          "Requests being read, queued, run or answered.", _MODEL)
MODEL_QUEUED = Declared("aidc_model_queued_requests", "gauge", "Requests waiting for a batch.", _MODEL)
MODEL_BATCH_SIZE = Declared("aidc_model_batch_size", "histogram", "Rows (dim 0) per model run.", _MODEL)
MODEL_BATCH_REQUESTS = Declared("aidc_model_batch_requests", "histogram", "Requests per model run.",
                                _MODEL)
MODEL_QUEUE_DELAY = Declared("aidc_model_queue_delay_seconds", "histogram",
                             "Time a request waited for its batch to start.", _MODEL)
MODEL_COMPUTE = Declared("aidc_model_compute_seconds", "histogram",
                         "Time per model run (inputs, predict, outputs).", _MODEL)
MODEL_ROWS = Declared("aidc_model_inference_rows", "counter", "Rows run through the model.", _MODEL)
MODEL_EXECUTIONS = Declared("aidc_model_executions", "counter", "Model runs (batches).", _MODEL)

# -- the models service (what callers saw) -------------------------------------------------
ENDPOINT_REQUESTS = Declared(
    "aidc_endpoint_requests", "counter",
    "Inference requests the models service answered, by model, version and status code.",
    (*_MODEL, "code"))
ENDPOINT_REQUEST_ERRORS = Declared(
    "aidc_endpoint_request_errors", "counter",
    "Inference requests answered with an error (4xx/5xx), by model and version.", _MODEL)
ENDPOINT_REQUEST_DURATION = Declared(
    "aidc_endpoint_request_duration_seconds", "histogram",
    "Time from a request reaching the models service to its answer, by model and version.", _MODEL)


def add_histogram(family: Metric, labels: Iterable[str], hist) -> None:
    """Add one labelled :class:`aidc.models.batching.Histogram` to a histogram family."""
    buckets = [("+Inf" if bound == float("inf") else repr(float(bound)), n)
               for bound, n in hist.buckets()]
    family.add_metric(list(labels), buckets, hist.sum)


def exposition(families: Iterable[Metric]) -> bytes:
    """``families`` in the Prometheus text format, as ``prometheus_client`` writes it."""
    collected = list(families)

    class _Scrape:
        def collect(self):
            return collected

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape())
    return generate_latest(registry)


def federated(replicas: Iterable[tuple[dict[str, str], str]]) -> list[Metric]:
    """Several replicas' metrics as one family each, every sample with its replica's labels.

    Concatenating the texts would repeat each family's HELP and TYPE lines, which
    Prometheus rejects; samples of one family must also stay together.
    """
    families: dict[str, Metric] = {}
    for extra, text in replicas:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue  # a replica that answered garbage (dying): skip it for this scrape
        for fam in parsed:
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for s in fam.samples:
                merged.add_sample(s.name, {**s.labels, **extra}, s.value)
    return list(families.values())


def histogram_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a histogram from its cumulative ``(upper bound, count)``
    buckets, interpolated inside a bucket as Prometheus' ``histogram_quantile`` does (one
    beyond the last finite bound is that bound), so the Lab panel's figure and the
    dashboards' agree; None when the histogram counted nothing."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            width = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width if width else 1.0)
        prev_bound, prev_count = bound, count
    return prev_bound
