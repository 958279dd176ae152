"""Security benchmark: the audit log's hash chain, against the plain log it replaced.

Goals (issue 17): an audit append with the chain at p99 under 1 ms; ``aidc audit verify``
of one million records under 10 s.

1. **Append**: ``--events`` events through :func:`aidc.security.audit.record` (jupyter-events
   validation, then the writer) into two fresh data directories, alternating event by event:
   ``plain``, jupyter-events writing one JSON line to a file (what aidc did before the
   chain), and ``chained``, the product's path (canonical JSON, ``flock``, a link, the signed
   head rewritten, a signed checkpoint every 1,000). Each ``record`` call is timed.
2. **Verify**: a chain of ``--records`` records (the shape of real events, built with the
   chain's own functions and signed with a key, written straight to a file: appending a
   million through the writer would take minutes and measure the writer again), then
   :func:`aidc.security.chain.verify` over it, timed (median of ``--rounds``), and the
   ``aidc audit verify`` command once, timed from outside (process start included).

Usage: ``.venv/bin/python benchmarks/security.py [--events 5000] [--records 1000000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bench_append(events: int, tmp: Path) -> dict[str, list[float]]:
    import logging

    from jupyter_events import EventLogger

    from aidc.paths import DataDir, PrivateFileHandler
    from aidc.security import audit

    plain_path = DataDir(tmp / "plain").audit_log
    plain_path.parent.mkdir(parents=True)
    plain = EventLogger(handlers=[PrivateFileHandler(str(plain_path))])
    for filename in audit.SCHEMAS.values():
        plain.register_event_schema(audit.SCHEMA_DIR / filename)
    chained_path = DataDir(tmp / "chained").audit_log
    chained_path.parent.mkdir(parents=True)
    logging.getLogger("aidc.audit").setLevel(logging.ERROR)

    times: dict[str, list[float]] = {"plain": [], "chained": []}
    for i in range(events):
        data = {"actor": "cli:root", "action": "add", "target": f"user{i}", "result": "success",
                "role": "scientist"}
        t = time.perf_counter_ns()
        plain.emit(schema_id=audit.BASE_ID + "user", data=data)
        times["plain"].append((time.perf_counter_ns() - t) / 1e6)
        t = time.perf_counter_ns()
        audit.record("user", chained_path, **data)
        times["chained"].append((time.perf_counter_ns() - t) / 1e6)
    return times


def build_chain(records: int, data_dir: Path) -> None:
    from aidc.paths import DataDir
    from aidc.security import audit, chain

    log = chain.ChainedLog(DataDir(data_dir).audit_log, audit.audit_key_path(DataDir(data_dir).audit_log))
    log.path.parent.mkdir(parents=True)
    key = chain.load_key(log.key_path)
    prev = chain.GENESIS
    checkpoints = []
    with open(log.path, "wb") as f:
        for seq in range(1, records + 1):
            line = chain.canonical({
                "__metadata_version__": 1, "__schema__": audit.BASE_ID + "auth", "__schema_version__": "1",
                "__timestamp__": "2026-12-03T10:00:00.000000Z", "action": "login", "actor": f"user{seq % 500}",
                "remote_ip": "127.0.0.1", "result": "success", "target": "hub",
                "__seq__": seq, "__prev__": prev})
            f.write(line + b"\n")
            prev = chain.line_hash(line)
            if seq % chain.CHECKPOINT_EVERY == 0:
                checkpoints.append(chain.canonical({"seq": seq, "hash": prev, "mac": chain._mac(key, seq, prev),
                                                    "time": 0}))
    log.checkpoints_path.write_bytes(b"".join(c + b"\n" for c in checkpoints))
    log._write_head(key, records, prev)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "extensions"))
    from aidc.paths import DataDir
    from aidc.security import chain

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="aidc-bench-security-") as tmp:
        tmp = Path(tmp)
        times = bench_append(args.events, tmp)
        print(f"\naudit append, {args.events} events each, alternating (ms)")
        print(f"{'writer':<9} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        for name, values in times.items():
            print(f"{name:<9} {pct(values, 50):8.3f} {pct(values, 90):8.3f} {pct(values, 99):8.3f} {max(values):8.3f}")
        p99 = pct(times["chained"], 99)
        print(f"ratio chained/plain: p50 {pct(times['chained'], 50) / pct(times['plain'], 50):.2f}x, "
              f"p99 {p99 / pct(times['plain'], 99):.2f}x")
        print(f"goal: chained append p99 < 1 ms: {p99:.3f} ms: {'PASS' if p99 < 1 else 'FAIL'}")

        data_dir = tmp / "million"
        t = time.monotonic()
        build_chain(args.records, data_dir)
        size = DataDir(data_dir).audit_log.stat().st_size
        print(f"\nchain of {args.records:,} records built in {time.monotonic() - t:.1f} s ({size / 2**20:.0f} MiB)")
        key = (data_dir / "secrets" / "audit-key").read_text().strip().encode()
        walks = []
        for _ in range(args.rounds):
            t = time.monotonic()
            verdict = chain.verify(DataDir(data_dir).audit_log, key)
            walks.append(time.monotonic() - t)
            assert verdict.ok and verdict.records == args.records, verdict
        t = time.monotonic()
        r = subprocess.run([str(ROOT / ".venv" / "bin" / "aidc"), "audit", "verify", "--data-dir", str(data_dir)],
                           capture_output=True, text=True)
        command = time.monotonic() - t
        assert r.returncode == 0, r.stdout + r.stderr
        print(f"verify (in process): median {statistics.median(walks):.2f} s over {args.rounds} rounds "
              f"({', '.join(f'{w:.2f}' for w in walks)}); {args.records / statistics.median(walks):,.0f} records/s")
        print(f"`aidc audit verify` (process start included): {command:.2f} s: {r.stdout.strip()}")
        print(f"goal: verify of {args.records:,} records < 10 s: {command:.2f} s: {'PASS' if command < 10 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
