"""What a dashboard kernel reads, and how much of it the viewing user may see.

A kernel reads the metrics, jobs and models services through the platform's public URL
with the dashboards service's own token (``JUPYTERHUB_API_TOKEN``, inherited from the
Voila process): the platform's services read that token as a viewer's
(:data:`aidc.roles.VIEWING_SERVICES`), so it sees platform figures and changes nothing.
Per-user figures are then narrowed here to the role of the person looking
(:class:`Viewer`, named by :mod:`aidc.dashboards.auth`), with the metrics service's own
rule: admins and viewers see everyone, anyone else their own rows only.

A service that does not answer is a :class:`SourceDown` with a sentence for the page.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

from .. import roles
from ..errors import AidcError
from .auth import VIEWER_ENV

#: how long a read may take before the section says the service does not answer
TIMEOUT = 15.0


class SourceDown(AidcError):
    """A service a dashboard reads did not answer usefully; the page shows the message."""


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the page: their name, aidc role and groups."""

    name: str | None
    role: str | None
    groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def sees_everyone(self) -> bool:
        return self.role in (roles.ADMIN, roles.VIEWER)

    @classmethod
    def current(cls) -> Viewer:
        """The viewer of this kernel's page. A preheated kernel first waits for the page
        request (Voila sends its headers when the page is opened)."""
        from voila.utils import wait_for_request

        wait_for_request()
        raw = os.environ.get(VIEWER_ENV)
        if not raw:
            return cls(None, None)
        data = json.loads(raw)
        return cls(data.get("name"), data.get("role"), tuple(data.get("groups") or ()))


class Sources:
    """HTTP reads of the platform services with the dashboards' token."""

    def __init__(self, base_url: str | None = None, token: str | None = None):
        self.base_url = (base_url or os.environ.get("AIDC_URL", "http://127.0.0.1:8000")).rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token or os.environ.get('JUPYTERHUB_API_TOKEN', '')}"

    def url(self, service: str, path: str) -> str:
        return f"{self.base_url}/services/{service}/{path.lstrip('/')}"

    def get(self, service: str, path: str, **params) -> requests.Response:
        try:
            r = self.session.get(self.url(service, path), params=params, timeout=TIMEOUT)
        except requests.RequestException as e:
            raise SourceDown(f"the {service} service does not answer ({type(e).__name__})") from None
        if r.status_code >= 400:
            try:
                why = r.json().get("message", "")
            except ValueError:
                why = ""
            raise SourceDown(f"the {service} service answered {r.status_code}" + (f": {why}" if why else ""))
        return r

    def json(self, service: str, path: str, **params) -> dict:
        r = self.get(service, path, **params)
        try:
            return r.json()
        except ValueError:
            raise SourceDown(f"the {service} service did not answer with JSON (is it starting?)") from None

    # -- the metrics service ------------------------------------------------------------
    def current(self, viewer: Viewer) -> dict:
        return visible_snapshot(self.json("metrics", "api/current"), viewer)

    def history(self, metric: str, start: float, end: float, **labels) -> dict:
        return self.json("metrics", "api/history", metric=metric, start=f"{start:.3f}",
                         end=f"{end:.3f}", **labels)

    def accounting(self, viewer: Viewer, start: float, end: float) -> dict:
        usage = self.json("metrics", "api/accounting", start=f"{start:.3f}", end=f"{end:.3f}")
        return visible_usage(usage, viewer)

    # -- the jobs and models services ---------------------------------------------------
    def jobs_summary(self) -> dict:
        return self.json("jobs", "api/summary")

    def jobs_stats(self, viewer: Viewer, start: float, end: float, recent: int = 20) -> dict:
        """What jobs did in the range (``api/stats``), recent jobs as ``viewer`` may list them."""
        stats = self.json("jobs", "api/stats", start=f"{start:.3f}", end=f"{end:.3f}", recent=str(recent))
        return visible_stats(stats, viewer)

    def gpu_queue(self, viewer: Viewer) -> list[dict]:
        """Who waits for GPUs (the metrics service's ``api/queue``), as ``viewer`` may see it."""
        return visible_queue(self.json("metrics", "api/queue").get("queue", []), viewer)

    def models(self) -> list[dict]:
        return self.json("models", "api/models").get("models", [])

    def endpoint_metrics(self) -> dict:
        """The models service's per-endpoint Prometheus figures, as
        ``{(metric name, labels as sorted tuple): value}``."""
        text = self.get("models", "metrics").text
        figures = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                figures[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return figures


def visible_snapshot(snapshot: dict, viewer: Viewer) -> dict:
    """``snapshot`` (``api/current``) as ``viewer`` may see it: other users' processes
    anonymous and their holdings left out, unless the viewer sees everyone."""
    if viewer.sees_everyone:
        return snapshot
    anonymous = {"pid": None, "account": None, "user": None, "holder": None}
    gpus = [{**g, "processes": [p if p.get("user") == viewer.name else {**p, **anonymous}
                                for p in g.get("processes", [])],
             "holders": [h for h in g.get("holders", []) if h.get("owner") == viewer.name],
             "held": bool(g.get("holders"))} for g in snapshot.get("gpus", [])]
    users = {u: v for u, v in (snapshot.get("users") or {}).items() if u == viewer.name}
    return {**snapshot, "gpus": gpus, "users": users}


def visible_usage(usage: dict, viewer: Viewer) -> dict:
    """Accounting rows as ``viewer`` may see them: everyone's, or their own user row and
    the rows of their own groups."""
    if viewer.sees_everyone:
        return usage
    mine = set(viewer.groups)
    return {**usage, "users": [r for r in usage.get("users", []) if r["name"] == viewer.name],
            "groups": [r for r in usage.get("groups", []) if r["name"] in mine]}


def visible_stats(stats: dict, viewer: Viewer) -> dict:
    """Job statistics as ``viewer`` may see them: the aggregates, and of the recent jobs
    everyone's or their own only."""
    if viewer.sees_everyone:
        return stats
    return {**stats, "recent": [j for j in stats.get("recent", []) if j.get("owner") == viewer.name]}


def visible_queue(queue: list[dict], viewer: Viewer) -> list[dict]:
    """The GPU queue as ``viewer`` may see it: other users' places without whose they are."""
    if viewer.sees_everyone:
        return queue
    return [w if w.get("owner") == viewer.name else {**w, "owner": None, "holder": None} for w in queue]

