"""The allocation ledger: the one record of which server, job or deployment holds which GPU.

Every holder (``server:alice/``, ``job:42``, ``deployment:mnist``) asks the ledger with
:meth:`GPULedger.request`. The answer is at once *granted* (with its units), *queued*
(with its position), or an error: more GPUs than the platform has, or over a quota,
with the quota in the message. Queued requests are granted in order (higher priority
first, then first come) as holders :meth:`release` their units.

Durable and safe across processes: the ledger is tables in the platform database
(SQLite by default, PostgreSQL by URL). Each decision is one transaction that first
takes the ledger's lock (SQLite's one write lock, ``BEGIN IMMEDIATE``; on PostgreSQL an
update of the ``gpu_ledger_lock`` row), so the hub, the jobs service and the models
service never hand one unit to two holders; the unit row itself has a single ``holder``
column, so a double allocation cannot even be written. ``gpu_node_free`` counts the free
units per node and kind in the same transactions, so best fit is one index lookup.

Decisions run as plain SQL on the driver's own connection, kept for the ledger's life
(:class:`_SqliteStore` on sqlite3, :class:`_PgStore` on psycopg): SQLAlchemy's Python
work per statement was several times the database's own. On PostgreSQL a decision without
a quota is one call of a PL/pgSQL function the ledger creates in its schema
(``_PG_FUNCTIONS``): one round trip instead of three, and almost no client work. Every
other dialect, and both of these with ``driver_fast_path`` off, run the same decisions
through SQLAlchemy Core (:class:`_SAStore`).
"""

from __future__ import annotations

import functools
import json
import socket
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa
from traitlets import Bool, Dict, Integer, Unicode
from traitlets.config import LoggingConfigurable

from ..db import upgrade
from ..errors import AidcError, ConflictError, UsageError
from .inventory import MIG, SHARE, WHOLE, Inventory

GRANTED = "granted"
QUEUED = "queued"

KIND_LABEL = {WHOLE: "whole GPUs", MIG: "MIG instances", SHARE: "GPU shares"}


class QuotaExceededError(AidcError):
    """The request would take its owner (or their group) past a quota."""


class ImpossibleRequestError(UsageError):
    """No node of the platform could ever satisfy the request."""


metadata = sa.MetaData()

