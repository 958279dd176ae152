"""Monitoring benchmark: the collector's cost at 1 Hz, and a day of history read at 1 min steps.

What it does
------------
1. Makes a fake NVML (``tests/fake_nvml``) of ``--gpus`` GPUs with telemetry, a GPU ledger in
   a new SQLite file with ``--holders`` holders (half of them holding a GPU, the others
   a zero-GPU claim, as CPU servers and jobs take), and a history store in another file.
2. Runs the collector's sample (NVML through ``read_nvml``, attribution, psutil, the
   database write, a walk of every process each 10th sample) ``--samples`` times and prints
   the CPU time per sample as a share of one core at 1 Hz; baseline: the same readings
   without aidc (``read_nvml`` alone plus psutil's host figures), so the ratio is aidc's
   own cost.
3. Fills 24 h of 1-minute points for every GPU metric (as the 1-min tier holds them) and
   times ``MetricStore.query`` of 24 h at a 60 s step (median of ``--queries``).

Goals (issue 16): collector under 1 % of one core at 1 Hz with 8 GPUs and 50 holders;
a 24 h history query at 1 min step under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fake_nvml"))  # the fake pynvml, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--holders", type=int, default=50)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aidc-bench-monitor-"))
    layout = [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "utilization": 50,
               "processes": [{"pid": os.getpid(), "used_mb": 100}]} for _ in range(args.gpus)]
    (tmp / "gpus.json").write_text(json.dumps(layout))
    os.environ["AIDC_FAKE_NVML"] = str(tmp / "gpus.json")

    from aidc.db import make_engine
    from aidc.gpu.inventory import read_nvml
    from aidc.gpu.ledger import GPULedger
    from aidc.monitor.collect import Collector
    from aidc.monitor.catalog import METRICS
    from aidc.monitor.host import host_sample
    from aidc.monitor.store import MetricStore

    ledger = GPULedger(db_url=f"sqlite:///{tmp / 'ledger.sqlite'}")
    ledger.sync_inventory(read_nvml())
    for i in range(args.holders):
        ledger.request(f"job:{i}", f"user{i % 20}", 1 if i < min(args.gpus, args.holders // 2) else 0)
    store = MetricStore(make_engine(f"sqlite:///{tmp / 'monitor.sqlite'}"))
    collector = Collector(store, ledger, str(tmp), user_usage_every=10.0)

    def cpu_per_sample(step) -> float:
        step(0)
        start = time.process_time()
        for i in range(args.samples):
            step(i + 1)
        return (time.process_time() - start) / args.samples

    now = time.time()
    aidc = cpu_per_sample(lambda i: collector.sample(now + i))
    base = cpu_per_sample(lambda i: (read_nvml(), host_sample(str(tmp))))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.gpus} GPUs, {args.holders} holders, {args.samples} samples")
    print(f"collector  CPU per sample {aidc * 1000:7.3f} ms = {aidc * 100:.2f} % of one core at 1 Hz")
    print(f"baseline   CPU per sample {base * 1000:7.3f} ms (read_nvml + psutil host figures alone)")
    print(f"ratio collector/baseline {aidc / base:.1f}x")
    print(f"goal: collector < 1 % of one core at 1 Hz: {'PASS' if aidc < 0.01 else 'FAIL'}")

    # a day of 1-minute points in the 1-min tier, for every GPU metric of every GPU
    day_start = now - 86400
    gpu_metrics = [m for m in METRICS if m.startswith("gpu_") and m != "gpu_process_memory_bytes"]
    from aidc.monitor.store import CHUNK, chunks, label_key, pack, series
    rows = []
    with store.engine.begin() as c:
        for m in gpu_metrics:
            for g in range(args.gpus):
                key = label_key({"gpu": str(g), "uuid": f"GPU-fake-{g:04d}"})
                sid = c.execute(series.select().where(series.c.metric == m, series.c.labels == key)).first()
                sid = sid.id if sid else c.execute(series.insert().values(metric=m, labels=key)).inserted_primary_key[0]
                first = day_start // (60 * CHUNK) * 60 * CHUNK
                for t0 in range(int(first), int(now) + 1, 60 * CHUNK):  # as downsampling packs them
                    vals = [float((t0 + 60 * i) // 60 % 100) if day_start <= t0 + 60 * i < now else float("nan")
                            for i in range(CHUNK)]
                    rows.append({"tier": 1, "series": sid, "t0": float(t0), "step": 60.0, "vals": pack(vals)})
        c.execute(chunks.insert(), rows)
    times = []
    for _ in range(args.queries):
        t0 = time.perf_counter()
        answer = store.query("gpu_utilization_percent", day_start, now, 60, now=now + 3700)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    points = sum(len(s["points"]) for s in answer["series"])
    print(f"history 24 h at 60 s: {len(answer['series'])} series, {points} points, "
          f"median {median * 1000:.1f} ms (resolution {answer['resolution']:g} s, {len(rows)} stored rows "
          f"of {CHUNK} steps)")
    print(f"goal: 24 h history query at 1 min < 50 ms: {'PASS' if median < 0.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
