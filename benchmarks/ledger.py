"""GPU ledger benchmark: latency of each allocation decision, aidc vs a naive in-memory allocator.

What it does
------------
1. Builds a fresh :class:`aidc.gpu.ledger.GPULedger` in a new SQLite file (WAL, the
   default) under a temporary folder and registers ``--nodes`` simulated nodes of
   ``--gpus-per-node`` whole GPUs each (``inventory.simulated``), 8,000 units by default.
2. Generates one fixed workload (seeded): ``--requests`` requests (70 % 1 GPU, 20 % 2 GPUs,
   10 % 4 GPUs, from 200 owners, as ``job:N`` holders) interleaved with releases of random
   outstanding holders (granted or still queued). The outstanding demand follows a slow wave
   (three periods) between 68 % and 102 % of the cluster, so the cluster sits around 70-90 %
   full (mean ~80 %) and, near the crests, requests queue (the ledger's queue is first come
   first served and a request that does not fit blocks those behind it).
3. Replays that workload, one operation at a time, against the ledger *and* against the
   baseline: a dict of free GPU indexes per node with the same decision rules (best fit: the
   node with the fewest free units that still fit, ties by node name; lowest GPU indexes
   first; FIFO queue with head-of-line blocking), no durability, no lock. Both see the same
   operation back to back, so machine noise hits both equally. Only the ``request`` and
   ``release`` calls themselves are timed (``time.perf_counter_ns``).
4. Checks correctness outside the timed calls:
   - every answer of the ledger (granted / queued, and the node and GPU indexes granted)
     equals the baseline's: both make the same decisions;
   - a shadow record of unit -> holder, built only from what the ledger says (units in a
     granted claim, ids returned by ``release``, and units of claims granted from the queue,
     read from the tables after each operation), never sees a unit given to a holder while
     another holder still has it: no unit was ever given to two holders;
   - at the end, over the ledger's tables: each granted claim holds exactly ``count`` units,
     all on one node; queued claims hold none; no unit has a holder without a granted claim;
     the tables equal the shadow record and the baseline's state.

Prints p50/p90/p99/max latency (ms) and operations/s for ``request`` and ``release`` of
each allocator, the ratio aidc/baseline, and the goal check (p99 allocation decision < 1 ms
on SQLite, < 2 ms on a database server).

With ``--db-url postgresql://...`` a second ledger on that database runs the same
workload side by side with the SQLite one, operation by operation (SQLite, PostgreSQL,
baseline back to back, so machine noise hits all three alike), with the same checks. Its
tables go into a schema of their own (``aidc_bench_<pid>``), dropped at the end: the
database's other tables are not touched.

Usage: ``.venv/bin/python benchmarks/ledger.py [--nodes 1000] [--gpus-per-node 8]
[--requests 10000] [--seed 1] [--ledger MODULE:CLASS] [--db-url URL | --postgres-here]
[--pg-pipeline]``
(``--postgres-here``: a throwaway local server, as the tests start one); ``--ledger``
measures another ``GPULedger`` (sub)class, e.g. a proposed change, against the same
workload and checks. Exit status 0 when the run is consistent (even if the latency goal is
missed), 1 when a consistency check fails. 3-4 minutes with the defaults on 2 cores,
nearly all of it in the ledger's own calls.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "extensions"))

from aidc.gpu.inventory import simulated  # noqa: E402
from aidc.gpu.ledger import GRANTED, QUEUED, GPULedger  # noqa: E402

GOAL_MS = {"sqlite": 1.0, "postgresql": 2.0}


# -- workload -----------------------------------------------------------------------------
@dataclass
class Op:
    kind: str  # "request" or "release"
    holder: str
    owner: str = ""
    count: int = 0


def make_workload(n_requests: int, capacity: int, seed: int) -> list[Op]:
    """The operations, fixed in advance so both allocators replay exactly the same ones.

    Demand (GPUs asked for by outstanding holders, granted or queued) chases a target that
    moves as a slow wave between 70 % and 102 % of ``capacity``: below the target the next
    operation is a request, above it a release of a random outstanding holder.
    """
    rng = random.Random(seed)
    ops: list[Op] = []
    outstanding: list[tuple[str, int]] = []  # (holder, count), removed by swap-and-pop
    demand = 0
    issued = 0
    waves = 3
    while issued < n_requests:
        phase = issued / max(1, n_requests)
        # fill to ~85 % first, then oscillate 68 %..102 % of the cluster (near the crests
        # the biggest requests no longer fit and, first come first served, some queue)
        level = 0.85 + 0.17 * math.sin(2 * math.pi * waves * phase)
        target = capacity * level
        if demand < target or not outstanding:
            count = rng.choices((1, 2, 4), weights=(70, 20, 10))[0]
            holder = f"job:{issued}"
            ops.append(Op("request", holder, f"user{rng.randrange(200):03d}", count))
            outstanding.append((holder, count))
            demand += count
            issued += 1
        else:
            i = rng.randrange(len(outstanding))
            outstanding[i], outstanding[-1] = outstanding[-1], outstanding[i]
            holder, count = outstanding.pop()
            ops.append(Op("release", holder))
            demand -= count
    return ops


# -- baseline -----------------------------------------------------------------------------
@dataclass
class Decision:
    state: str
    node: str | None = None
    gpus: tuple[int, ...] = ()


class NaiveAllocator:
    """Free GPU indexes per node in a dict; same rules as the ledger, nothing durable."""

    def __init__(self, nodes: list[str], gpus_per_node: int):
        self.free: dict[str, list[int]] = {n: list(range(gpus_per_node)) for n in nodes}
        self.held: dict[str, tuple[str, list[int]]] = {}
        self.queue: list[tuple[str, int]] = []  # FIFO (one kind, one priority here)
        self.claims: dict[str, int] = {}

    def _allocate(self, holder: str, count: int) -> bool:
        best = None
        best_n = 0
        for node, gpus in self.free.items():  # best fit: fewest free that fit, then name
            n = len(gpus)
            if n >= count and (best is None or n < best_n or (n == best_n and node < best)):
                best, best_n = node, n
        if best is None:
            return False
        gpus = self.free[best]
        gpus.sort()
        taken, self.free[best] = gpus[:count], gpus[count:]
        self.held[holder] = (best, taken)
        return True

    def _grant_queued(self) -> None:
        while self.queue:
            holder, count = self.queue[0]
            if not self._allocate(holder, count):
                return  # head-of-line blocking, as the ledger (one kind)
            self.queue.pop(0)

    def request(self, holder: str, count: int) -> Decision:
        if holder not in self.claims:
            self.claims[holder] = count
            self.queue.append((holder, count))
            self._grant_queued()
        return self.decision(holder)

    def release(self, holder: str) -> list[int]:
        self.claims.pop(holder, None)
        freed: list[int] = []
        if holder in self.held:
            node, gpus = self.held.pop(holder)
            self.free[node].extend(gpus)
            freed = gpus
        else:
            self.queue = [q for q in self.queue if q[0] != holder]
        self._grant_queued()
        return freed

    def decision(self, holder: str) -> Decision:
        if holder in self.held:
            node, gpus = self.held[holder]
            return Decision(GRANTED, node, tuple(sorted(gpus)))
        return Decision(QUEUED)


# -- statistics ---------------------------------------------------------------------------
def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e6


@dataclass
class Series:
    ns: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        s = sorted(self.ns)
        total = sum(s) / 1e9
        return {
            "n": len(s),
            "p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99),
            "max": s[-1] / 1e6 if s else float("nan"),
            "per_s": len(s) / total if total else float("nan"),
        }


# -- consistency ----------------------------------------------------------------------------
def unit_gpu(unit_id: str) -> tuple[str, int]:
    node, gpu = unit_id.split("/", 1)
    return node, int(gpu.removeprefix("gpu"))


def decision_of(unit_ids: list[str]) -> Decision:
    nodes = {unit_gpu(u)[0] for u in unit_ids}
    node = nodes.pop() if len(nodes) == 1 else f"<{len(nodes)} nodes>"
    return Decision(GRANTED, node, tuple(sorted(unit_gpu(u)[1] for u in unit_ids)))


class Shadow:
    """unit -> holder, built only from the ledger's own answers and tables."""

    def __init__(self, db):
        self.owner_of: dict[str, str] = {}
        self.units_of: dict[str, list[str]] = {}
        self.queued: set[str] = set()
        self.grants = 0
        self.violations: list[str] = []
        self.db = db  # a second, read-only reader (SQLite WAL, or an autocommit psycopg connection)
        self.paramstyle = "%s" if type(db).__module__.startswith("psycopg") else "?"

    def execute(self, sql: str, params: tuple = ()):
        return self.db.execute(sql.replace("?", self.paramstyle), params)

    def grant(self, holder: str, unit_ids: list[str]) -> None:
        for uid in unit_ids:
            other = self.owner_of.get(uid)
            if other is not None and other != holder:
                self.violations.append(f"unit {uid} given to {holder} while {other} still holds it")
                self.units_of[other] = [u for u in self.units_of.get(other, []) if u != uid]
            self.owner_of[uid] = holder
        self.units_of[holder] = list(unit_ids)
        self.queued.discard(holder)
        self.grants += 1

    def release(self, holder: str, freed: list[str]) -> None:
        expected = sorted(self.units_of.pop(holder, []))
        if sorted(freed) != expected:
            self.violations.append(f"release of {holder} freed {sorted(freed)}, it held {expected}")
        for uid in set(freed) | set(expected):
            if self.owner_of.get(uid) == holder:
                del self.owner_of[uid]
        self.queued.discard(holder)

    def catch_up(self) -> list[str]:
        """Claims the ledger granted from its queue during the last operation."""
        if not self.queued:
            return []
        still = {h for (h,) in self.execute("SELECT holder FROM gpu_claims WHERE state = ?", (QUEUED,))}
        granted = sorted(self.queued - still, key=lambda h: int(h.split(":")[1]))
        for h in granted:
            ids = [uid for (uid,) in self.execute(
                "SELECT id FROM gpu_units WHERE holder = ? ORDER BY gpu_index, id", (h,))]
            self.grant(h, ids)
        return granted

    def final_check(self, naive: NaiveAllocator) -> list[str]:
        problems = []
        units = self.execute("SELECT id, node, holder FROM gpu_units WHERE present").fetchall()
        rows = self.execute("SELECT holder, count, state FROM gpu_claims").fetchall()
        claims = {h: (c, s) for h, c, s in rows}
        held: dict[str, list[tuple[str, str]]] = {}
        for uid, node, holder in units:
            if holder is not None:
                held.setdefault(holder, []).append((uid, node))
        for holder, got in held.items():
            c = claims.get(holder)
            if c is None or c[1] != GRANTED:
                problems.append(f"{holder} holds {len(got)} units without a granted claim")
            elif len(got) != c[0]:
                problems.append(f"{holder} holds {len(got)} units, its claim is for {c[0]}")
            if len({n for _, n in got}) != 1:
                problems.append(f"{holder} holds units on several nodes")
        for holder, (count, state) in claims.items():
            if state == QUEUED and holder in held:
                problems.append(f"queued {holder} holds units")
            if state == GRANTED and count and holder not in held:
                problems.append(f"granted {holder} holds no unit")
        table = {uid: h for uid, _n, h in units if h is not None}
        if table != self.owner_of:
            problems.append("the tables differ from what the ledger answered during the run")
        base = {f"{node}/gpu{g}": h for h, (node, gpus) in naive.held.items() for g in gpus}
        if table != base:
            problems.append("the ledger's final state differs from the baseline's")
        queued = {h for h, (_c, s) in claims.items() if s == QUEUED}
        if queued != {h for h, _ in naive.queue}:
            problems.append("the ledger's queue differs from the baseline's")
        return problems


