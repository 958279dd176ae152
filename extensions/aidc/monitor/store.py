"""A bounded time-series store in the platform database, with downsampling tiers.

Samples go into tier 0 at the collector's interval; each later tier keeps one point per
bucket of its step (the mean of the tier before it; the last value for counters), and
every tier keeps its points for its retention only, so the store is bounded whatever the
uptime: by default 1 s for an hour, 1 min for 30 days, 1 h for a year. A read asks for a
time range and a step and is answered from the finest tier that reaches back far enough.

Three tables in the platform database (:meth:`aidc.paths.DataDir.db_url`;
``monitor.sqlite`` in the data directory without a database server), migrated by alembic
with its own version table:

* ``monitor_series`` names each series once (metric, labels as canonical JSON);
* ``monitor_samples`` holds tier 0, one row per sample (series, time, value);
* ``monitor_chunks`` holds the coarser tiers pre-aggregated, one row per series and
  :data:`CHUNK` steps (an hour of 1-minute points), the values packed as float64 (NaN
  where there is none). A day of 1-minute points of 8 GPUs is 192 rows, not 11,520: the
  read the dashboards do most is a few milliseconds (``benchmarks/monitoring.py``).
"""

from __future__ import annotations

import array
import functools
import json
import math
import sys
from pathlib import Path

import sqlalchemy as sa
from traitlets import Integer, List
from traitlets.config import LoggingConfigurable

from ..errors import UsageError
from .catalog import METRICS

#: steps per row of a coarser tier (``monitor_chunks``)
CHUNK = 60
NAN = float("nan")

metadata = sa.MetaData()

series = sa.Table(
    "monitor_series", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("metric", sa.String(100), nullable=False),
    sa.Column("labels", sa.String(1000), nullable=False),
    sa.UniqueConstraint("metric", "labels", name="uq_monitor_series"),
)

