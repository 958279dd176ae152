"""A bounded time-series store in the platform database, with downsampling tiers.

Samples go into tier 0 at the collector's interval; each later tier keeps one point per
bucket of its step (the mean of the tier before it; the last value for counters), and
every tier keeps its points for its retention only, so the store is bounded whatever the
uptime: by default 1 s for an hour, 1 min for 30 days, 1 h for a year. A read asks for a
time range and a step and is answered from the finest tier that reaches back far enough.

One table, ``monitor_samples`` (tier, metric, labels as canonical JSON, time, value), in
the platform database (:meth:`aidc.paths.DataDir.db_url`; ``monitor.sqlite`` in the data
directory without a database server), migrated by alembic with its own version table.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import sqlalchemy as sa
from traitlets import Integer, List
from traitlets.config import LoggingConfigurable

from ..errors import UsageError
from .catalog import METRICS

metadata = sa.MetaData()

samples = sa.Table(
    "monitor_samples", metadata,
    sa.Column("tier", sa.SmallInteger, primary_key=True),
    sa.Column("metric", sa.String(100), primary_key=True),
    sa.Column("labels", sa.String(1000), primary_key=True),
    sa.Column("t", sa.Float, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_monitor_samples_time", "tier", "t"),  # pruning
    sa.Index("ix_monitor_samples_read", "tier", "metric", "t"),  # range reads
)


@functools.lru_cache(maxsize=4096)
def _label_key(items: tuple) -> str:
    return json.dumps(dict(items), sort_keys=True, separators=(",", ":"))


def label_key(labels: dict) -> str:
    """Labels as the canonical JSON text stored (one per series: cached)."""
    return _label_key(tuple(sorted((k, str(v)) for k, v in labels.items())))


class MetricStore(LoggingConfigurable):
    """Writes samples, downsamples and prunes them, and answers range queries."""

    tiers = List(
        [[1, 3600], [60, 30 * 86400], [3600, 365 * 86400]],
        help="""Resolution tiers, finest first, as `[step_seconds, keep_seconds]`: tier 0
        holds the collector's samples (its step should be `Collector.interval`), each later
        tier one point per step (mean of the tier before; last value for counters). A
        point older than its tier's `keep_seconds` is deleted.""",
    ).tag(config=True)

    max_points = Integer(
        11000, help="Most points per series one history read may ask for (range / step)."
    ).tag(config=True)

    def __init__(self, engine: sa.Engine, migrate: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.engine = engine
        steps = [float(s) for s, _ in self.tiers]
        if not steps or steps != sorted(steps) or any(s <= 0 for s in steps):
            raise UsageError("MetricStore.tiers must be [step, keep] pairs with growing positive steps")
        if migrate:
            from ..db import upgrade

            upgrade(engine, Path(__file__).with_name("migrations"))

    # -- writing ------------------------------------------------------------------
    def record(self, t: float, rows: list[tuple[str, dict, float]]) -> None:
        """Store ``(metric, labels, value)`` rows sampled at ``t`` in tier 0."""
        if not rows:
            return
        values = [{"tier": 0, "metric": m, "labels": label_key(lb), "t": float(t), "value": float(v)}
                  for m, lb, v in rows]
        with self.engine.begin() as c:
            c.execute(samples.insert(), values)

    def maintain(self, now: float) -> None:
        """Fill every coarser tier's finished buckets, then delete what is past its keep."""
        with self.engine.begin() as c:
            for tier in range(1, len(self.tiers)):
                self._downsample(c, tier, now)
            for tier, (_step, keep) in enumerate(self.tiers):
                c.execute(samples.delete().where(samples.c.tier == tier, samples.c.t < now - float(keep)))

    def _downsample(self, c, tier: int, now: float) -> None:
        step = float(self.tiers[tier][0])
        last = c.execute(sa.select(sa.func.max(samples.c.t)).where(samples.c.tier == tier)).scalar()
        if last is None:
            first = c.execute(sa.select(sa.func.min(samples.c.t)).where(samples.c.tier == tier - 1)).scalar()
            if first is None:
                return
            begin = math.floor(first / step) * step
        else:
            begin = last + step
        end = math.floor(now / step) * step  # buckets before this one are complete
        if end <= begin:
            return
        rows = c.execute(sa.select(samples.c.metric, samples.c.labels, samples.c.t, samples.c.value)
                         .where(samples.c.tier == tier - 1, samples.c.t >= begin, samples.c.t < end))
        buckets: dict[tuple, list] = {}
        for metric, labels, t, value in rows:
            b = math.floor(t / step) * step
            buckets.setdefault((metric, labels, b), []).append((t, value))
        out = [{"tier": tier, "metric": m, "labels": lb, "t": b, "value": _combine(m, pts)}
               for (m, lb, b), pts in buckets.items()]
        if out:
            c.execute(samples.insert(), out)

    # -- reading ------------------------------------------------------------------
    def query(self, metric: str, start: float, end: float, step: float, now: float,
              labels: dict | None = None) -> dict:
        """The series of ``metric`` in ``[start, end)`` at ``step`` seconds per point.

        Raises :class:`UsageError` (a 400) for an unknown metric, an empty or inverted
        range, a step finer than the finest tier or too many points.
        """
        if metric not in METRICS:
            raise UsageError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
        if not all(math.isfinite(x) for x in (start, end, step)):
            raise UsageError("start, end and step must be finite numbers")
        if end <= start:
            raise UsageError(f"the range is empty or inverted: end ({end:g}) must be after start ({start:g})")
        finest = float(self.tiers[0][0])
        if step < finest:
            raise UsageError(f"step must be at least {finest:g} s (the finest resolution kept)")
        if (end - start) / step > self.max_points:
            raise UsageError(f"range / step gives more than {self.max_points} points; ask for a larger step")
        tier = self._tier_for(start, step, now)
        # one row per series and step, aggregated by the database (a gauge's mean, a
        # counter's highest: its last value); floor() where CAST rounds (PostgreSQL)
        ratio = (samples.c.t - start) / step
        bucket = (sa.cast(ratio, sa.Integer) if self.engine.dialect.name == "sqlite"
                  else sa.func.floor(ratio)).label("bucket")
        value = (sa.func.max if METRICS[metric].type == "counter" else sa.func.avg)(samples.c.value)
        q = (sa.select(samples.c.labels, bucket, value)
             .where(samples.c.tier == tier, samples.c.metric == metric,
                    samples.c.t >= start, samples.c.t < end)
             .group_by(samples.c.labels, bucket))
        wanted = {k: str(v) for k, v in (labels or {}).items()}
        series: dict[str, dict] = {}
        skipped: set[str] = set()
        with self.engine.connect() as c:
            rows = c.execute(q).fetchall()
        for key, b, v in rows:
            s = series.get(key)
            if s is None:
                if key in skipped:
                    continue
                lb = json.loads(key)
                if any(lb.get(k) != want for k, want in wanted.items()):
                    skipped.add(key)
                    continue
                s = series[key] = {"labels": lb, "points": []}
            s["points"].append([start + int(b) * step, float(v)])
        for s in series.values():
            s["points"].sort()
        return {
            "metric": metric, "start": start, "end": end, "step": step,
            "resolution": float(self.tiers[tier][0]),
            "series": [series[k] for k in sorted(series)],
        }

    def _tier_for(self, start: float, step: float, now: float) -> int:
        """The finest tier no finer than needed whose retention reaches ``start``; when
        none of those reaches back so far, the finest that does (its points are coarser
        than the step asked for: the resolution the answer states)."""
        reaches = [i for i, (_s, keep) in enumerate(self.tiers) if now - float(keep) <= start]
        for i in reaches:
            if float(self.tiers[i][0]) <= step:
                return i
        return reaches[0] if reaches else len(self.tiers) - 1


def _combine(metric: str, points: list[tuple[float, float]]) -> float:
    """One value for a bucket: a counter's last value, a gauge's mean."""
    if METRICS[metric].type == "counter":
        return max(points)[1]
    return sum(v for _t, v in points) / len(points)
