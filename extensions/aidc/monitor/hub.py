"""The hub's own figures: users, active users, running servers and spawn durations, read
from JupyterHub's Prometheus endpoint (``/hub/api/metrics``, the same text as
``/hub/metrics``) with the metrics service's token, whose role holds ``read:metrics``.

JupyterHub already counts these (``jupyterhub_total_users``, ``jupyterhub_active_users``,
``jupyterhub_running_servers``, ``jupyterhub_server_spawn_duration_seconds``); reading its
text rather than the users API costs the hub one rendering of its registry, not a query
of every user, and the figures are the ones a site's Prometheus would see from the hub.
"""

from __future__ import annotations

import os
import re

from traitlets import Float, Unicode

from .reading import ServiceReader


def hub_figures(text: str, prefix: str = "jupyterhub") -> dict:
    """The hub's figures in its Prometheus ``text``: ``{"users", "running_servers",
    "active_users": {period: n}, "spawns": {status: {"count", "sum", "buckets": [[le, n], ...]}}}``
    (spawn reasons summed per status; buckets cumulative, as Prometheus keeps them, each
    bound as Prometheus writes it, ``"+Inf"`` the last, so that the snapshot stays JSON)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {"active_users": {}, "spawns": {}}
    spawn = f"{prefix}_server_spawn_duration_seconds"
    for family in text_string_to_metric_families(only_lines(text, (
            f"{prefix}_total_users", f"{prefix}_running_servers", f"{prefix}_active_users", spawn))):
        for s in family.samples:
            if s.name == f"{prefix}_total_users":
                out["users"] = s.value
            elif s.name == f"{prefix}_running_servers":
                out["running_servers"] = s.value
            elif s.name == f"{prefix}_active_users":
                out["active_users"][s.labels.get("period", "")] = s.value
            elif s.name.startswith(spawn):
                row = out["spawns"].setdefault(s.labels.get("status", ""), {"count": 0.0, "sum": 0.0, "buckets": {}})
                if s.name == f"{spawn}_count":
                    row["count"] += s.value
                elif s.name == f"{spawn}_sum":
                    row["sum"] += s.value
                elif s.name == f"{spawn}_bucket":
                    le = s.labels["le"]
                    row["buckets"][le] = row["buckets"].get(le, 0.0) + s.value
    for row in out["spawns"].values():
        row["buckets"] = [[le, n] for le, n in sorted(row["buckets"].items(), key=lambda b: float(b[0]))]
    return out


def only_lines(text: str, names: tuple[str, ...]) -> str:
    """The lines of Prometheus ``text`` about the metrics ``names`` (samples, ``# HELP``,
    ``# TYPE``), to parse only those: the hub's text is mostly request-duration histograms: the parser took 54 ms of CPU for
    125 kB of it, 7 ms for these lines (5 spawn reasons), so 0.14 % of a core at one read
    every 5 s."""
    pattern = re.compile(r"^(?:# (?:HELP|TYPE) )?(?:%s).*$" % "|".join(map(re.escape, names)), re.M)
    return "\n".join(pattern.findall(text)) + "\n"


class HubReader(ServiceReader):
    """Reads the hub's Prometheus text every :attr:`every` seconds (the collector asks)."""

    source = "the hub"

    url = Unicode(
        help="""The hub's Prometheus text (default: ``JUPYTERHUB_API_URL`` + ``/metrics``,
        which needs ``JupyterHub.authenticate_prometheus`` and the service token's
        ``read:metrics`` scope, both set by the platform).""",
    ).tag(config=True)

    every = Float(
        5.0, min=0.0,
        help="""Seconds between reads of the hub's figures (each renders the hub's whole
        Prometheus registry, a few ms of the hub's CPU); 0 turns them off.""",
    ).tag(config=True)

    prefix = Unicode(
        "jupyterhub",
        help="The hub's metric name prefix (JupyterHub's ``JUPYTERHUB_METRICS_PREFIX``).",
    ).tag(config=True)

    timeout = Float(5.0, help="Seconds a read of the hub's figures may take.").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.prefix = os.environ.get("JUPYTERHUB_METRICS_PREFIX", self.prefix)

    def default_url(self) -> str:
        api = os.environ.get("JUPYTERHUB_API_URL")
        return api.rstrip("/") + "/metrics" if api else ""

    def refusal_hint(self, status: int) -> str:
        return " (does the service token have read:metrics?)" if status == 403 else ""

    def read(self) -> dict:
        """The hub's figures now (:func:`hub_figures`); raises with a sentence when the hub
        does not answer or refuses."""
        return hub_figures(self.get(self.url).text, self.prefix)
