"""Prometheus text for ``/services/metrics/metrics``, written by ``prometheus_client``.

A custom collector turns the collector's latest snapshot into metric families at each
scrape (names ``aidc_<name>`` from :mod:`.catalog`, with their help text and dcgm-exporter
equivalents); nothing is kept between scrapes. ``aidc_gpu_info`` names each GPU and says
whether it is simulated; ``aidc_hub_spawn_duration_seconds`` is the hub's spawn histogram
with the hub's own buckets.
"""

from __future__ import annotations

from .catalog import METRICS
from .collect import rows_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotCollector:
    """A ``prometheus_client`` collector over ``latest()`` (a snapshot or None)."""

    def __init__(self, latest):
        self.latest = latest

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snapshot = self.latest()
        if snapshot is None:
            return
        info = GaugeMetricFamily("aidc_gpu_info", "One per GPU: its name, and whether it is simulated "
                                 "(figures of a simulated GPU are not measured).",
                                 labels=["gpu", "uuid", "name", "simulated"])
        for g in snapshot["gpus"]:
            info.add_metric([g["gpu"], g["uuid"], g["name"], str(g["simulated"]).lower()], 1.0)
        yield info
        families = {}
        for metric, labels, value in rows_of(snapshot, latest_users=True):
            m = METRICS[metric]
            if not m.exported:
                continue
            if metric not in families:
                kind = CounterMetricFamily if m.type == "counter" else GaugeMetricFamily
                families[metric] = kind(f"aidc_{metric}", m.help, labels=list(m.labels))
            families[metric].add_metric([str(labels[k]) for k in m.labels], value)
        yield from families.values()
        spawns = (snapshot.get("hub") or {}).get("spawns")
        if spawns:  # the hub's histogram with its own buckets
            m = METRICS["hub_spawn_duration_seconds"]
            histogram = HistogramMetricFamily(f"aidc_{m.name}", m.help, labels=list(m.labels))
            for status, row in sorted(spawns.items()):
                histogram.add_metric([status], [(le, n) for le, n in row["buckets"]], row["sum"])
            yield histogram


def prometheus_text(latest) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(latest))
    return generate_latest(registry)
