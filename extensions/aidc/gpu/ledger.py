"""The allocation ledger: the one record of which server, job or deployment holds which GPU.

Every holder (``server:alice/``, ``job:42``, ``deployment:mnist``) asks the ledger with
:meth:`GPULedger.request`. The answer is at once *granted* (with its units), *queued*
(with its position), or an error: more GPUs than the platform has, or over a quota,
with the quota in the message. Queued requests are granted in order (higher priority
first, then first come) as holders :meth:`release` their units.

Durable and safe across processes: the ledger is tables in the platform database
(SQLite by default, PostgreSQL by URL). Each decision is one transaction that first
takes the ledger's lock row, so the hub, the jobs service and the models service never
hand one unit to two holders; the unit row itself has a single ``holder`` column, so a
double allocation cannot even be written.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass, field

import sqlalchemy as sa
from traitlets import Dict, Integer, Unicode
from traitlets.config import LoggingConfigurable

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

lock = sa.Table("gpu_ledger_lock", metadata, sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("version", sa.Integer, nullable=False))

# The statements of every decision, built once: building a statement and its cache key on
# each call cost ~150 us apiece (an order of magnitude more than running it).
_B = sa.bindparam
_BUMP = lock.update().where(lock.c.id == 1).values(version=lock.c.version + 1)
_WAITING_FOR = sa.select(claims.c.id).where(claims.c.state == QUEUED, claims.c.kind == _B("kind")).limit(1)
_CLAIM = sa.select(claims).where(claims.c.holder == _B("holder"))
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

    @property
    def visible_devices(self) -> str:
        return ",".join(u["visible_id"] for u in self.units)


def holder_kind(holder: str) -> str:
    return holder.split(":", 1)[0]


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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.db_url:
            raise ValueError("GPULedger needs db_url")
        self.engine = make_engine(self.db_url, self.busy_timeout_ms)
        metadata.create_all(self.engine)
        for index in (*gpu_units.indexes, *claims.indexes):  # tables made by an older aidc
            index.create(self.engine, checkfirst=True)
        with self.engine.begin() as c:
            if c.execute(sa.select(lock.c.id)).first() is None:
                c.execute(lock.insert().values(id=1, version=0))
        with self._tx() as c:
            if c.execute(sa.select(node_free.c.node).limit(1)).first() is None:
                self._count_free(c)  # first start after the upgrade (or an empty ledger)

    # -- transactions ---------------------------------------------------------------
    def _tx(self):
        return _LockedTransaction(self.engine)

    # -- inventory ------------------------------------------------------------------
    def sync_inventory(self, inventory: Inventory, node: str | None = None) -> None:
        """Make the ledger's units those of ``inventory`` (held units keep their holder)."""
        node = node or self.node
        units = inventory.units()
        with self._tx() as c:
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
        groups = sorted(set(groups or []))
        if priority is None:
            priority = max((int(self.group_priority.get(g, 0)) for g in groups), default=0)
        with self._tx() as c:
            row = c.execute(_CLAIM, {"holder": holder}).first()
            if row is not None:
                return self._claim(c, row)
            quotas = self._has_quota(owner, groups)
            if count and quotas:
                self._check_possible(c, count, kind)  # "impossible" is said before "over quota"
            if quotas:
                self._check_quotas(c, holder, owner, groups, count)
            values = dict(holder=holder, holder_kind=holder_kind(holder), owner=owner,
                          groups=json.dumps(groups), count=count, kind=kind, priority=priority,
                          created=time.time())
            if c.execute(_WAITING_FOR, {"kind": kind}).first() is None:
                # nobody waits for this kind: grant now if it fits, without queueing first
                units = [] if count == 0 else self._allocate(c, holder, count, kind)
                if units is not None:
                    c.execute(claims.insert(), dict(values, state=GRANTED, granted=values["created"]))
                    return Claim(holder=holder, state=GRANTED, units=units, owner=owner,
                                 count=count, kind=kind)
            claim_id = c.execute(claims.insert(), dict(values, state=QUEUED)).inserted_primary_key[0]
            granted = self._grant_queued(c)
            if holder in granted:
                return Claim(holder=holder, state=GRANTED, units=granted[holder], owner=owner,
                             count=count, kind=kind)
            if count and not quotas:
                self._check_possible(c, count, kind)  # raises: the transaction is rolled back
            position = c.execute(_POSITION, {"kind": kind, "priority": priority, "id": claim_id}).scalar_one()
            return Claim(holder=holder, state=QUEUED, position=position, owner=owner, count=count, kind=kind)

    def poll(self, holder: str) -> Claim | None:
        """The current claim of ``holder`` (granting queued requests that now fit)."""
        with self._tx() as c:
            self._grant_queued(c)
            row = c.execute(_CLAIM, {"holder": holder}).first()
            return self._claim(c, row) if row is not None else None

    def release(self, holder: str) -> list[str]:
        """Free everything ``holder`` holds or waits for; returns the freed unit ids."""
        with self._tx() as c:
            held = c.execute(_HELD, {"holder": holder}).fetchall()
            freed = [r.id for r in held]
            if held:
                c.execute(_UNHOLD, {"b_holder": holder})
                per_node: dict[tuple[str, str], int] = {}
                for r in held:
                    if r.present:
                        per_node[r.node, r.kind] = per_node.get((r.node, r.kind), 0) + 1
                for (node, kind), n in per_node.items():
                    c.execute(_FREE_ADD, {"b_node": node, "b_kind": kind, "b_n": n})
            c.execute(_DROP, {"holder": holder})
            self._grant_queued(c)
        if freed:
            self.log.info("aidc: %s released %s", holder, ", ".join(freed))
        return freed

    def reconcile(self, alive: set[str], holder_kind_: str) -> list[str]:
        """Release every claim of ``holder_kind_`` whose holder is not in ``alive``."""
        with self._tx() as c:
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
            rows = c.execute(sa.select(claims).order_by(claims.c.id)).fetchall()
            return [self._claim(c, r) for r in rows]

    def queue(self) -> list[Claim]:
        return [cl for cl in self.claims() if cl.state == QUEUED]

    # -- internals ------------------------------------------------------------------
    def _claim(self, c, row) -> Claim:
        units = []
        position = 0
        if row.state == GRANTED:
            units = [dict(r._mapping) for r in c.execute(_UNITS_OF, {"holder": row.holder})]
        else:
            position = c.execute(_POSITION, {"kind": row.kind, "priority": row.priority, "id": row.id}).scalar_one()
        return Claim(holder=row.holder, state=row.state, units=units, position=position,
                     owner=row.owner, count=row.count, kind=row.kind)

    def _check_possible(self, c, count: int, kind: str) -> None:
        if count <= (c.execute(_MOST, {"kind": kind}).scalar() or 0):
            return
        per_node = c.execute(
            sa.select(gpu_units.c.node, sa.func.count()).where(gpu_units.c.kind == kind, gpu_units.c.present)
            .group_by(gpu_units.c.node)
        ).fetchall()
        most = max((n for _, n in per_node), default=0)
        if count > most:
            simulated = c.execute(sa.select(gpu_units.c.simulated).where(gpu_units.c.present).limit(1)).scalar()
            where = "any node of this platform" if len(per_node) > 1 else "this platform"
            raise ImpossibleRequestError(
                f"asked for {count} {KIND_LABEL[kind]}, but {where} has {most}"
                f"{' (simulated)' if simulated else ''}; ask for fewer"
            )

    def _quota_for(self, owner: str) -> dict:
        return {**self.default_quota, **self.user_quotas.get(owner, {})}

    def _has_quota(self, owner: str, groups: list[str]) -> bool:
        return bool(self._quota_for(owner)) or any(g in self.group_quotas for g in groups)

    def _check_quotas(self, c, holder: str, owner: str, groups: list[str], count: int) -> None:
        hk = holder_kind(holder)
        if any(g in self.group_quotas for g in groups):
            rows = c.execute(_ALL_USE).fetchall()
        else:  # only the owner's own claims count (index on owner)
            rows = [_Use(owner, r.count, r.holder_kind) for r in c.execute(_OWNER_USE, {"owner": owner})]

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

        check(f"user {owner}", self._quota_for(owner), usage(lambda r: r.owner == owner))
        for g in groups:
            if g in self.group_quotas:
                check(f"group {g}", self.group_quotas[g], usage(lambda r, g=g: g in json.loads(r.groups)))

    def _grant_queued(self, c) -> dict[str, list[dict]]:
        """Grant waiting requests in order; a request that does not fit blocks its kind.

        Returns the units granted now, per holder.
        """
        blocked: set[str] = set()
        granted: dict[str, list[dict]] = {}
        for row in c.execute(_QUEUE).fetchall():
            if row.kind in blocked:
                continue
            units = [] if row.count == 0 else self._allocate(c, row.holder, row.count, row.kind)
            if units is None:
                blocked.add(row.kind)
                continue
            c.execute(_GRANT, {"b_id": row.id, "b_now": time.time()})
            granted[row.holder] = units
        return granted

    def _allocate(self, c, holder: str, count: int, kind: str) -> list[dict] | None:
        """Give ``count`` free units of ``kind`` on one node to ``holder`` (best fit).

        Returns the units, or None when no node has that many free.
        """
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


@dataclass
class _Use:
    owner: str
    count: int
    holder_kind: str
    groups: str = "[]"


class _LockedTransaction:
    """``with`` block: one transaction that first takes the ledger's lock row."""

    def __init__(self, engine):
        self.engine = engine
        # SQLite's BEGIN IMMEDIATE (make_engine) already takes the one write lock
        self.bump = engine.dialect.name != "sqlite"

    def __enter__(self):
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        if self.bump:
            self.conn.execute(_BUMP)
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.tx.commit()
            else:
                self.tx.rollback()
        finally:
            self.conn.close()


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
