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
import time
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
)

lock = sa.Table("gpu_ledger_lock", metadata, sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("version", sa.Integer, nullable=False))


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
        with self.engine.begin() as c:
            if c.execute(sa.select(lock.c.id)).first() is None:
                c.execute(lock.insert().values(id=1, version=0))

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
            row = c.execute(sa.select(claims).where(claims.c.holder == holder)).first()
            if row is not None:
                return self._claim(c, row)
            if count:
                self._check_possible(c, count, kind)
            self._check_quotas(c, holder, owner, groups, count)
            now = time.time()
            c.execute(claims.insert().values(
                holder=holder, holder_kind=holder_kind(holder), owner=owner,
                groups=json.dumps(groups), count=count, kind=kind, priority=priority,
                state=QUEUED, created=now,
            ))
            self._grant_queued(c)
            row = c.execute(sa.select(claims).where(claims.c.holder == holder)).first()
            return self._claim(c, row)

    def poll(self, holder: str) -> Claim | None:
        """The current claim of ``holder`` (granting queued requests that now fit)."""
        with self._tx() as c:
            self._grant_queued(c)
            row = c.execute(sa.select(claims).where(claims.c.holder == holder)).first()
            return self._claim(c, row) if row is not None else None

    def release(self, holder: str) -> list[str]:
        """Free everything ``holder`` holds or waits for; returns the freed unit ids."""
        with self._tx() as c:
            freed = [r.id for r in c.execute(sa.select(gpu_units.c.id).where(gpu_units.c.holder == holder))]
            c.execute(gpu_units.update().where(gpu_units.c.holder == holder).values(holder=None))
            c.execute(claims.delete().where(claims.c.holder == holder))
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

    def holdings(self, owner: str) -> dict:
        """What ``owner`` holds and waits for (for the quota message and the API)."""
        mine = [cl for cl in self.claims() if cl.owner == owner]
        return {
            "gpus": sum(cl.count for cl in mine if cl.state == GRANTED),
            "servers": sum(1 for cl in mine if holder_kind(cl.holder) == "server"),
            "jobs": sum(1 for cl in mine if holder_kind(cl.holder) == "job"),
        }

    # -- internals ------------------------------------------------------------------
    def _claim(self, c, row) -> Claim:
        units = []
        position = 0
        if row.state == GRANTED:
            units = [dict(r._mapping) for r in c.execute(
                sa.select(gpu_units).where(gpu_units.c.holder == row.holder).order_by(gpu_units.c.gpu_index, gpu_units.c.id))]
        else:
            position = c.execute(sa.select(sa.func.count()).select_from(claims).where(
                claims.c.state == QUEUED, claims.c.kind == row.kind,
                sa.or_(claims.c.priority > row.priority,
                       sa.and_(claims.c.priority == row.priority, claims.c.id <= row.id)),
            )).scalar_one()
        return Claim(holder=row.holder, state=row.state, units=units, position=position,
                     owner=row.owner, count=row.count, kind=row.kind)

    def _check_possible(self, c, count: int, kind: str) -> None:
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

    def _check_quotas(self, c, holder: str, owner: str, groups: list[str], count: int) -> None:
        hk = holder_kind(holder)
        rows = c.execute(sa.select(claims.c.owner, claims.c.groups, claims.c.count, claims.c.holder_kind)).fetchall()

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

    def _grant_queued(self, c) -> None:
        """Grant waiting requests in order; a request that does not fit blocks its kind."""
        blocked: set[str] = set()
        queued = c.execute(sa.select(claims).where(claims.c.state == QUEUED)
                           .order_by(claims.c.priority.desc(), claims.c.id)).fetchall()
        for row in queued:
            if row.kind in blocked:
                continue
            if row.count == 0 or self._allocate(c, row.holder, row.count, row.kind):
                c.execute(claims.update().where(claims.c.id == row.id).values(state=GRANTED, granted=time.time()))
            else:
                blocked.add(row.kind)

    def _allocate(self, c, holder: str, count: int, kind: str) -> bool:
        """Give ``count`` free units of ``kind`` on one node to ``holder`` (best fit)."""
        free = (
            sa.select(gpu_units.c.node, sa.func.count().label("n"))
            .where(gpu_units.c.kind == kind, gpu_units.c.holder.is_(None), gpu_units.c.present)
            .group_by(gpu_units.c.node)
            .having(sa.func.count() >= count)
            .order_by(sa.func.count(), gpu_units.c.node)
            .limit(1)
        )
        node = c.execute(free).first()
        if node is None:
            return False
        ids = [r.id for r in c.execute(
            sa.select(gpu_units.c.id).where(gpu_units.c.node == node.node, gpu_units.c.kind == kind,
                                            gpu_units.c.holder.is_(None), gpu_units.c.present)
            .order_by(gpu_units.c.gpu_index, gpu_units.c.id).limit(count))]
        done = c.execute(gpu_units.update().where(gpu_units.c.id.in_(ids), gpu_units.c.holder.is_(None))
                         .values(holder=holder)).rowcount
        if done != count:  # cannot happen under the lock; refuse rather than half-allocate
            raise ConflictError("GPU ledger conflict; please retry")
        return True


class _LockedTransaction:
    """``with`` block: one transaction that first takes the ledger's lock row."""

    def __init__(self, engine):
        self.engine = engine

    def __enter__(self):
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        self.conn.execute(lock.update().where(lock.c.id == 1).values(version=lock.c.version + 1))
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
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