# -- run ----------------------------------------------------------------------------------
def load_class(spec: str) -> type:
    module, _, name = spec.partition(":")
    if module.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module).stem, module)
        mod = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    cls = getattr(mod, name or "GPULedger")
    if not issubclass(cls, GPULedger):
        raise SystemExit(f"{spec} is not a GPULedger")
    return cls


@dataclass
class Contender:
    """One ledger under test, with its own database, shadow record and timings."""

    label: str  # "sqlite" or "postgresql"
    ledger: GPULedger
    shadow: Shadow
    times: dict = field(default_factory=lambda: {"request": Series(), "release": Series()})
    mismatches: list[str] = field(default_factory=list)
    n_mismatch: int = 0
    queued_at_request: int = 0
    max_queue: int = 0
    setup_s: float = 0.0
    occupancy: list[float] = field(default_factory=list)

    def compare(self, holder: str, mine: Decision, theirs: Decision, note: str = "") -> None:
        if mine != theirs:
            self.n_mismatch += 1
            if len(self.mismatches) < 5:
                self.mismatches.append(f"{holder}{note}: aidc {mine}, baseline {theirs}")


def postgres_schema(url: str) -> tuple[str, str, object]:
    """A fresh schema in the database ``url`` for the benchmark's tables: the URL that puts
    the ledger's tables there, the schema's name and an autocommit psycopg connection."""
    import psycopg
    import sqlalchemy as sa

    u = sa.engine.make_url(url)
    if u.get_backend_name() != "postgresql":
        raise SystemExit("--db-url: a postgresql:// URL")
    schema = f"aidc_bench_{os.getpid()}"
    conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"SET search_path TO {schema}")
    ledger_url = u.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)
    return ledger_url, schema, conn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file (path printed)")
    ap.add_argument("--ledger", default="aidc.gpu.ledger:GPULedger", metavar="MODULE:CLASS",
                    help="the ledger class to measure (a module or a path/to/file.py), to try a "
                         "change before it lands; default: %(default)s")
    ap.add_argument("--db-url", metavar="URL",
                    help="also measure a ledger on this PostgreSQL database, side by side with "
                         "SQLite (its tables in a schema of their own, dropped at the end)")
    ap.add_argument("--pg-pipeline", action="store_true",
                    help="on PostgreSQL, decide with the pipeline of three round trips "
                         "(GPULedger.pg_functions = False) instead of one function call")
    ap.add_argument("--postgres-here", action="store_true",
                    help="as --db-url, on a throwaway PostgreSQL server started on this machine "
                         "for the run (Debian's postgresql, as the tests start it), through its "
                         "Unix socket")
    args = ap.parse_args(argv)
    if args.postgres_here:
        sys.path.insert(0, str(ROOT / "tests"))
        from postgres_helpers import PostgresServer

        with PostgresServer() as server:
            rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--postgres-here"]
            server.create_database("ledger_benchmark")
            # through the Unix socket, as a platform on the database's machine connects
            return main([*rest, "--db-url", server.socket_url("ledger_benchmark")])

    started = time.monotonic()
    load0 = os.getloadavg()[0]
    capacity = args.nodes * args.gpus_per_node
    tmp = tempfile.mkdtemp(prefix="aidc-bench-ledger-")
    db_path = os.path.join(tmp, "aidc.sqlite")
    cls = load_class(args.ledger)
    nodes = [f"node{i:05d}" for i in range(args.nodes)]
    inventory = simulated(args.gpus_per_node)
    pg = None
    contenders: list[Contender] = []
    server_version = ""
    try:
        targets = [("sqlite", f"sqlite:///{db_path}")]
        if args.db_url:
            pg_url, schema, pg = postgres_schema(args.db_url)
            server_version = pg.execute("SHOW server_version").fetchone()[0]
            targets.append(("postgresql", pg_url))
        for label, url in targets:
            ledger = cls(db_url=url, **({"pg_functions": False} if label == "postgresql" and args.pg_pipeline else {}))
            t = time.monotonic()
            for n in nodes:
                ledger.add_node(n, inventory)
            reader = sqlite3.connect(db_path) if label == "sqlite" else pg
            contenders.append(Contender(label, ledger, Shadow(reader), setup_s=time.monotonic() - t))
        naive = NaiveAllocator(nodes, args.gpus_per_node)
        ops = make_workload(args.requests, capacity, args.seed)
        baseline = {"request": Series(), "release": Series()}
        perf = time.perf_counter_ns
        progress_every = max(1, len(ops) // 20)

        for i, op in enumerate(ops):
            answers = []
            for c in contenders:
                t0 = perf()
                if op.kind == "request":
                    answers.append(c.ledger.request(op.holder, op.owner, op.count))
                else:
                    answers.append(c.ledger.release(op.holder))
                c.times[op.kind].ns.append(perf() - t0)
            t0 = perf()
            b = naive.request(op.holder, op.count) if op.kind == "request" else naive.release(op.holder)
            baseline[op.kind].ns.append(perf() - t0)
            for c, answer in zip(contenders, answers):
                shadow = c.shadow
                if op.kind == "request":
                    if answer.state == GRANTED:
                        ids = [u["id"] for u in answer.units]
                        shadow.grant(op.holder, ids)
                        c.compare(op.holder, decision_of(ids), b)
                    else:
                        shadow.queued.add(op.holder)
                        c.queued_at_request += 1
                        c.compare(op.holder, Decision(answer.state), b)
                else:
                    shadow.release(op.holder, answer)
                for h in shadow.catch_up():
                    c.compare(h, decision_of(shadow.units_of[h]), naive.decision(h), " (from the queue)")
                c.max_queue = max(c.max_queue, len(shadow.queued))
                c.occupancy.append(len(shadow.owner_of) / capacity)
            if (i + 1) % progress_every == 0:
                c = contenders[0]
                print(f"  ... {i + 1}/{len(ops)} operations, {c.occupancy[-1]:.0%} full, "
                      f"{len(c.shadow.queued)} queued, {time.monotonic() - started:.0f} s",
                      file=sys.stderr, flush=True)
        problems = {c.label: c.shadow.violations + c.shadow.final_check(naive) for c in contenders}
        elapsed = time.monotonic() - started
    finally:
        for c in contenders:
            if c.label == "sqlite":
                c.shadow.db.close()
            c.ledger.engine.dispose()
        if pg is not None:
            pg.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            pg.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- report ---------------------------------------------------------------------------
    n_req = sum(1 for o in ops if o.kind == "request")
    n_rel = len(ops) - n_req
    first_release = next((i for i, o in enumerate(ops) if o.kind == "release"), 0)
    first = contenders[0]
    warm = first.occupancy[first_release:] or first.occupancy  # after the first fill
    labels = " and ".join(f"{c.label}" for c in contenders)
    print()
    print(f"GPU ledger benchmark: aidc {args.ledger} ({labels}, one process each) vs naive "
          "in-memory allocator")
    print(f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}" + (f", PostgreSQL {server_version} (same machine)"
                                               if server_version else "")
          + f", {platform.platform()}; load average at start "
          f"{load0:.2f}, at end {os.getloadavg()[0]:.2f} (other work on the machine inflates the tails)")
    if server_version:
        print("postgresql decisions: " + ("one call of the ledger's PL/pgSQL function each"
              if getattr(contenders[-1].ledger, "_in_db", False) else "psycopg pipeline, three round trips"))
    print(f"cluster: {args.nodes} nodes x {args.gpus_per_node} GPUs = {capacity} units (simulated); "
          "ledger setup " + ", ".join(f"{c.label} {c.setup_s:.1f} s" for c in contenders))
    print(f"workload: {n_req} requests (70% 1 GPU, 20% 2, 10% 4), {n_rel} releases, seed {args.seed}")
    print(f"occupancy after the first fill: min {min(warm):.0%}, mean {sum(warm) / len(warm):.0%}, "
          f"max {max(warm):.0%}; {first.queued_at_request} requests queued "
          f"({first.queued_at_request / n_req:.1%}), queue up to {first.max_queue}")
    print()
    print(f"{'allocator':<10} {'op':<8} {'n':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9} {'ops/s':>10}")
    rows = [(f"{c.label}", what, c.times[what].summary()) for c in contenders for what in ("request", "release")]
    rows += [("baseline", what, baseline[what].summary()) for what in ("request", "release")]
    for who, what, s in rows:
        print(f"{who:<10} {what:<8} {s['n']:>6} {s['p50']:>9.3f} {s['p90']:>9.3f} {s['p99']:>9.3f} "
              f"{s['max']:>9.3f} {s['per_s']:>10.0f}")
    print()
    base = {what: baseline[what].summary() for what in ("request", "release")}
    for c in contenders:
        for what in ("request", "release"):
            a, b = c.times[what].summary(), base[what]
            print(f"ratio {c.label}/baseline ({what}): p50 {a['p50'] / b['p50']:.0f}x, "
                  f"p99 {a['p99'] / b['p99']:.0f}x, throughput {b['per_s'] / a['per_s']:.0f}x lower")
    if len(contenders) > 1:
        for what in ("request", "release"):
            a, b = contenders[1].times[what].summary(), contenders[0].times[what].summary()
            print(f"ratio postgresql/sqlite ({what}): p50 {a['p50'] / b['p50']:.1f}x, "
                  f"p99 {a['p99'] / b['p99']:.1f}x")
    print()
    for c in contenders:
        goal = GOAL_MS[c.label]
        for what in ("request", "release"):
            p99 = c.times[what].summary()["p99"]
            verdict = "PASS" if p99 < goal else f"FAIL ({p99 / goal:.1f}x over)"
            print(f"goal ({c.label}): p99 allocation decision < {goal:g} ms ({what}): {p99:.3f} ms: {verdict}")
        all_ns = sorted(c.times["request"].ns + c.times["release"].ns)
        p99_all = percentile(all_ns, 99)
        verdict = "PASS" if p99_all < goal else f"FAIL ({p99_all / goal:.1f}x over)"
        print(f"goal ({c.label}): p99 allocation decision < {goal:g} ms (all decisions): "
              f"{p99_all:.3f} ms: {verdict}")
    print()
    failed = False
    for c in contenders:
        same = "yes" if not c.n_mismatch else f"NO ({c.n_mismatch} differ; first ones below)"
        print(f"{c.label}: same decisions as the baseline (state, node, GPUs): {same}")
        for m in c.mismatches:
            print(f"  {m}")
        if problems[c.label]:
            print(f"{c.label}: consistency: FAIL ({len(problems[c.label])} problems)")
            for p in problems[c.label][:20]:
                print(f"  {p}")
        else:
            print(f"{c.label}: consistency: OK: no unit was ever given to two holders "
                  f"({c.shadow.grants} grants, {n_rel} releases checked; final tables = what the "
                  "ledger answered = baseline)")
        failed = failed or bool(problems[c.label]) or bool(c.n_mismatch)
    print(f"total run time {elapsed:.0f} s")
    if args.keep:
        print(f"SQLite file kept: {db_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
