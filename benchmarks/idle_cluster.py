"""The first job of a fresh platform, and what an idle platform costs with its Dask cluster up.

Goals (issue 11): the first job of a freshly started platform finishes a trivial notebook
in under 2 s submit → done; an idle platform with the cluster up uses under 0.05 of a core.

How: one real platform (`aidc up` through tests/platform_helpers.py, as root), one
scientist. CPU is the sum of user+system time of `aidc up` and every process below it
(psutil) over 30 s of doing nothing, divided by 30: a figure in cores that other load on
the machine hardly changes. Then a trivial notebook is submitted twice (first job, second
job; submit → `completed`), and the idle figure is taken again, with the per-process
breakdown of what still costs anything.

    .venv/bin/python benchmarks/idle_cluster.py [--start-with service|first-job]   (as root)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402
from bench_platforms import begin, clean_up, report_end  # noqa: E402
from jobs_helpers import notebook, put, submit, wait, wait_service  # noqa: E402
from platform_helpers import Platform, new_prefix  # noqa: E402

TMP_PREFIX = "aidc-bench-idle-"
IDLE_S = 30


def cpu_seconds(platform) -> dict[int, tuple[str, float]]:
    found = {}
    top = psutil.Process(platform.proc.pid)
    for proc in [top, *top.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            found[proc.pid] = (" ".join(proc.cmdline())[:70], t.user + t.system)
        except psutil.NoSuchProcess:
            pass
    return found


def idle_cores(platform, breakdown: bool = False) -> float:
    a = cpu_seconds(platform)
    time.sleep(IDLE_S)
    b = cpu_seconds(platform)
    if breakdown:
        for pid, (cmd, seconds) in b.items():
            used = (seconds - a.get(pid, (cmd, 0.0))[1]) / IDLE_S
            if used >= 0.002:
                print(f"    {used:.3f} cores  {cmd}")
    return (sum(v for _, v in b.values()) - sum(v for _, v in a.values())) / IDLE_S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start-with", choices=["service", "first-job"], default="service",
                    help="c.JobCluster.start_with for the platform (default: the platform's default)")
    args = ap.parse_args(argv)
    root = begin(TMP_PREFIX, "aidc up makes Unix accounts", lambda m: print(m, file=sys.stderr))
    if root is None:
        return 2
    started = time.monotonic()
    p = Platform(root / "data", prefix=new_prefix())
    (p.data_dir / "config.d").mkdir(parents=True)
    (p.data_dir / "config.d" / "50-bench.py").write_text(
        f"c.JobCluster.start_with = {args.start_with!r}\n")
    problems: list[str] = []
    try:
        p.start()
        user = p.new_user("scientist")
        wait_service(p, user.token)
        print(f"load average {os.getloadavg()[0]:.2f}; start_with={args.start_with}")
        time.sleep(5)  # let the cluster (if it starts with the service) settle
        print(f"idle before any job: {idle_cores(p):.3f} cores")
        put(p, user, "trivial.ipynb", notebook("print('hello')"))
        for which in ("first", "second"):
            t0 = time.monotonic()
            job = wait(p, user, submit(p, user, "trivial.ipynb")["id"])
            print(f"{which} job: {job['status']} {time.monotonic() - t0:.2f} s submit -> done")
        time.sleep(5)
        print("idle with the cluster up (per process):")
        print(f"idle with the cluster up: {idle_cores(p, breakdown=True):.3f} cores   goal: < 0.05")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        problems = clean_up(p)
    report_end(problems, "no account or process left", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
