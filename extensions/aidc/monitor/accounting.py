"""GPU-hours and job-hours per user and per group, from the ledger's holdings, with costs.

Accounting is not sampled: each holding has the exact times the ledger granted and
released it (:meth:`aidc.gpu.ledger.GPULedger.holdings`), and a range counts the part of
each holding inside it, so a holding that a range cuts in half counts half. GPU-hours
are per unit kind (whole GPU, MIG instance, time-sliced share: an hour of each is an hour
of that unit); job-hours are the hours jobs held their claims. A cost rate per GPU kind
turns GPU-hours into money.

The ledger keeps every ended holding (``gpu_claim_history``); :meth:`Accounting.prune`
deletes those ended longer ago than ``Accounting.keep_ended_seconds``, so that table is
bounded like the monitor's own history. The metrics service's collector calls it with
its downsampling pass.
"""

from __future__ import annotations

import csv
import io

from traitlets import Dict, Float, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import UsageError
from ..gpu.inventory import MIG, SHARE, WHOLE

KINDS = (WHOLE, MIG, SHARE)
CSV_BY = ("user", "group")


class Accounting(LoggingConfigurable):
    """Turns holdings into usage rows (see :meth:`usage`)."""

    cost_rates = Dict(
        {},
        help="""Money per GPU-hour, by GPU kind: a unit's name as the inventory reports it
        (`"NVIDIA H100 80GB HBM3"`, `"MIG 3g.20gb"`), else its unit kind (`"whole"`,
        `"mig"`, `"share"`), else `"default"`; a unit matching none costs nothing, e.g.
        `{"NVIDIA H100 80GB HBM3": 2.5, "mig": 0.4, "default": 1.0}`.""",
    ).tag(config=True)

    currency = Unicode("EUR", help="Currency of `cost_rates`, shown with every cost.").tag(config=True)

    keep_ended_seconds = Float(
        400 * 86400, min=3600,
        help="""How long an ended GPU holding stays in the ledger's history
        (`gpu_claim_history`), which accounting reads. Older ones are deleted once a
        minute by the metrics service, so the table stays bounded; an accounting range
        reaching further back counts only what is kept (its answer's `kept_from`).
        Default 400 days: a year's range, as the monitor's coarsest tier keeps, and
        some.""",
    ).tag(config=True)

    def prune(self, ledger, now: float) -> int:
        """Delete the ledger's ended holdings released before ``now - keep_ended_seconds``;
        returns how many went. Current holdings are never touched."""
        gone = ledger.forget_ended(now - self.keep_ended_seconds)
        if gone:
            self.log.info("aidc accounting: %d ended GPU holdings older than %g days deleted",
                          gone, self.keep_ended_seconds / 86400)
        return gone

    def rate(self, unit_name: str | None, kind: str) -> float:
        for key in (unit_name, kind, "default"):
            if key is not None and key in self.cost_rates:
                return float(self.cost_rates[key])
        return 0.0

    def usage(self, holdings: list[dict], start: float, end: float, now: float) -> dict:
        """Totals, and rows per user and per group, for ``[start, end)`` (epoch seconds).

        A holding still held counts until ``now`` (or ``end``, if earlier).
        """
        if end <= start:
            raise UsageError(f"the range is empty or inverted: end ({end:g}) must be after start ({start:g})")
        total = _row("total", "all")
        users: dict[str, dict] = {}
        groups: dict[str, dict] = {}
        for h in holdings:
            released = h["released"] if h["released"] is not None else now
            seconds = min(end, released) - max(start, h["granted"])
            if seconds <= 0:
                continue
            gpu_hours = h["count"] * seconds / 3600
            units = h["units"] or []
            if units:
                cost = sum(self.rate(u.get("name"), h["kind"]) for u in units) * seconds / 3600
            else:
                cost = self.rate(None, h["kind"]) * gpu_hours
            job_hours = seconds / 3600 if h["holder_kind"] == "job" else 0.0
            rows = [total, users.setdefault(h["owner"], _row("user", h["owner"]))]
            rows += [groups.setdefault(g, _row("group", g)) for g in h["groups"]]
            for row in rows:
                row["gpu_hours"][h["kind"]] = row["gpu_hours"].get(h["kind"], 0.0) + gpu_hours
                row["gpu_hours_total"] += gpu_hours
                row["job_hours"] += job_hours
                row["cost"] += cost
        return {"start": start, "end": end, "currency": self.currency, "total": total,
                "kept_from": now - self.keep_ended_seconds,
                "users": sorted(users.values(), key=lambda r: r["name"]),
                "groups": sorted(groups.values(), key=lambda r: r["name"])}

    def to_csv(self, usage: dict, by: str) -> str:
        """``usage``'s rows per ``by`` ("user" or "group") and the total, as CSV."""
        if by not in CSV_BY:
            raise UsageError(f"by must be one of {', '.join(CSV_BY)}, not {by!r}")
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow([by, *(f"gpu_hours_{k}" for k in KINDS), "gpu_hours", "job_hours",
                    f"cost_{usage['currency']}"])
        for row in [*usage[f"{by}s"], usage["total"]]:
            w.writerow([row["name"] if row["scope"] != "total" else "(total)",
                        *(f"{row['gpu_hours'].get(k, 0.0):.6f}" for k in KINDS),
                        f"{row['gpu_hours_total']:.6f}", f"{row['job_hours']:.6f}", f"{row['cost']:.2f}"])
        return out.getvalue()


def _row(scope: str, name: str) -> dict:
    return {"scope": scope, "name": name, "gpu_hours": {k: 0.0 for k in KINDS},
            "gpu_hours_total": 0.0, "job_hours": 0.0, "cost": 0.0}