gpu_units = sa.Table(
    "gpu_units", metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("node", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("gpu_index", sa.Integer, nullable=False),
    sa.Column("visible_id", sa.String(200), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("simulated", sa.Boolean, nullable=False),
    sa.Column("present", sa.Boolean, nullable=False, default=True),
    sa.Column("holder", sa.String(400), nullable=True),
    sa.Index("ix_gpu_units_free", "kind", "node", "holder"),
    sa.Index("ix_gpu_units_holder", "holder"),
)

#: one row per holder known to the ledger (also those holding no GPU: quotas count them)
claims = sa.Table(
    "gpu_claims", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("holder", sa.String(400), nullable=False, unique=True),
    sa.Column("holder_kind", sa.String(32), nullable=False),  # server, job, deployment
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("groups", sa.Text, nullable=False, default="[]"),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("granted", sa.Float, nullable=True),
    sa.Index("ix_gpu_claims_queue", "state", "kind", "priority", "id"),
    sa.Index("ix_gpu_claims_owner", "owner"),
)

#: free and present units per node and kind, kept in step with ``gpu_units`` in the same
#: transactions, so best fit is one index lookup instead of a scan of every free unit
node_free = sa.Table(
    "gpu_node_free", metadata,
    sa.Column("node", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("free", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Index("ix_gpu_node_free_fit", "kind", "free", "node"),
    sa.Index("ix_gpu_node_free_total", "kind", "total"),
)

#: one row per ended holding (a granted claim, released): what accounting reads, since the
#: claim row itself is deleted at release (see :meth:`GPULedger.holdings`)
claim_history = sa.Table(
    "gpu_claim_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("holder", sa.String(400), nullable=False),
    sa.Column("holder_kind", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("groups", sa.Text, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("units", sa.Text, nullable=False),  # JSON: the ids of the units it held
    sa.Column("granted", sa.Float, nullable=False),
    sa.Column("released", sa.Float, nullable=False),
    sa.Index("ix_gpu_claim_history_released", "released"),
)

lock = sa.Table("gpu_ledger_lock", metadata, sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("version", sa.Integer, nullable=False))

# The statements of every decision, built once: building a statement and its cache key on
# each call cost ~150 us apiece (an order of magnitude more than running it).
_B = sa.bindparam
_BUMP = lock.update().where(lock.c.id == 1).values(version=lock.c.version + 1)
_WAITING_FOR = sa.select(claims.c.id).where(claims.c.state == QUEUED, claims.c.kind == _B("kind")).limit(1)
# the columns of a claim that decisions read, in this order (see _ClaimRow)
_CLAIM_COLS = (claims.c.id, claims.c.holder, claims.c.owner, claims.c.count, claims.c.kind,
               claims.c.priority, claims.c.state)
_CLAIM = sa.select(*_CLAIM_COLS).where(claims.c.holder == _B("holder"))
_UNITS_OF = (sa.select(gpu_units).where(gpu_units.c.holder == _B("holder"))
             .order_by(gpu_units.c.gpu_index, gpu_units.c.id))
_POSITION = sa.select(sa.func.count()).select_from(claims).where(
    claims.c.state == QUEUED, claims.c.kind == _B("kind"),
    sa.or_(claims.c.priority > _B("priority"),
           sa.and_(claims.c.priority == _B("priority"), claims.c.id <= _B("id"))))
_MOST = sa.select(sa.func.max(node_free.c.total)).where(node_free.c.kind == _B("kind"))
_OWNER_USE = sa.select(claims.c.count, claims.c.holder_kind).where(claims.c.owner == _B("owner"))
_ALL_USE = sa.select(claims.c.owner, claims.c.groups, claims.c.count, claims.c.holder_kind)
_QUEUE = (sa.select(claims.c.id, claims.c.holder, claims.c.count, claims.c.kind)
          .where(claims.c.state == QUEUED).order_by(claims.c.priority.desc(), claims.c.id))
_GRANT = claims.update().where(claims.c.id == _B("b_id")).values(state=GRANTED, granted=_B("b_now"))
_BEST_FIT = (sa.select(node_free.c.node)
             .where(node_free.c.kind == _B("kind"), node_free.c.free >= _B("count"))
             .order_by(node_free.c.free, node_free.c.node).limit(1))
_FREE_UNITS = (sa.select(gpu_units).where(
    gpu_units.c.node == _B("node"), gpu_units.c.kind == _B("kind"),
    gpu_units.c.holder.is_(None), gpu_units.c.present)
    .order_by(gpu_units.c.gpu_index, gpu_units.c.id).limit(_B("count")))
_TAKE = (gpu_units.update()
         .where(gpu_units.c.id.in_(_B("ids", expanding=True)), gpu_units.c.holder.is_(None))
         .values(holder=_B("b_holder")))
_FREE_ADD = (node_free.update()
             .where(node_free.c.node == _B("b_node"), node_free.c.kind == _B("b_kind"))
             .values(free=node_free.c.free + _B("b_n")))
_HELD = (sa.select(gpu_units.c.id, gpu_units.c.node, gpu_units.c.kind, gpu_units.c.present)
         .where(gpu_units.c.holder == _B("holder")))
_UNHOLD = gpu_units.update().where(gpu_units.c.holder == _B("b_holder")).values(holder=None)
_DROP = claims.delete().where(claims.c.holder == _B("holder"))
# in the release's transaction, before _DROP: the granted claim becomes an ended holding
_KEEP_ENDED = claim_history.insert().from_select(
    ["holder", "holder_kind", "owner", "groups", "count", "kind", "units", "granted", "released"],
    sa.select(claims.c.holder, claims.c.holder_kind, claims.c.owner, claims.c.groups, claims.c.count,
              claims.c.kind, _B("b_units", type_=sa.Text), claims.c.granted, _B("b_now", type_=sa.Float))
    .where(claims.c.holder == _B("holder"), claims.c.state == GRANTED, claims.c.granted.is_not(None)))
_NODE_COUNTS = (
    sa.select(gpu_units.c.node, gpu_units.c.kind,
              sa.func.sum(sa.case((sa.and_(gpu_units.c.present, gpu_units.c.holder.is_(None)), 1), else_=0)),
              sa.func.sum(sa.case((gpu_units.c.present, 1), else_=0)))
    .group_by(gpu_units.c.node, gpu_units.c.kind)
)


@dataclass
class Claim:
    """The ledger's answer for one holder."""

    holder: str
    state: str  # GRANTED or QUEUED
    units: list[dict] = field(default_factory=list)
    position: int = 0  # 1-based place in the queue while QUEUED
    owner: str = ""
    count: int = 0
    kind: str = WHOLE
    #: when it was asked for (epoch seconds); set by :meth:`GPULedger.queue`, for the wait
    created: float | None = None

    @property
    def visible_devices(self) -> str:
        return ",".join(u["visible_id"] for u in self.units)


def _held_unit(u) -> dict:
    """A unit as :meth:`GPULedger.holdings` lists it."""
    return {"id": u.id, "name": u.name, "gpu_index": u.gpu_index, "visible_id": u.visible_id}


def holder_kind(holder: str) -> str:
    return holder.split(":", 1)[0]


def _again_after_a_lost_connection(decision):
    """Run a decision once more, on a new connection, when the server dropped the ledger's
    connection (the first run's transaction never committed; a decision asked again for
    the same holder gives the same answer)."""

    @functools.wraps(decision)
    def run(self, *args, **kwargs):
        try:
            return decision(self, *args, **kwargs)
        except Exception as e:
            fast = self._fast
            if fast is None or not getattr(fast, "lost", lambda _e: False)(e):
                raise
            self.log.warning("aidc: the GPU ledger's database connection was lost; reconnecting")
            fast.reconnect()
            return decision(self, *args, **kwargs)

    return run


class GPULedger(LoggingConfigurable):
    """Allocates GPU units to holders, with quotas and a priority queue."""

    db_url = Unicode(help="SQLAlchemy URL of the platform database.").tag(config=True)

    node = Unicode(
        socket.gethostname(), help="Name of this machine in the ledger (units are per node)."
    ).tag(config=True)

    default_quota = Dict(
        {},
        help="""Quota for every user without one of their own, e.g.
        `{"max_gpus": 2, "max_servers": 1, "max_jobs": 4}`. Missing keys: no limit.""",
    ).tag(config=True)

    user_quotas = Dict({}, help="Quotas per user name (same keys as `default_quota`).").tag(config=True)

    group_quotas = Dict(
        {},
        help="""Quotas per group, applied to the group's members *together* (e.g. a team's
        GPUs), in addition to each user's own quota.""",
    ).tag(config=True)

    group_priority = Dict(
        {}, help="Queue priority per group (higher goes first; default 0; a user's highest counts)."
    ).tag(config=True)

    busy_timeout_ms = Integer(30000, help="How long to wait for the database lock.").tag(config=True)

    driver_fast_path = Bool(
        True,
        help="""On SQLite and on PostgreSQL (psycopg), run decisions as plain SQL on a
        driver connection the ledger keeps (same transactions and locking; off: through
        SQLAlchemy Core, as on other databases).""",
    ).tag(config=True)

    pg_functions = Bool(
        True,
        help="""On PostgreSQL with `driver_fast_path`: run each decision without a quota as
        one call of a function the ledger creates in its schema (`aidc_ledger_request`,
        `_poll`, `_release`: one round trip); off, or for requests a quota applies to: the
        same statements in psycopg's pipeline mode (three round trips).""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.db_url:
            raise ValueError("GPULedger needs db_url")
        self.engine = make_engine(self.db_url, self.busy_timeout_ms)
        upgrade(self.engine, Path(__file__).with_name("migrations"))
        with self.engine.begin() as c:
            if c.execute(sa.select(lock.c.id)).first() is None:
                c.execute(lock.insert().values(id=1, version=0))
        with self._sa_tx() as c:
            if c.execute(sa.select(node_free.c.node).limit(1)).first() is None:
                self._count_free(c)  # first start after the upgrade (or an empty ledger)
        dialect = self.engine.dialect
        if not self.driver_fast_path:
            self._fast = None
        elif dialect.name == "sqlite":
            self._fast = _SqliteTransaction(self.engine)
        elif dialect.name == "postgresql" and dialect.driver == "psycopg":
            self._fast = _PgTransaction(self.engine)
        else:
            self._fast = None
        self._in_db = (isinstance(self._fast, _PgTransaction) and self.pg_functions
                       and _install_pg_functions(self._fast.db, self.log))

    # -- transactions ---------------------------------------------------------------
    def _tx(self):
        """One decision's transaction, holding the ledger's lock; ``as`` gives its store
        (:class:`_SqliteStore` on SQLite, :class:`_PgStore` on PostgreSQL, :class:`_SAStore`
        elsewhere)."""
        if self._fast is not None:
            return self._fast
        return _LockedTransaction(self.engine, _SAStore)

    def _sa_tx(self):
        """A transaction holding the ledger's lock; ``as`` gives the SQLAlchemy connection."""
        return _LockedTransaction(self.engine)

    # -- inventory ------------------------------------------------------------------
    def sync_inventory(self, inventory: Inventory, node: str | None = None) -> None:
        """Make the ledger's units those of ``inventory`` (held units keep their holder)."""
        node = node or self.node
        units = inventory.units()
        with self._sa_tx() as c:
            existing = {r.id: r for r in c.execute(sa.select(gpu_units).where(gpu_units.c.node == node))}
            seen = set()
            for u in units:
                uid = f"{node}/{u.id}"
                seen.add(uid)
                values = dict(node=node, kind=u.kind, gpu_index=u.gpu_index, visible_id=u.visible_id,
                              name=u.name, memory_mb=u.memory_mb, simulated=u.simulated, present=True)
                if uid in existing:
                    c.execute(gpu_units.update().where(gpu_units.c.id == uid).values(**values))
                else:
                    c.execute(gpu_units.insert().values(id=uid, holder=None, **values))
            gone = [uid for uid in existing if uid not in seen]
            if gone:
                c.execute(gpu_units.update().where(gpu_units.c.id.in_(gone)).values(present=False))
            self._count_free(c, node)
            if c.dialect.name == "postgresql":
                _analyze_when_grown(c)

    def _count_free(self, c, node: str | None = None) -> None:
        """Recount ``gpu_node_free`` from ``gpu_units`` (one node, or all)."""
        counts = _NODE_COUNTS
        if node is not None:
            counts = counts.where(gpu_units.c.node == node)
            c.execute(node_free.delete().where(node_free.c.node == node))
        else:
            c.execute(node_free.delete())
        rows = [dict(node=n, kind=k, free=int(f or 0), total=int(t or 0)) for n, k, f, t in c.execute(counts)]
        if rows:
            c.execute(node_free.insert(), rows)

    def add_node(self, node: str, inventory: Inventory) -> None:
        """Register another machine's units (used by clusters and the ledger benchmark)."""
        self.sync_inventory(inventory, node=node)

    # -- decisions ------------------------------------------------------------------
    @_again_after_a_lost_connection
    def request(self, holder: str, owner: str, count: int, kind: str = WHOLE,
                groups: list[str] | None = None, priority: int | None = None) -> Claim:
        """Ask for ``count`` units of ``kind`` for ``holder``; granted at once or queued.

        Asking again for a holder that already has a claim returns that claim.
        Raises :class:`ImpossibleRequestError` when no node has that many units at all,
        :class:`QuotaExceededError` when over a quota (the message states the quota).
        """
        if count < 0:
            raise UsageError("the number of GPUs cannot be negative")
        if kind not in KIND_LABEL:
            raise UsageError(f"unknown GPU kind {kind!r}")
        groups = sorted(set(groups)) if groups else []
        if priority is None:
            priority = max((int(self.group_priority.get(g, 0)) for g in groups), default=0)
        if self._in_db and not self._has_quota(owner, groups):
            answer = self._fast.call(_PG_CALL_REQUEST, (
                holder, holder_kind(holder), owner, json.dumps(groups), count, kind, priority, time.time()))
            if "impossible" in answer:
                raise _impossible(count, kind, answer["impossible"], answer["simulated"])
            return _claim_of(holder, answer, owner, count, kind)
        with self._tx() as s:
            s.expect_waiting_for(kind)  # on PostgreSQL asked together with the claim
            row = s.claim(holder)
            if row is not None:
                return self._claim(s, row)
            quotas = self._has_quota(owner, groups)
            if count and quotas:
                self._check_possible(s, count, kind)  # "impossible" is said before "over quota"
            if quotas:
                self._check_quotas(s, holder, owner, groups, count)
            values = (holder, holder_kind(holder), owner, json.dumps(groups), count, kind, priority,
                      time.time())
            if not s.waiting_for(kind):
                # nobody waits for this kind: grant now if it fits, without queueing first
                units = [] if count == 0 else self._allocate(s, holder, count, kind)
                if units is not None:
                    s.insert_claim(values, GRANTED)
                    return Claim(holder=holder, state=GRANTED, units=units, owner=owner,
                                 count=count, kind=kind)
            claim_id = s.insert_claim(values, QUEUED)
            granted = self._grant_queued(s)
            if holder in granted:
                return Claim(holder=holder, state=GRANTED, units=granted[holder], owner=owner,
                             count=count, kind=kind)
            if count and not quotas:
                self._check_possible(s, count, kind)  # raises: the transaction is rolled back
            position = s.position(kind, priority, claim_id)
            return Claim(holder=holder, state=QUEUED, position=position, owner=owner, count=count, kind=kind)

    @_again_after_a_lost_connection
    def poll(self, holder: str) -> Claim | None:
        """The current claim of ``holder`` (granting queued requests that now fit)."""
        if self._in_db:
            answer = self._fast.call(_PG_CALL_POLL, (holder, time.time()))
            return None if answer is None else _claim_of(holder, answer)
        with self._tx() as s:
            self._grant_queued(s)
            row = s.claim(holder)
            return self._claim(s, row) if row is not None else None

    @_again_after_a_lost_connection
    def release(self, holder: str) -> list[str]:
        """Free everything ``holder`` holds or waits for; returns the freed unit ids."""
        if self._in_db:  # the function keeps the ended holding too
            freed = self._fast.call(_PG_CALL_RELEASE, (holder, time.time()))
        else:
            with self._tx() as s:
                freed = s.unhold(holder)
                s.keep_ended(holder, json.dumps(freed), time.time())
                s.drop(holder)
                self._grant_queued(s)
        if freed:
            self.log.info("aidc: %s released %s", holder, ", ".join(freed))
        return freed

    def forget_ended(self, before: float) -> int:
        """Delete the ended holdings released before ``before`` (epoch seconds), what
        accounting keeps for a bounded time (``c.Accounting.keep_ended_seconds``); how many
        went. Current claims are not ended holdings and are never touched."""
        with self.engine.begin() as c:
            return c.execute(claim_history.delete().where(claim_history.c.released < before)).rowcount

    def holdings(self, start: float, end: float) -> list[dict]:
        """Every holding that overlaps ``[start, end)`` (epoch seconds), ended or current.

        Each is ``{holder, holder_kind, owner, groups, count, kind, units, granted,
        released}`` with the exact grant and release times the ledger's decisions recorded
        (``released`` is None while held); ``groups`` and ``units`` are lists. What
        accounting (``aidc.monitor.accounting``) turns into GPU-hours.
        """
        with self.engine.connect() as c:
            ended = c.execute(sa.select(claim_history).where(
                claim_history.c.granted < end, claim_history.c.released > start)
                .order_by(claim_history.c.granted)).fetchall()
            current = c.execute(sa.select(claims).where(
                claims.c.state == GRANTED, claims.c.granted < end)).fetchall()
            every = {u.id: u for u in c.execute(sa.select(gpu_units))}  # units stay, absent or not
        held: dict[str, list[dict]] = {}
        for u in every.values():
            if u.holder is not None:
                held.setdefault(u.holder, []).append(_held_unit(u))

        def units(ids: str) -> list[dict]:
            return [_held_unit(every[i]) if i in every else {"id": i, "name": None, "gpu_index": None,
                                                             "visible_id": None}
                    for i in json.loads(ids or "[]")]

        out = [dict(holder=r.holder, holder_kind=r.holder_kind, owner=r.owner,
                    groups=json.loads(r.groups or "[]"), count=r.count, kind=r.kind,
                    units=units(r.units), granted=r.granted, released=r.released)
               for r in ended]
        out += [dict(holder=r.holder, holder_kind=r.holder_kind, owner=r.owner,
                     groups=json.loads(r.groups or "[]"), count=r.count, kind=r.kind,
                     units=held.get(r.holder, []), granted=r.granted, released=None)
                for r in current]
        return out

    def reconcile(self, alive: set[str], holder_kind_: str) -> list[str]:
        """Release every claim of ``holder_kind_`` whose holder is not in ``alive``."""
        with self._sa_tx() as c:
            holders = [r.holder for r in c.execute(
                sa.select(claims.c.holder).where(claims.c.holder_kind == holder_kind_))]
        dead = [h for h in holders if h not in alive]
        for h in dead:
            self.release(h)
        return dead

    # -- reading --------------------------------------------------------------------
    def units(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(gpu_units).where(gpu_units.c.present).order_by(gpu_units.c.node, gpu_units.c.gpu_index, gpu_units.c.id))]

    def claims(self) -> list[Claim]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(*_CLAIM_COLS).order_by(claims.c.id)).fetchall()
            s = _SAStore(c)
            return [self._claim(s, _ClaimRow._make(r)) for r in rows]

    def queue(self) -> list[Claim]:
        """The waiting claims, each with its place and when it was asked for (``created``:
        how long it has waited, what the GPU queue shows)."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(*_CLAIM_COLS, claims.c.created)
                             .where(claims.c.state == QUEUED).order_by(claims.c.id)).fetchall()
            s = _SAStore(c)
            out = []
            for r in rows:
                claim = self._claim(s, _ClaimRow._make(r[:-1]))
                claim.created = r[-1]
                out.append(claim)
            return out

    def waiting(self) -> dict[str, tuple[int, float]]:
        """Per unit kind with a queue: how many claims wait, and when the oldest was asked
        for (one query, for the monitor's figures every second)."""
        with self.engine.connect() as c:
            return {kind: (int(n), float(oldest)) for kind, n, oldest in c.execute(
                sa.select(claims.c.kind, sa.func.count(), sa.func.min(claims.c.created))
                .where(claims.c.state == QUEUED).group_by(claims.c.kind))}

    # -- internals ------------------------------------------------------------------
    def _claim(self, s, row: _ClaimRow) -> Claim:
        units = []
        position = 0
        if row.state == GRANTED:
            units = s.units_of(row.holder)
        else:
            position = s.position(row.kind, row.priority, row.id)
        return Claim(holder=row.holder, state=row.state, units=units, position=position,
                     owner=row.owner, count=row.count, kind=row.kind)

    def _check_possible(self, s, count: int, kind: str) -> None:
        if count <= s.most(kind):
            return
        per_node = s.present_per_node(kind)
        if count > max((n for _, n in per_node), default=0):
            raise _impossible(count, kind, per_node, s.any_simulated())

    def quota_for(self, owner: str) -> dict:
        """The user quota of ``owner`` (their own keys over ``default_quota``), e.g.
        ``{"max_gpus": 2}``: a missing key is no limit. Group quotas apply on top."""
        return {**self.default_quota, **self.user_quotas.get(owner, {})}

    def _has_quota(self, owner: str, groups: list[str]) -> bool:
        """Whether any quota applies (same as ``bool(self.quota_for(owner))`` or a group
        quota, without building the dict on every decision)."""
        if self.default_quota or self.user_quotas.get(owner):
            return True
        return bool(groups) and any(g in self.group_quotas for g in groups)

    def _check_quotas(self, s, holder: str, owner: str, groups: list[str], count: int) -> None:
        hk = holder_kind(holder)
        if any(g in self.group_quotas for g in groups):
            rows = s.all_use()
        else:  # only the owner's own claims count (index on owner)
            rows = s.owner_use(owner)

        def usage(match) -> dict:
            mine = [r for r in rows if match(r)]
            return {"max_gpus": sum(r.count for r in mine),
                    "max_servers": sum(1 for r in mine if r.holder_kind == "server"),
                    "max_jobs": sum(1 for r in mine if r.holder_kind == "job")}

        adding = {"max_gpus": count, "max_servers": int(hk == "server"), "max_jobs": int(hk == "job")}
        nouns = {"max_gpus": "GPUs", "max_servers": "running servers", "max_jobs": "running jobs"}

        def check(who: str, quota: dict, used: dict) -> None:
            for key, add in adding.items():
                limit = quota.get(key)
                if limit is None or not add:
                    continue
                if used[key] + add > int(limit):
                    raise QuotaExceededError(
                        f"over quota: {who} may use at most {limit} {nouns[key]}; "
                        f"{used[key]} in use, this request needs {add} more"
                    )

        check(f"user {owner}", self.quota_for(owner), usage(lambda r: r.owner == owner))
        for g in groups:
            if g in self.group_quotas:
                check(f"group {g}", self.group_quotas[g], usage(lambda r, g=g: g in json.loads(r.groups)))

    def _grant_queued(self, s) -> dict[str, list[dict]]:
        """Grant waiting requests in order; a request that does not fit blocks its kind.

        Returns the units granted now, per holder.
        """
        blocked: set[str] = set()
        granted: dict[str, list[dict]] = {}
        for claim_id, holder, count, kind in s.queue():
            if kind in blocked:
                continue
            units = [] if count == 0 else self._allocate(s, holder, count, kind)
            if units is None:
                blocked.add(kind)
                continue
            s.grant(claim_id, time.time())
            granted[holder] = units
        return granted

    def _allocate(self, s, holder: str, count: int, kind: str) -> list[dict] | None:
        """Give ``count`` free units of ``kind`` on one node to ``holder`` (best fit: the
        node with the fewest free units that still fit, ties by name; lowest GPU indexes).

        Returns the units, or None when no node has that many free.
        """
        return s.take(holder, count, kind)


def _analyze_when_grown(c) -> None:
    """ANALYZE the unit tables when they have grown to over twice what PostgreSQL's planner
    last counted (inside the inventory's transaction: its own new rows count). With the
    counts of an empty table, the planner found a node's free count through the index on
    (kind, total), a scan of every node of the kind (1 ms of the server's time per decision
    on 1,000 nodes), instead of the primary key or the best-fit index; autovacuum's own
    ANALYZE comes only after a minute or more."""
    planned, rows = c.execute(sa.text(
        "SELECT (SELECT reltuples FROM pg_class WHERE oid = to_regclass('gpu_node_free')), "
        "(SELECT count(*) FROM gpu_node_free)")).one()
    if planned is None or planned < 0 or 2 * planned < rows:
        c.execute(sa.text("ANALYZE gpu_units, gpu_node_free"))


def _impossible(count: int, kind: str, per_node: list, simulated: bool) -> ImpossibleRequestError:
    """The error for ``count`` units of ``kind`` when the nodes have ``per_node``
    ([node, present units of the kind]) at most."""
    most = max((n for _, n in per_node), default=0)
    where = "any node of this platform" if len(per_node) > 1 else "this platform"
    return ImpossibleRequestError(
        f"asked for {count} {KIND_LABEL[kind]}, but {where} has {most}"
        f"{' (simulated)' if simulated else ''}; ask for fewer"
    )


def _claim_of(holder: str, answer: dict, owner: str = "", count: int = 0, kind: str = WHOLE) -> Claim:
    """A :class:`Claim` from a decision function's answer (an existing claim's answer
    carries its own owner, count and kind)."""
    return Claim(holder=holder, state=answer["state"], units=answer.get("units") or [],
                 position=answer.get("position", 0), owner=answer.get("owner", owner),
                 count=answer.get("count", count), kind=answer.get("kind", kind))


class _ClaimRow(NamedTuple):
    id: int
    holder: str
    owner: str
    count: int
    kind: str
    priority: int
    state: str


_UNIT_COLS = tuple(c.name for c in gpu_units.columns)
_UNIT_BOOLS = ("simulated", "present")


class _SAStore:
    """The ledger's reads and writes inside one decision, as SQLAlchemy Core statements on
    ``c`` (any dialect: PostgreSQL, and SQLite when the driver path is off)."""

    __slots__ = ("c",)

    def __init__(self, c):
        self.c = c

    def claim(self, holder: str) -> _ClaimRow | None:
        row = self.c.execute(_CLAIM, {"holder": holder}).first()
        return None if row is None else _ClaimRow._make(row)

    def units_of(self, holder: str) -> list[dict]:
        return [dict(r._mapping) for r in self.c.execute(_UNITS_OF, {"holder": holder})]

    def position(self, kind: str, priority: int, claim_id: int) -> int:
        return self.c.execute(_POSITION, {"kind": kind, "priority": priority, "id": claim_id}).scalar_one()

    def expect_waiting_for(self, kind: str) -> None:
        """:meth:`waiting_for` will be asked (a store may send it ahead)."""

    def waiting_for(self, kind: str) -> bool:
        return self.c.execute(_WAITING_FOR, {"kind": kind}).first() is not None

    def most(self, kind: str) -> int:
        return self.c.execute(_MOST, {"kind": kind}).scalar() or 0

    def present_per_node(self, kind: str) -> list[tuple[str, int]]:
        return [tuple(r) for r in self.c.execute(
            sa.select(gpu_units.c.node, sa.func.count()).where(gpu_units.c.kind == kind, gpu_units.c.present)
            .group_by(gpu_units.c.node))]

    def any_simulated(self) -> bool:
        return bool(self.c.execute(sa.select(gpu_units.c.simulated).where(gpu_units.c.present).limit(1)).scalar())

    def owner_use(self, owner: str) -> list[_Use]:
        return [_Use(owner, r.count, r.holder_kind) for r in self.c.execute(_OWNER_USE, {"owner": owner})]

    def all_use(self) -> list[_Use]:
        return [_Use(r.owner, r.count, r.holder_kind, r.groups) for r in self.c.execute(_ALL_USE)]

    def insert_claim(self, values: tuple, state: str) -> int:
        holder, hk, owner, groups, count, kind, priority, created = values
        return self.c.execute(claims.insert(), dict(
            holder=holder, holder_kind=hk, owner=owner, groups=groups, count=count, kind=kind,
            priority=priority, created=created, state=state,
            granted=created if state == GRANTED else None)).inserted_primary_key[0]

    def queue(self) -> list[tuple[int, str, int, str]]:
        return [tuple(r) for r in self.c.execute(_QUEUE)]

    def grant(self, claim_id: int, now: float) -> None:
        self.c.execute(_GRANT, {"b_id": claim_id, "b_now": now})

    def take(self, holder: str, count: int, kind: str) -> list[dict] | None:
        c = self.c
        node = c.execute(_BEST_FIT, {"kind": kind, "count": count}).scalar()
        if node is None:
            return None
        units = [dict(r._mapping) for r in c.execute(_FREE_UNITS, {"node": node, "kind": kind, "count": count})]
        done = c.execute(_TAKE, {"ids": [u["id"] for u in units], "b_holder": holder}).rowcount
        if len(units) != count or done != count:  # cannot happen under the lock; refuse rather than half-allocate
            raise ConflictError("GPU ledger conflict; please retry")
        c.execute(_FREE_ADD, {"b_node": node, "b_kind": kind, "b_n": -count})
        for u in units:
            u["holder"] = holder
        return units

    def unhold(self, holder: str) -> list[str]:
        c = self.c
        held = c.execute(_HELD, {"holder": holder}).fetchall()
        if held:
            c.execute(_UNHOLD, {"b_holder": holder})
            _free_add_per_node(self._free_add, [(r.node, r.kind, r.present) for r in held])
        return [r.id for r in held]

    def _free_add(self, node: str, kind: str, n: int) -> None:
        self.c.execute(_FREE_ADD, {"b_node": node, "b_kind": kind, "b_n": n})

    def keep_ended(self, holder: str, units: str, now: float) -> None:
        self.c.execute(_KEEP_ENDED, {"holder": holder, "b_units": units, "b_now": now})

    def drop(self, holder: str) -> None:
        self.c.execute(_DROP, {"holder": holder})


def _free_add_per_node(free_add, held: list[tuple[str, str, bool]]) -> None:
    """Add the released present units back to their node's free count."""
    per_node: dict[tuple[str, str], int] = {}
    for node, kind, present in held:
        if present:
            per_node[node, kind] = per_node.get((node, kind), 0) + 1
    for (node, kind), n in per_node.items():
        free_add(node, kind, n)


# The same reads and writes as plain SQL on the sqlite3 connection: SQLAlchemy's Python work
# per statement (~60 us) was 4x SQLite's own, and a decision runs 5-7 of them.
_U = ", ".join(_UNIT_COLS)
_SQL_CLAIM = "SELECT id, holder, owner, count, kind, priority, state FROM gpu_claims WHERE holder = ?"
_SQL_UNITS_OF = f"SELECT {_U} FROM gpu_units WHERE holder = ? ORDER BY gpu_index, id"
_SQL_POSITION = ("SELECT count(*) FROM gpu_claims WHERE state = 'queued' AND kind = ? "
                 "AND (priority > ? OR (priority = ? AND id <= ?))")
_SQL_WAITING_FOR = "SELECT 1 FROM gpu_claims WHERE state = 'queued' AND kind = ? LIMIT 1"
_SQL_MOST = "SELECT max(total) FROM gpu_node_free WHERE kind = ?"
_SQL_PRESENT_PER_NODE = "SELECT node, count(*) FROM gpu_units WHERE kind = ? AND present GROUP BY node"
_SQL_ANY_SIMULATED = "SELECT simulated FROM gpu_units WHERE present LIMIT 1"
_SQL_OWNER_USE = "SELECT count, holder_kind FROM gpu_claims WHERE owner = ?"
_SQL_ALL_USE = "SELECT owner, count, holder_kind, groups FROM gpu_claims"
_SQL_INSERT_CLAIM = ("INSERT INTO gpu_claims (holder, holder_kind, owner, groups, count, kind, priority, "
                     "created, state, granted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SQL_QUEUE = "SELECT id, holder, count, kind FROM gpu_claims WHERE state = 'queued' ORDER BY priority DESC, id"
_SQL_GRANT = "UPDATE gpu_claims SET state = 'granted', granted = ? WHERE id = ?"
# best fit and its free count in one statement: the node with the fewest free units that
# still fit (ties by name), already counted down
_SQL_TAKE_NODE = ("UPDATE gpu_node_free SET free = free - ?1 WHERE kind = ?2 AND node = "
                  "(SELECT node FROM gpu_node_free WHERE kind = ?2 AND free >= ?1 ORDER BY free, node LIMIT 1) "
                  "RETURNING node")
_SQL_TAKE_UNITS = ("UPDATE gpu_units SET holder = ?1 WHERE id IN "
                   "(SELECT id FROM gpu_units WHERE node = ?2 AND kind = ?3 AND holder IS NULL AND present "
                   f"ORDER BY gpu_index, id LIMIT ?4) RETURNING {_U}")
_SQL_UNHOLD = "UPDATE gpu_units SET holder = NULL WHERE holder = ? RETURNING id, node, kind, present"
_SQL_FREE_ADD = "UPDATE gpu_node_free SET free = free + ? WHERE node = ? AND kind = ?"
_SQL_DROP = "DELETE FROM gpu_claims WHERE holder = ?"
_SQL_KEEP_ENDED = ("INSERT INTO gpu_claim_history (holder, holder_kind, owner, groups, count, kind, units, "
                   "granted, released) SELECT holder, holder_kind, owner, groups, count, kind, ?, granted, ? "
                   "FROM gpu_claims WHERE holder = ? AND state = 'granted' AND granted IS NOT NULL")


def _unit(row: tuple) -> dict:
    u = dict(zip(_UNIT_COLS, row))
    for key in _UNIT_BOOLS:  # stored as 0/1; SQLAlchemy's Boolean reads them as bool
        u[key] = bool(u[key])
    return u


class _SqliteStore:
    """:class:`_SAStore` on the sqlite3 driver connection itself (statements prepared once by
    the driver's statement cache)."""

    __slots__ = ("db",)

    #: the statements the methods run; :class:`_PgStore` has the same in psycopg's placeholders
    sql_claim = _SQL_CLAIM
    sql_units_of = _SQL_UNITS_OF
    sql_position = _SQL_POSITION
    sql_waiting_for = _SQL_WAITING_FOR
    sql_most = _SQL_MOST
    sql_present_per_node = _SQL_PRESENT_PER_NODE
    sql_owner_use = _SQL_OWNER_USE
    sql_grant = _SQL_GRANT
    sql_unhold = _SQL_UNHOLD
    sql_free_add = _SQL_FREE_ADD
    sql_drop = _SQL_DROP
    sql_keep_ended = _SQL_KEEP_ENDED

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def claim(self, holder: str) -> _ClaimRow | None:
        row = self.db.execute(self.sql_claim, (holder,)).fetchone()
        return None if row is None else _ClaimRow._make(row)

    def units_of(self, holder: str) -> list[dict]:
        return [_unit(r) for r in self.db.execute(self.sql_units_of, (holder,))]

    def position(self, kind: str, priority: int, claim_id: int) -> int:
        return self.db.execute(self.sql_position, (kind, priority, priority, claim_id)).fetchone()[0]

    def expect_waiting_for(self, kind: str) -> None:
        pass

    def waiting_for(self, kind: str) -> bool:
        return self.db.execute(self.sql_waiting_for, (kind,)).fetchone() is not None

    def most(self, kind: str) -> int:
        return self.db.execute(self.sql_most, (kind,)).fetchone()[0] or 0

    def present_per_node(self, kind: str) -> list[tuple[str, int]]:
        return self.db.execute(self.sql_present_per_node, (kind,)).fetchall()

    def any_simulated(self) -> bool:
        row = self.db.execute(_SQL_ANY_SIMULATED).fetchone()
        return bool(row and row[0])

    def owner_use(self, owner: str) -> list[_Use]:
        return [_Use(owner, n, hk) for n, hk in self.db.execute(self.sql_owner_use, (owner,))]

    def all_use(self) -> list[_Use]:
        return [_Use(o, n, hk, g) for o, n, hk, g in self.db.execute(_SQL_ALL_USE)]

    def insert_claim(self, values: tuple, state: str) -> int:
        granted = values[7] if state == GRANTED else None
        return self.db.execute(_SQL_INSERT_CLAIM, (*values, state, granted)).lastrowid

    def queue(self) -> list[tuple[int, str, int, str]]:
        return self.db.execute(_SQL_QUEUE).fetchall()

    def grant(self, claim_id: int, now: float) -> None:
        self.db.execute(self.sql_grant, (now, claim_id))

    def take(self, holder: str, count: int, kind: str) -> list[dict] | None:
        rows = self.db.execute(_SQL_TAKE_NODE, (count, kind)).fetchall()
        if not rows:
            return None
        return _taken([_unit(r) for r in self.db.execute(
            _SQL_TAKE_UNITS, (holder, rows[0][0], kind, count)).fetchall()], count)

    def unhold(self, holder: str) -> list[str]:
        held = self.db.execute(self.sql_unhold, (holder,)).fetchall()
        if held:
            _free_add_per_node(self._free_add, [(node, kind, present) for _id, node, kind, present in held])
        return [r[0] for r in held]

    def _free_add(self, node: str, kind: str, n: int) -> None:
        self.db.execute(self.sql_free_add, (n, node, kind))

    def keep_ended(self, holder: str, units: str, now: float) -> None:
        self.db.execute(self.sql_keep_ended, (units, now, holder))

    def drop(self, holder: str) -> None:
        self.db.execute(self.sql_drop, (holder,))


def _taken(units: list[dict], count: int) -> list[dict]:
    """The units one statement took for a request of ``count``, in placement order."""
    if len(units) != count:  # cannot happen under the lock; refuse rather than half-allocate
        raise ConflictError("GPU ledger conflict; please retry")
    if count > 1:  # RETURNING gives no order
        units.sort(key=_unit_order)
    return units


def _unit_order(u: dict) -> tuple:
    return u["gpu_index"], u["id"]


def _pg(sql: str) -> str:
    """An SQLite statement above in psycopg's placeholders (``?`` -> ``%s``, ``?N`` -> ``%(pN)s``)."""
    import re

    return re.sub(r"\?(\d+)", r"%(p\1)s", sql).replace("?", "%s")


_PG_CLAIM = _pg(_SQL_CLAIM)
_PG_UNITS_OF = _pg(_SQL_UNITS_OF)
_PG_POSITION = _pg(_SQL_POSITION)
_PG_WAITING_FOR = _pg(_SQL_WAITING_FOR)
_PG_MOST = _pg(_SQL_MOST)
_PG_PRESENT_PER_NODE = _pg(_SQL_PRESENT_PER_NODE)
_PG_OWNER_USE = _pg(_SQL_OWNER_USE)
_PG_INSERT_GRANTED = _pg(_SQL_INSERT_CLAIM)
_PG_INSERT_CLAIM = _PG_INSERT_GRANTED + " RETURNING id"
_PG_GRANT = _pg(_SQL_GRANT)
# best fit, its free count and its units in one statement
_PG_TAKE = (
    "WITH fit AS (UPDATE gpu_node_free SET free = free - %(count)s WHERE kind = %(kind)s AND node = "
    "(SELECT node FROM gpu_node_free WHERE kind = %(kind)s AND free >= %(count)s ORDER BY free, node "
    "LIMIT 1) RETURNING node) "
    # the node as a scalar, not a join: so the units are one lookup in ix_gpu_units_free
    # (kind, node, holder), not a scan of every free unit of the kind
    "UPDATE gpu_units SET holder = %(holder)s WHERE id IN (SELECT id FROM gpu_units "
    "WHERE kind = %(kind)s AND node = (SELECT node FROM fit) AND holder IS NULL AND present "
    f"ORDER BY gpu_index, id LIMIT %(count)s) RETURNING {_U}")
_PG_UNHOLD = _pg(_SQL_UNHOLD)
_PG_FREE_ADD = _pg(_SQL_FREE_ADD)
_PG_DROP = _pg(_SQL_DROP)
# The ledger's lock on PostgreSQL: a transaction-level advisory lock, one per schema (the
# ledger's tables), taken by every decision, whichever path runs it. It writes nothing: the
# lock row's update it replaced left a dead row version and a WAL record per decision, and
# the autovacuum runs that cleared them stole the CPU decisions waited for (p99).
_PG_LOCK_KEY = 0x61696463  # "aidc"
_PG_LOCK = f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY}, hashtext(current_schema()))"


# -- PostgreSQL: one server-side function per decision -------------------------------------
#: bump when a function below changes: a ledger that connects replaces older ones (CREATE OR
#: REPLACE keeps each name and signature; a changed signature or result needs a new name)
PG_FUNCTIONS_VERSION = 3
_PG_FUNCTIONS_TAG = f"aidc GPU ledger functions v{PG_FUNCTIONS_VERSION}"

# The decisions of GPULedger.request, .poll and .release (no quota: those stay in Python),
# the same statements as _PgStore's, in the database: one call, one round trip per decision,
# instead of three, and no per-statement work in the client. Table names are unqualified:
# they resolve, like the ledger's own statements, through the connection's search_path.
_PG_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION aidc_ledger_take(p_holder text, p_count int, p_kind text)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    got json; n int; fitted int;
BEGIN
    -- best fit (fewest free units that still fit, ties by name), counted down, and its
    -- units (lowest GPU indexes): NULL when no node has that many free
    WITH fit AS (
        UPDATE gpu_node_free SET free = free - p_count WHERE kind = p_kind AND node = (
            SELECT node FROM gpu_node_free WHERE kind = p_kind AND free >= p_count
            ORDER BY free, node LIMIT 1)
        RETURNING node),
    took AS (
        UPDATE gpu_units SET holder = p_holder WHERE id IN (
            SELECT id FROM gpu_units WHERE kind = p_kind AND node = (SELECT node FROM fit)
            AND holder IS NULL AND present ORDER BY gpu_index, id LIMIT p_count)
        RETURNING gpu_units.*)
    SELECT json_agg(took ORDER BY took.gpu_index, took.id), count(*), (SELECT count(*) FROM fit)
    INTO got, n, fitted FROM took;
    IF fitted = 0 THEN
        RETURN NULL;
    END IF;
    IF n <> p_count THEN  -- cannot happen under the lock; refuse rather than half-allocate
        RAISE EXCEPTION 'GPU ledger conflict; please retry' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN got;
END $$;

CREATE OR REPLACE FUNCTION aidc_ledger_grant_queued(p_now double precision, p_holder text)
RETURNS json LANGUAGE plpgsql AS $$
-- grant waiting requests in order (a request that does not fit blocks its kind); the
-- units granted now to p_holder, or NULL
DECLARE
    q record; blocked text[] := '{}'; got json; mine json;
BEGIN
    FOR q IN SELECT id, holder, count, kind FROM gpu_claims WHERE state = 'queued'
             ORDER BY priority DESC, id LOOP
        CONTINUE WHEN q.kind = ANY (blocked);
        IF q.count = 0 THEN
            got := '[]'::json;
        ELSE
            got := aidc_ledger_take(q.holder, q.count, q.kind);
        END IF;
        IF got IS NULL THEN
            blocked := blocked || q.kind::text;
            EXIT WHEN cardinality(blocked) >= 3;  -- every kind blocked: nothing more fits
            CONTINUE;
        END IF;
        UPDATE gpu_claims SET state = 'granted', granted = p_now WHERE id = q.id;
        IF q.holder = p_holder THEN
            mine := got;
        END IF;
    END LOOP;
    RETURN mine;
END $$;

CREATE OR REPLACE FUNCTION aidc_ledger_claim(p_holder text)
RETURNS json LANGUAGE plpgsql AS $$
-- the claim of p_holder as the ledger answers it (its units, or its place in the queue)
DECLARE
    c record;
BEGIN
    SELECT id, owner, count, kind, priority, state INTO c FROM gpu_claims WHERE holder = p_holder;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF c.state = 'granted' THEN
        RETURN json_build_object('state', c.state, 'owner', c.owner, 'count', c.count, 'kind', c.kind,
            'units', (SELECT coalesce(json_agg(u ORDER BY u.gpu_index, u.id), '[]'::json)
                      FROM gpu_units u WHERE u.holder = p_holder));
    END IF;
    RETURN json_build_object('state', c.state, 'owner', c.owner, 'count', c.count, 'kind', c.kind,
        'position', (SELECT count(*) FROM gpu_claims WHERE state = 'queued' AND kind = c.kind
                     AND (priority > c.priority OR (priority = c.priority AND id <= c.id))));
END $$;

CREATE OR REPLACE FUNCTION aidc_ledger_request(
    p_holder text, p_holder_kind text, p_owner text, p_groups text, p_count int, p_kind text,
    p_priority int, p_now double precision)
RETURNS json LANGUAGE plpgsql AS $$
-- GPULedger.request without quotas: {"state": "granted", "units": [...]},
-- {"state": "queued", "position": n}, an existing claim (also with owner, count, kind), or
-- {"impossible": [[node, units], ...], "simulated": bool} with nothing changed
DECLARE
    got json; cid int; answer json;
BEGIN
    PERFORM {lock};
    answer := aidc_ledger_claim(p_holder);
    IF answer IS NOT NULL THEN
        RETURN answer;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM gpu_claims WHERE state = 'queued' AND kind = p_kind) THEN
        -- nobody waits for this kind: grant now if it fits, without queueing first
        IF p_count = 0 THEN
            got := '[]'::json;
        ELSE
            got := aidc_ledger_take(p_holder, p_count, p_kind);
        END IF;
        IF got IS NOT NULL THEN
            INSERT INTO gpu_claims (holder, holder_kind, owner, groups, count, kind, priority,
                                    created, state, granted)
            VALUES (p_holder, p_holder_kind, p_owner, p_groups, p_count, p_kind, p_priority,
                    p_now, 'granted', p_now);
            RETURN json_build_object('state', 'granted', 'units', got);
        END IF;
    END IF;
    -- more than any node has: said before anything changes (Python's path finds it after
    -- queueing and rolls back; the outcome is the same)
    IF p_count > 0 AND p_count > coalesce((SELECT max(total) FROM gpu_node_free WHERE kind = p_kind), 0)
       AND p_count > coalesce((SELECT max(n) FROM (SELECT count(*) AS n FROM gpu_units
                               WHERE kind = p_kind AND present GROUP BY node) per_node), 0) THEN
        RETURN json_build_object(
            'impossible', (SELECT coalesce(json_agg(json_build_array(node, n)), '[]'::json) FROM (
                SELECT node, count(*) AS n FROM gpu_units WHERE kind = p_kind AND present
                GROUP BY node) per_node),
            'simulated', coalesce((SELECT simulated FROM gpu_units WHERE present LIMIT 1), false));
    END IF;
    INSERT INTO gpu_claims (holder, holder_kind, owner, groups, count, kind, priority, created, state)
    VALUES (p_holder, p_holder_kind, p_owner, p_groups, p_count, p_kind, p_priority, p_now, 'queued')
    RETURNING id INTO cid;
    got := aidc_ledger_grant_queued(p_now, p_holder);
    IF got IS NOT NULL THEN
        RETURN json_build_object('state', 'granted', 'units', got);
    END IF;
    RETURN json_build_object('state', 'queued', 'position', (
        SELECT count(*) FROM gpu_claims WHERE state = 'queued' AND kind = p_kind
        AND (priority > p_priority OR (priority = p_priority AND id <= cid))));
END $$;

CREATE OR REPLACE FUNCTION aidc_ledger_poll(p_holder text, p_now double precision)
RETURNS json LANGUAGE plpgsql AS $$
-- GPULedger.poll: grant what now fits, then the claim of p_holder (NULL: none)
BEGIN
    PERFORM {lock};
    PERFORM aidc_ledger_grant_queued(p_now, NULL);
    RETURN aidc_ledger_claim(p_holder);
END $$;

CREATE OR REPLACE FUNCTION aidc_ledger_release(p_holder text, p_now double precision)
RETURNS text[] LANGUAGE plpgsql AS $$
-- GPULedger.release: the units p_holder held go back to their nodes' free counts, its
-- claim goes, and waiting requests that now fit are granted; the freed unit ids
DECLARE
    freed text[];
BEGIN
    PERFORM {lock};
    WITH held AS (
        UPDATE gpu_units SET holder = NULL WHERE holder = p_holder RETURNING id, node, kind, present),
    counted AS (
        UPDATE gpu_node_free f SET free = f.free + h.n
        FROM (SELECT node, kind, count(*) AS n FROM held WHERE present GROUP BY node, kind) h
        WHERE f.node = h.node AND f.kind = h.kind)
    SELECT array_agg(id) INTO freed FROM held;
    -- a granted claim becomes an ended holding (what accounting reads), in this transaction
    INSERT INTO gpu_claim_history (holder, holder_kind, owner, groups, count, kind, units,
                                   granted, released)
    SELECT holder, holder_kind, owner, groups, count, kind, to_json(coalesce(freed, '{}'))::text,
           granted, p_now
    FROM gpu_claims WHERE holder = p_holder AND state = 'granted' AND granted IS NOT NULL;
    DELETE FROM gpu_claims WHERE holder = p_holder;
    PERFORM aidc_ledger_grant_queued(p_now, NULL);
    RETURN coalesce(freed, '{}');
END $$;
""".replace("{lock}", _PG_LOCK.removeprefix("SELECT "))

_PG_CALL_REQUEST = "SELECT aidc_ledger_request(%s, %s, %s, %s, %s, %s, %s, %s)"
_PG_CALL_POLL = "SELECT aidc_ledger_poll(%s, %s)"
_PG_CALL_RELEASE = "SELECT aidc_ledger_release(%s, %s)"
# the function created last carries the version, in its comment
_PG_FUNCTIONS_MARK = "aidc_ledger_release(text, double precision)"
_PG_FUNCTIONS_PRESENT = (
    "SELECT obj_description(p.oid, 'pg_proc') FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    "WHERE p.proname = 'aidc_ledger_release' AND n.nspname = current_schema()")


def _install_pg_functions(db, log) -> bool:
    """Create (or replace, when an older aidc made them) the decision functions in the
    schema of the ledger's tables, under the ledger's lock so that processes starting
    together do it once. False when the database refuses (then decisions keep the
    pipeline of :class:`_PgTransaction`)."""
    import psycopg

    def current() -> bool:
        row = db.execute(_PG_FUNCTIONS_PRESENT, prepare=False).fetchone()
        return row is not None and row[0] == _PG_FUNCTIONS_TAG

    try:
        if current():
            return True
        with db.transaction():
            db.execute(_PG_LOCK, prepare=False)
            if not current():
                db.execute(_PG_FUNCTIONS, prepare=False)
                db.execute(f"COMMENT ON FUNCTION {_PG_FUNCTIONS_MARK} IS '{_PG_FUNCTIONS_TAG}'", prepare=False)
        return True
    except psycopg.Error as e:
        log.warning("aidc: could not create the GPU ledger's functions in the database (%s); "
                    "decisions take three round trips instead of one", e)
        return False


class _PgStore(_SqliteStore):
    """:class:`_SAStore` on the psycopg connection itself: the same statements as on
    SQLite, in psycopg's placeholders (psycopg prepares them on the server once used a few
    times), in the pipeline of :class:`_PgTransaction`: a statement's answer is waited for
    only when the decision reads it."""

    __slots__ = ("waiting",)

    sql_claim = _PG_CLAIM
    sql_units_of = _PG_UNITS_OF
    sql_position = _PG_POSITION
    sql_waiting_for = _PG_WAITING_FOR
    sql_most = _PG_MOST
    sql_present_per_node = _PG_PRESENT_PER_NODE
    sql_owner_use = _PG_OWNER_USE
    sql_grant = _PG_GRANT
    sql_unhold = _PG_UNHOLD
    sql_free_add = _PG_FREE_ADD
    sql_drop = _PG_DROP
    sql_keep_ended = _pg(_SQL_KEEP_ENDED)

    def __init__(self, db):
        super().__init__(db)
        self.waiting = None

    def expect_waiting_for(self, kind: str) -> None:
        self.waiting = (kind, self.db.execute(_PG_WAITING_FOR, (kind,)))

    def waiting_for(self, kind: str) -> bool:
        ahead, self.waiting = self.waiting, None
        if ahead is not None and ahead[0] == kind:
            return ahead[1].fetchone() is not None
        return self.db.execute(_PG_WAITING_FOR, (kind,)).fetchone() is not None

    def insert_claim(self, values: tuple, state: str) -> int | None:
        if state == GRANTED:  # its id is never read: not waited for (None)
            self.db.execute(_PG_INSERT_GRANTED, (*values, state, values[7]))
            return None
        return self.db.execute(_PG_INSERT_CLAIM, (*values, state, None)).fetchone()[0]

    def take(self, holder: str, count: int, kind: str) -> list[dict] | None:
        units = [_unit(r) for r in self.db.execute(
            _PG_TAKE, {"holder": holder, "kind": kind, "count": count}).fetchall()]
        if not units:  # no node has that many free
            return None
        return _taken(units, count)


@dataclass
class _Use:
    owner: str
    count: int
    holder_kind: str
    groups: str = "[]"


class _LockedTransaction:
    """``with`` block: one transaction that first takes the ledger's lock (the lock row's
    update; on PostgreSQL :data:`_PG_LOCK`; on SQLite the write lock of ``BEGIN IMMEDIATE``)."""

    def __init__(self, engine, store=None):
        self.engine = engine
        self.store = store
        # SQLite's BEGIN IMMEDIATE (make_engine) already takes the one write lock;
        # PostgreSQL's decisions take an advisory lock (_PG_LOCK), whichever path runs them
        self.bump = {"sqlite": None, "postgresql": sa.text(_PG_LOCK)}.get(engine.dialect.name, _BUMP)

    def __enter__(self):
        self.conn = self.engine.connect()
        try:
            self.tx = self.conn.begin()
            if self.bump is not None:
                self.conn.execute(self.bump)
        except BaseException:
            self.conn.close()
            raise
        return self.conn if self.store is None else self.store(self.conn)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.tx.commit()
            else:
                self.tx.rollback()
        finally:
            self.conn.close()


class _SqliteTransaction:
    """``with`` block: one ``BEGIN IMMEDIATE`` transaction (SQLite's one write lock, shared
    with every other process on the file) on a driver connection this ledger keeps; a
    thread lock lets one thread of the process use it at a time. Reusable, not reentrant."""

    def __init__(self, engine):
        # a connection of the engine's pool (so made by make_engine's connect hook: WAL,
        # synchronous=NORMAL, busy timeout, autocommit mode), kept for the ledger's life
        self.pooled = engine.raw_connection()
        self.db: sqlite3.Connection = self.pooled.driver_connection
        self.store = _SqliteStore(self.db)
        self.lock = threading.Lock()

    def __enter__(self) -> _SqliteStore:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.store

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise
            elif self.db.in_transaction:
                self.db.execute("ROLLBACK")
        finally:
            self.lock.release()


class _PgTransaction:
    """``with`` block: one transaction on a psycopg connection this ledger keeps, in
    pipeline mode: ``BEGIN``, the ledger's advisory lock and the decision's first read leave
    in one round trip, and writes whose answer the decision does not need wait for the
    next read or the ``COMMIT``, so a decision costs 2-4 round trips instead of 6-8 (on a
    busy machine each round trip is a wait for the server process to be scheduled). The
    lock is held until ``COMMIT``; a thread lock lets one thread of the process use
    the connection at a time. Reusable, not reentrant.

    A connection the server dropped (a restart, a failover) shows at the decision's first
    read; :meth:`lost` tells the ledger, which reconnects and runs the decision again
    (decisions are idempotent per holder)."""

    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.pooled = None
        self.reconnect()

    def reconnect(self) -> None:
        if self.pooled is not None:
            self.pooled.invalidate()
        self.pooled = self.engine.raw_connection()
        self.db = self.pooled.driver_connection
        self.db.autocommit = True  # the transaction is this block's own BEGIN ... COMMIT
        self.store = _PgStore(self.db)

    def call(self, sql: str, params: tuple):
        """One decision as one statement, a server-side function (its own transaction:
        the connection is in autocommit mode), prepared on the server; its answer."""
        import psycopg

        with self.lock:
            try:
                return self.db.execute(sql, params, prepare=True).fetchone()[0]
            except psycopg.errors.SerializationFailure as e:
                raise ConflictError("GPU ledger conflict; please retry") from e

    def lost(self, error: BaseException) -> bool:
        """Whether ``error`` means that the server dropped the connection."""
        import psycopg

        return isinstance(error, psycopg.OperationalError) and self.db.closed

    def __enter__(self) -> _PgStore:
        self.lock.acquire()
        self.store.waiting = None  # an answer sent ahead in an earlier transaction is stale
        try:
            self.pipeline = self.db.pipeline()
            self.pipeline.__enter__()
            self.db.execute("BEGIN", prepare=False)
            self.db.execute(_PG_LOCK)
        except BaseException:
            try:
                self._leave_pipeline()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            finally:
                self.lock.release()
            raise
        return self.store

    def _leave_pipeline(self) -> None:
        pipeline, self.pipeline = getattr(self, "pipeline", None), None
        if pipeline is not None and not self.db.closed:
            pipeline.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb):
        import psycopg

        try:
            if exc_type is None:
                try:
                    # on a dropped connection this raises, and the decision runs again
                    self.db.execute("COMMIT", prepare=False)
                    self._leave_pipeline()  # waits for every answer, the COMMIT's too
                except psycopg.Error:
                    self._abandon()  # a statement failed: the COMMIT was skipped
                    raise
            else:
                self._abandon()
        finally:
            self.pipeline = None
            self.lock.release()

    def _abandon(self) -> None:
        """End a failed decision's transaction: drop the answers still due, ROLLBACK
        (errors here are not reported: the one that ended the decision is)."""
        import psycopg

        for step in (self._leave_pipeline, lambda: self.db.execute("ROLLBACK", prepare=False)):
            if self.db.closed:
                return
            try:
                step()
            except psycopg.Error:
                pass


def make_engine(url: str, busy_timeout_ms: int = 30000) -> sa.Engine:
    """An engine whose SQLite transactions take the write lock at BEGIN (no upgrade deadlocks)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # no WAL checkpoint inside a decision (it fsyncs: 10-70 ms on the benchmark machine,
        # once every ~100 decisions); a thread of this process does them (_start_checkpointer)
        cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    if engine.url.database and engine.url.database != ":memory:":
        _start_checkpointer(engine, engine.url.database)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_checkpointers: dict[str, threading.Thread] = {}
_checkpointers_lock = threading.Lock()


def _start_checkpointer(engine: sa.Engine, path: str, interval: float = 1.0) -> None:
    """A daemon thread per database file and process: a PASSIVE WAL checkpoint every
    ``interval`` seconds (it never waits for or blocks a writer). It ends with the last
    engine of that file in this process."""
    engines = _checkpoint_engines.setdefault(path, weakref.WeakSet())
    engines.add(engine)

    def run() -> None:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            while True:
                time.sleep(interval)
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
                with _checkpointers_lock:
                    if not engines:
                        del _checkpointers[path]
                        return
        finally:
            db.close()

    with _checkpointers_lock:
        if path not in _checkpointers:
            _checkpointers[path] = threading.Thread(target=run, name="aidc-ledger-checkpoint", daemon=True)
            _checkpointers[path].start()


_checkpoint_engines: dict[str, "weakref.WeakSet[sa.Engine]"] = {}