samples = sa.Table(
    "monitor_samples", metadata,
    sa.Column("series", sa.Integer, primary_key=True),
    sa.Column("t", sa.Float, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_monitor_samples_t", "t"),  # pruning and downsampling
    sqlite_with_rowid=False,
)

chunks = sa.Table(
    "monitor_chunks", metadata,
    sa.Column("tier", sa.SmallInteger, primary_key=True),
    sa.Column("series", sa.Integer, primary_key=True),
    sa.Column("t0", sa.Float, primary_key=True),  # the first step's time: a multiple of CHUNK * step
    sa.Column("step", sa.Float, nullable=False),  # the tier's step when written
    sa.Column("vals", sa.LargeBinary, nullable=False),  # CHUNK little-endian float64, NaN: none
    sa.Index("ix_monitor_chunks_t0", "tier", "t0"),  # pruning
    sqlite_with_rowid=False,
)


@functools.lru_cache(maxsize=4096)
def _label_key(items: tuple) -> str:
    return json.dumps(dict(items), sort_keys=True, separators=(",", ":"))


def label_key(labels: dict) -> str:
    """Labels as the canonical JSON text stored (one per series: cached)."""
    return _label_key(tuple(sorted((k, str(v)) for k, v in labels.items())))


def pack(values: list[float]) -> bytes:
    a = array.array("d", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def unpack(blob: bytes) -> array.array:
    a = array.array("d")
    a.frombytes(blob)
    if sys.byteorder != "little":
        a.byteswap()
    return a


class MetricStore(LoggingConfigurable):
    """Writes samples, downsamples and prunes them, and answers range queries."""

    tiers = List(
        [[1, 3600], [60, 30 * 86400], [3600, 365 * 86400]],
        help="""Resolution tiers, finest first, as `[step_seconds, keep_seconds]`: tier 0
        holds the collector's samples (its step should be `Collector.interval`), each later
        tier one point per step (mean of the tier before; last value for counters). A
        point older than its tier's `keep_seconds` is deleted (in a coarser tier, by rows
        of 60 steps: at most 60 steps later).""",
    ).tag(config=True)

    max_points = Integer(
        11000, help="Most points per series one history read may ask for (range / step)."
    ).tag(config=True)

    def __init__(self, engine: sa.Engine, migrate: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.engine = engine
        self._ids: dict[tuple[str, str], int] = {}  # (metric, label key) -> series id
        self._metric_of: dict[int, str] = {}
        steps = [float(s) for s, _ in self.tiers]
        if not steps or steps != sorted(steps) or any(s <= 0 for s in steps):
            raise UsageError("MetricStore.tiers must be [step, keep] pairs with growing positive steps")
        if migrate:
            from ..db import upgrade

            upgrade(engine, Path(__file__).with_name("migrations"))

    # -- series -------------------------------------------------------------------
    def _series_ids(self, c, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Ids of ``(metric, label key)`` series, made for those new (in ``c``'s transaction:
        the caller caches them once it committed)."""
        found = {k: self._ids[k] for k in keys if k in self._ids}
        for metric, key in keys - found.keys():
            sid = c.execute(sa.select(series.c.id).where(series.c.metric == metric,
                                                         series.c.labels == key)).scalar()
            if sid is None:
                sid = c.execute(series.insert().values(metric=metric, labels=key)).inserted_primary_key[0]
            found[(metric, key)] = sid
        return found

    def _remember(self, ids: dict[tuple[str, str], int]) -> None:
        self._ids.update(ids)
        self._metric_of.update({sid: metric for (metric, _key), sid in ids.items()})

    def _metrics_of(self, c, ids) -> dict[int, str]:
        unknown = set(ids) - self._metric_of.keys()
        if unknown:
            self._metric_of.update(c.execute(sa.select(series.c.id, series.c.metric)
                                             .where(series.c.id.in_(unknown))).all())
        return self._metric_of

    # -- writing ------------------------------------------------------------------
    def record(self, t: float, rows: list[tuple[str, dict, float]]) -> None:
        """Store ``(metric, labels, value)`` rows sampled at ``t`` in tier 0."""
        if not rows:
            return
        keyed = [((m, label_key(lb)), v) for m, lb, v in rows]
        with self.engine.begin() as c:
            ids = self._series_ids(c, {k for k, _v in keyed})
            c.execute(samples.insert(), [{"series": ids[k], "t": float(t), "value": float(v)}
                                         for k, v in keyed])
        self._remember(ids)

    def maintain(self, now: float) -> None:
        """Fill every coarser tier's finished buckets, then delete what is past its keep."""
        with self.engine.begin() as c:
            for tier in range(1, len(self.tiers)):
                self._downsample(c, tier, now)
            c.execute(samples.delete().where(samples.c.t < now - float(self.tiers[0][1])))
            for tier, (step, keep) in enumerate(self.tiers[1:], start=1):
                # a row goes once its last step is past the keep
                c.execute(chunks.delete().where(chunks.c.tier == tier,
                                                chunks.c.t0 + CHUNK * chunks.c.step <= now - float(keep)))

    def _filled_until(self, c, tier: int) -> float | None:
        """The time of the last step of ``tier`` written, or None when it has none."""
        t0 = c.execute(sa.select(sa.func.max(chunks.c.t0)).where(chunks.c.tier == tier)).scalar()
        if t0 is None:
            return None
        last = None
        for step, blob in c.execute(sa.select(chunks.c.step, chunks.c.vals)
                                    .where(chunks.c.tier == tier, chunks.c.t0 == t0)):
            a = unpack(blob)
            i = max((j for j, v in enumerate(a) if v == v), default=None)
            if i is not None and (last is None or t0 + i * step > last):
                last = t0 + i * step
        return last

    def _downsample(self, c, tier: int, now: float) -> None:
        step = float(self.tiers[tier][0])
        last = self._filled_until(c, tier)
        if last is None:
            first = self._first(c, tier - 1)
            if first is None:
                return
            begin = math.floor(first / step) * step
        else:
            begin = last + step
        end = math.floor(now / step) * step  # buckets before this one are complete
        if end <= begin:
            return
        buckets: dict[tuple, list] = {}
        for sid, t, value in self._read(c, tier - 1, None, begin, end):
            b = math.floor(t / step) * step
            buckets.setdefault((sid, b), []).append((t, value))
        metric_of = self._metrics_of(c, {sid for sid, _b in buckets})
        span = CHUNK * step
        rows: dict[tuple, list] = {}  # (series, t0) -> the row's values
        for (sid, b), pts in buckets.items():
            t0 = math.floor(b / span) * span
            vals = rows.get((sid, t0))
            if vals is None:
                vals = rows[(sid, t0)] = [NAN] * CHUNK
            vals[min(CHUNK - 1, round((b - t0) / step))] = _combine(metric_of[sid], pts)
        if not rows:
            return
        existing = {}
        for t0s in _batches(sorted({t0 for _s, t0 in rows})):
            for sid, t0, old_step, blob in c.execute(
                    sa.select(chunks.c.series, chunks.c.t0, chunks.c.step, chunks.c.vals)
                    .where(chunks.c.tier == tier, chunks.c.t0.in_(t0s))):
                existing[(sid, t0)] = (old_step, blob)
        inserts, updates = [], []
        for (sid, t0), vals in rows.items():
            if (sid, t0) in existing and existing[(sid, t0)][0] == step:
                old = unpack(existing[(sid, t0)][1])
                vals = [new if new == new else o for new, o in zip(vals, old)]
                updates.append({"b_series": sid, "b_t0": t0, "b_vals": pack(vals)})
            elif (sid, t0) not in existing:
                inserts.append({"tier": tier, "series": sid, "t0": t0, "step": step, "vals": pack(vals)})
        if inserts:
            c.execute(chunks.insert(), inserts)
        if updates:
            c.execute(chunks.update().where(chunks.c.tier == tier, chunks.c.series == sa.bindparam("b_series"),
                                            chunks.c.t0 == sa.bindparam("b_t0"))
                      .values(vals=sa.bindparam("b_vals")), updates)

    def _first(self, c, tier: int) -> float | None:
        if tier == 0:
            return c.execute(sa.select(sa.func.min(samples.c.t))).scalar()
        t0 = c.execute(sa.select(sa.func.min(chunks.c.t0)).where(chunks.c.tier == tier)).scalar()
        if t0 is None:
            return None
        return min((t for _s, t, _v in self._read(c, tier, None, t0, t0 + CHUNK * float(self.tiers[tier][0]))),
                   default=None)

    def _read(self, c, tier: int, ids, start: float, end: float):
        """``(series, t, value)`` of ``tier`` in ``[start, end)`` (of the series ``ids``, or
        all), ordered by series and time."""
        if tier == 0:
            q = sa.select(samples.c.series, samples.c.t, samples.c.value).where(
                samples.c.t >= start, samples.c.t < end)
            if ids is not None:
                q = q.where(samples.c.series.in_(list(ids)))
            yield from _fetch(c, q.order_by(samples.c.series, samples.c.t))
            return
        # a row may begin up to its span before start: its later steps are inside
        span = CHUNK * float(self.tiers[tier][0])
        q = sa.select(chunks.c.series, chunks.c.t0, chunks.c.step, chunks.c.vals).where(
            chunks.c.tier == tier, chunks.c.t0 > start - span, chunks.c.t0 < end)
        if ids is not None:
            q = q.where(chunks.c.series.in_(list(ids)))
        for sid, t0, step, blob in _fetch(c, q.order_by(chunks.c.series, chunks.c.t0)):
            for i, v in enumerate(unpack(blob)):
                if v == v:
                    t = t0 + i * step
                    if start <= t < end:
                        yield sid, t, v

    # -- reading ------------------------------------------------------------------
    def query(self, metric: str, start: float, end: float, step: float, now: float,
              labels: dict | None = None) -> dict:
        """The series of ``metric`` in ``[start, end)`` at ``step`` seconds per point.

        Raises :class:`UsageError` (a 400) for an unknown metric, an empty or inverted
        range, a step finer than the finest tier or too many points.
        """
        if metric not in METRICS:
            raise UsageError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
        if METRICS[metric].type == "histogram":
            raise UsageError(f"{metric} is a histogram, in the Prometheus text only; its help in "
                             "api/metrics names the metrics that keep its count and sum")
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
        counter = METRICS[metric].type == "counter"
        wanted = {k: str(v) for k, v in (labels or {}).items()}
        found: dict[int, list] = {}
        with self.engine.connect() as c:
            chosen = {}
            for sid, key in c.execute(sa.select(series.c.id, series.c.labels).where(series.c.metric == metric)):
                lb = json.loads(key)
                if all(lb.get(k) == want for k, want in wanted.items()):
                    chosen[sid] = (key, lb)
            if chosen and tier == 0:
                self._query_samples(c, chosen, start, end, step, counter, found)
            elif chosen:
                self._query_chunks(c, tier, chosen, start, end, step, counter, found)
        answer = sorted((chosen[sid][0], {"labels": chosen[sid][1], "points": pts})
                        for sid, pts in found.items() if pts)
        return {
            "metric": metric, "start": start, "end": end, "step": step,
            "resolution": float(self.tiers[tier][0]),
            "series": [s for _key, s in answer],
        }

    def _query_samples(self, c, ids, start, end, step, counter, found) -> None:
        """Tier 0: one row per series and step from the database (a gauge's mean, a
        counter's last value: its highest), or the samples as stored when the step is
        the tier's own; floor() where CAST rounds (PostgreSQL)."""
        ratio = (samples.c.t - start) / step
        bucket = sa.cast(ratio, sa.Integer) if self.engine.dialect.name == "sqlite" else sa.func.floor(ratio)
        in_range = (samples.c.series.in_(list(ids)), samples.c.t >= start, samples.c.t < end)
        if step <= float(self.tiers[0][0]):
            q = (sa.select(samples.c.series, bucket, samples.c.value).where(*in_range)
                 .order_by(samples.c.series, samples.c.t))
        else:
            value = (sa.func.max if counter else sa.func.avg)(samples.c.value)
            q = (sa.select(samples.c.series, bucket, value).where(*in_range)
                 .group_by(samples.c.series, bucket).order_by(samples.c.series, bucket))
        pts, current = [], None
        for sid, b, v in _fetch(c, q):
            if sid != current:
                pts, current = found.setdefault(sid, []), sid
            at = start + int(b) * step
            if pts and pts[-1][0] == at:  # two samples in one step (an interval's jitter)
                pts[-1][1] = max(pts[-1][1], v) if counter else (pts[-1][1] + v) / 2
            else:
                pts.append([at, float(v)])

    def _query_chunks(self, c, tier, ids, start, end, step, counter, found) -> None:
        """A coarser tier: each row's steps inside the range, on the grid of ``start``."""
        span = CHUNK * float(self.tiers[tier][0])  # a row may begin up to its span before start
        q = (sa.select(chunks.c.series, chunks.c.t0, chunks.c.step, chunks.c.vals)
             .where(chunks.c.tier == tier, chunks.c.series.in_(list(ids)),
                    chunks.c.t0 > start - span, chunks.c.t0 < end)
             .order_by(chunks.c.series, chunks.c.t0))
        pts, current, n = [], None, 0
        for sid, t0, cs, blob in c.execute(q):  # a few hundred rows: a cached statement
            if sid != current:
                pts, current = found.setdefault(sid, []), sid
            vals = unpack(blob)
            lo = max(0, math.ceil((start - t0) / cs))
            hi = min(CHUNK, math.ceil((end - t0) / cs))
            ratio = cs / step
            if ratio >= 1 and ratio == int(ratio):
                # each stored step is its own point: the row's grid moved onto start's
                base = start + math.floor((t0 + lo * cs - start) / step) * step - lo * cs
                pts.extend([[base + i * cs, v] for i, v in enumerate(vals[lo:hi], lo) if v == v])
                continue
            total = sum(vals)
            full = total == total  # no NaN: every slot of the row holds a value
            i = lo
            while i < hi:  # one step's slots of this row at a time
                b = math.floor((t0 + i * cs - start) / step)
                j = min(hi, max(i + 1, math.ceil((start + (b + 1) * step - t0) / cs)))
                seg = vals[i:j] if full else [v for v in vals[i:j] if v == v]
                i = j
                if not seg:
                    continue
                at = start + b * step
                if pts and pts[-1][0] == at:  # the step began in the row before
                    if counter:
                        pts[-1][1] = max(pts[-1][1], *seg)
                    else:
                        pts[-1][1] = (pts[-1][1] * n + sum(seg)) / (n + len(seg))
                    n += len(seg)
                else:
                    pts.append([at, max(seg) if counter else sum(seg) / len(seg)])
                    n = len(seg)

    def _tier_for(self, start: float, step: float, now: float) -> int:
        """The finest tier no finer than needed whose retention reaches ``start``; when
        none of those reaches back so far, the finest that does (its points are coarser
        than the step asked for: the resolution the answer states)."""
        reaches = [i for i, (_s, keep) in enumerate(self.tiers) if now - float(keep) <= start]
        for i in reaches:
            if float(self.tiers[i][0]) <= step:
                return i
        return reaches[0] if reaches else len(self.tiers) - 1


def _batches(items: list, size: int = 500):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _fetch(c, q) -> list[tuple]:
    """``q``'s rows as plain tuples, read through the driver's cursor: for the thousands of
    points of a day's read, SQLAlchemy's row objects cost more than the database's walk.
    The statement holds only numbers the store computed (series ids, times), so they are
    written into it."""
    sql = str(q.compile(c.engine, compile_kwargs={"literal_binds": True}))
    cursor = c.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()


def _combine(metric: str, pts: list[tuple[float, float]]) -> float:
    """One value for a bucket: a counter's last value, a gauge's mean."""
    if METRICS[metric].type == "counter":
        return max(pts)[1]
    return sum(v for _t, v in pts) / len(pts)
