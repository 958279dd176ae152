"""Notebook jobs: aidc's jobs service vs the ``papermill`` CLI on the same notebooks.

Goals (from the issue), each measured side by side with its baseline in one run:

(a) latency: a trivial notebook, submit -> done through the jobs service, takes at most
    0.2x the time of ``papermill in.ipynb out.ipynb -p x 2`` (median of ``--rounds``
    rounds, the two sides alternating);
(b) throughput: ``--jobs`` (50) trivial jobs submitted to the service as fast as possible
    finish at least 5x faster than a sequential loop of as many ``papermill`` CLI runs;
(c) long job: a ~60 s CPU training notebook (torch, one thread, random data) through the
    service takes at most 1.02x the ``papermill`` CLI's time;
(d) recursion: deep-recursive Python inside a job (recursive ``fib`` and ``ackermann`` with
    ``sys.setrecursionlimit``) runs at most 1.1x as long as the same code in a stock
    ``python`` process (median of ``--recursion-rounds`` rounds), and a recursion started
    at any depth runs as in a stock kernel (see "Recursion (d)" below).

How
---
**Platform.** One real platform (``aidc up`` through ``tests/platform_helpers.py``, as
root), with no configuration of its own: the jobs service uses its defaults, i.e. the
embedded Dask ``LocalCluster`` with one single-threaded worker per core (2 here), kernels
from each worker's fork server, and jobs run as their owner's Unix account. One user
(role ``scientist``) gets the notebooks in their home.

**Notebooks.** Both sides run the *same file* in the user's home, with the same kernel
(``python3``: the venv's interpreter):

- ``trivial.ipynb``: a cell tagged ``parameters`` (``x = 1``) and one cell
  ``y = x * 21; print(f"result {y}")``; each run passes ``x`` (papermill adds its
  injected-parameters cell on both sides);
- ``train.ipynb``: parameters ``steps`` and ``seed``, then one cell that imports torch and
  aidc and trains a small MLP (256-512-512-10, batch 256, SGD) on random data with
  ``torch.set_num_threads(1)`` for ``steps`` steps, records the loss every 5 % of the
  steps and at the end the final loss, its own loop time and its import time with
  ``aidc.record`` (outside a job that only displays them), and prints one ``trained ...``
  line. ``steps`` is fixed before either side runs, from a 3 s calibration of the same loop
  in a plain Python process, so that the loop takes about ``--train-seconds`` - 4 s (the
  papermill run: that plus its imports and start-up); ``--train-steps`` fixes it by hand.

**Service side.** The client is aidc's own: ``aidc.jobs.submit(path, parameters=...,
client=Client(url, token))`` (``POST /services/jobs/api/jobs``), then ``Job.events()``,
i.e. ``GET /services/jobs/api/jobs/{id}/events`` with ``Accept: text/event-stream``,
read until the final ``status`` event: the job is "done" the moment the client reads
that event (no polling interval in the measurement). The job record's timestamps
(``created``, ``started``, ``finished``) and the time of each recorded event split the
time into phases: POST -> created (the request up to the insert), created -> started
(queue and dispatch), started -> first cell started (Dask task, fresh kernel from the
fork server, papermill setup), first cell -> last cell finished (the cells), last cell ->
finished (kernel shutdown, output notebook, result back from Dask, record), finished ->
seen by the client (SSE delivery).

**Baseline side.** ``.venv/bin/papermill <home>/trivial.ipynb <home>/bench-out/N.ipynb -p x
N`` as a subprocess, run as the same Unix account as the service's jobs (``setuid`` in the
child, ``HOME``/``USER`` set, working directory the notebook's folder): what the user would
type in a terminal. Timed from ``fork`` to exit. Its output notebook's ``papermill``
metadata gives the time papermill spent on the notebook (kernel start to the end); the
rest is the CLI's own interpreter start and imports.

**Checks.** Nothing counts unless it ran: every service job must end ``completed`` and its
stream output must hold ``result <21*x>`` for the ``x`` it was given; every papermill run
must exit 0 and its output notebook must hold the same line and the injected parameters.
The training runs must both print the ``trained`` line, record the metrics (service side:
in the job record), and end with the same final loss (same seed, one thread: identical
arithmetic), which shows both did the same work.

**Order.** One warm-up run per side first (not counted; the first job may also wait for
the Dask workers and their fork servers to start: the embedded cluster starts with the
first job). (a) alternates which side goes first each round. (b) runs the service's batch,
then the sequential loop. (c) runs ``--train-rounds`` rounds (default 1; the first with the
service first, then alternating).

**Clean-up.** The platform is stopped, its Unix accounts removed (``aidc user remove``:
the benchmark user and the initial admin, with their homes and processes), temporary
folders deleted, and the script checks nothing with the platform's prefix is left.
Accounts left by an interrupted earlier run (their data dir under
``/tmp/aidc-bench-jobs-*`` gone) are removed at start.

Usage (as root, from the repository root)::

    .venv/bin/python benchmarks/jobs.py [--rounds 5] [--jobs 50] [--baseline-runs N]
        [--train-seconds 60] [--train-steps N] [--train-rounds 1] [--recursion-rounds 3]
        [--only a,b,c,d] [--keep]

``--baseline-runs N`` (N < ``--jobs``) times only N sequential papermill runs for (b) and
extrapolates their mean to ``--jobs`` runs; the output says so. 9-10 minutes with the
defaults on 2 cores, most of it the 50 sequential papermill runs; (d) alone about a minute.

**Recursion (d).** One notebook, ``recursion.ipynb`` (parameters ``fib_n``, ``ack_n``,
``repeats``, ``depths``), run three ways each round: as a job through the service, with the
``papermill`` CLI (a stock kernel) and as a plain ``python -c`` process of the same code (the
parameters prepended), all three as the job owner's account. The cell times (the CPU time
of its thread, user and system, so that other work on the machine does not count), each the
best of ``repeats``: ``fib(fib_n)`` (27) and ``ackermann(2, ack_n)`` (1000, about 2,000 frames
deep), both with ``sys.setrecursionlimit(100000)``; then ``fib(16)`` started 0, 1, ...
``depths`` - 1 frames deeper than the cell (a helper that recurses ``d`` times first), best of
3 each. CPython 3.11 keeps frames in 16 KiB chunks and allocates and frees a chunk (mmap and
munmap) every time a recursion crosses a chunk's end: a recursion that keeps crossing one
(fib's calls near its deepest level) runs many times slower, and whether it does depends on
how deep the frames below it reach, i.e. on what runs the code. The sweep shows where that
happens: the start depths at which ``fib(16)`` takes more than 3x the sweep's median ("slow
depths"; 160 depths span more than one chunk, so each side has some). The goal has two
parts: the job within 1.1x of stock ``python`` on ``fib`` and ``ackermann`` (neither
crosses a chunk end often, in any of the three: this part passes whatever the chunk ends
are), and the job's slowest start depth of the sweep within 1 of the stock kernel's (the
part that shows where the chunk ends lie). A plain script has slow depths of its own,
ipykernel's ~2 KiB of frames further, which no kernel can have; the per-depth ratios to it
are printed, not judged.

**CPU while (c) runs.** For each training run the script also prints how busy the whole
machine was (in cores, all processes) and the CPU seconds the platform's own processes
(hub, proxy, services, Dask scheduler, nannies and workers, fork servers; not the kernels)
used meanwhile, so that a loop slowed by other work on the machine can be told apart from
one slowed by the service.

Exit status 0 when every job and run was checked correct and clean-up left nothing (even
if a goal is missed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform as py_platform
import pwd
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "extensions"))

import nbformat  # noqa: E402
import psutil  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

import aidc.jobs  # noqa: E402
from aidc.client import Client  # noqa: E402
from platform_helpers import Platform, new_prefix, unix_name  # noqa: E402
from bench_platforms import begin, clean_up, process_tree, report_end, wait_for_service  # noqa: E402

PAPERMILL = str(Path(sys.executable).with_name("papermill"))
TMP_PREFIX = "aidc-bench-jobs-"
FINAL = ("completed", "failed", "cancelled")
GOAL_A = 0.20  # service / papermill, median submit -> done
GOAL_B = 5.0  # service throughput / papermill throughput
GOAL_C = 1.02  # service / papermill, training notebook
GOAL_D = 1.10  # job / stock python, recursive workloads (in-cell time)

TRIVIAL_CODE = 'y = x * 21\nprint(f"result {y}")'

TRAIN_CODE = '''\
import time
t_import = time.perf_counter()
import torch
import aidc
import_s = time.perf_counter() - t_import

torch.set_num_threads(1)
torch.manual_seed(seed)
model = torch.nn.Sequential(
    torch.nn.Linear(256, 512), torch.nn.ReLU(),
    torch.nn.Linear(512, 512), torch.nn.ReLU(),
    torch.nn.Linear(512, 10),
)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
loss_fn = torch.nn.CrossEntropyLoss()
X = torch.randn(8192, 256)
Y = torch.randint(0, 10, (8192,))
every = max(1, steps // 20)
t0 = time.perf_counter()
for step in range(steps):
    i = (step * 256) % 8192
    opt.zero_grad()
    loss = loss_fn(model(X[i:i + 256]), Y[i:i + 256])
    loss.backward()
    opt.step()
    if (step + 1) % every == 0:
        aidc.record("loss", float(loss), step=step + 1)
train_s = time.perf_counter() - t0
aidc.record("final_loss", float(loss))
aidc.record("train_s", train_s)
aidc.record("import_s", import_s)
print(f"trained {steps} steps in {train_s:.3f} s, final loss {float(loss)!r} (imports {import_s:.3f} s)")
'''

#: the same loop outside a kernel, to size ``steps`` (prints steps per second)
CALIBRATE = '''\
import time, torch
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                            torch.nn.ReLU(), torch.nn.Linear(512, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
loss_fn = torch.nn.CrossEntropyLoss()
X = torch.randn(8192, 256); Y = torch.randint(0, 10, (8192,))
def run(n, start=0):
    for step in range(start, start + n):
        i = (step * 256) % 8192
        opt.zero_grad(); loss = loss_fn(model(X[i:i + 256]), Y[i:i + 256]); loss.backward(); opt.step()
run(50)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < SECONDS:
    run(50, n); n += 50
print(n / (time.perf_counter() - t0))
'''


#: (d): deep recursion, timed inside the cell; the same code runs in a plain ``python``
RECURSION_CODE = '''\
import json, sys, time
sys.setrecursionlimit(100000)

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def ackermann(m, n):
    if m == 0:
        return n + 1
    if n == 0:
        return ackermann(m - 1, 1)
    return ackermann(m - 1, ackermann(m, n - 1))

def under(depth, f, *args):
    """f(*args), called ``depth`` frames deeper than the caller."""
    return f(*args) if depth == 0 else under(depth - 1, f, *args)

def best(k, f, *args):
    # CPU time of this thread (user + system: the chunks' mmap and munmap count), so that
    # other processes on a busy machine do not count
    times = []
    for _ in range(k):
        t0 = time.thread_time()
        f(*args)
        times.append(time.thread_time() - t0)
    return min(times)

result = {"fib": best(repeats, fib, fib_n), "ackermann": best(repeats, ackermann, 2, ack_n),
          "sweep": [best(3, under, d, fib, 16) for d in range(depths)]}
print("recursion " + json.dumps(result))
'''
RECURSION_PARAMS = {"fib_n": 27, "ack_n": 1000, "repeats": 5, "depths": 160}


def make_notebook(params: str, code: str) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.cells.append(new_code_cell(code))
    return nb


def ts(iso: str | None) -> float | None:
    """An ISO timestamp of the service (UTC, 'Z') as seconds since the epoch."""
    if not iso:
        return None
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")




class CheckFailed(Exception):
    """A job or run did not produce what it should have: the run does not count."""


class Bench:
    def __init__(self, root: Path):
        self.root = root
        self.platform = Platform(root / "platform", prefix=new_prefix())
        self.user = None
        self.client: Client | None = None
        self.home: Path | None = None
        self.pw = None
        self.out_dir: Path | None = None
        self.n_pm = 0
        self.procs: list[psutil.Process] = []

    # -- setup ------------------------------------------------------------------------
    def start(self) -> None:
        p = self.platform
        t = time.monotonic()
        p.start(timeout=240)
        self.user = p.new_user("scientist")
        self.client = Client(p.url, self.user.token, timeout=120)
        wait_for_service(self.client, "services/jobs/api/summary", "jobs", p)  # its Dask cluster comes later
        self.pw = pwd.getpwnam(unix_name(self.user.name, p.prefix))
        self.home = Path(self.pw.pw_dir)
        self.out_dir = self.home / "bench-out"
        self.out_dir.mkdir()
        os.chown(self.out_dir, self.pw.pw_uid, self.pw.pw_gid)
        log(f"platform up with the jobs service in {time.monotonic() - t:.1f} s ({p.url}, "
            f"Unix prefix {p.prefix})")

    def cluster(self) -> dict:
        admin = Client(self.platform.url, self.platform.token("admin"))
        return admin.get_json("services/jobs/api/cluster")

    def put(self, name: str, nb: nbformat.NotebookNode) -> Path:
        path = self.home / name
        path.write_text(nbformat.writes(nb))
        os.chown(path, self.pw.pw_uid, self.pw.pw_gid)
        return path

    # -- the service ------------------------------------------------------------------
    def submit(self, name: str, params: dict) -> tuple[aidc.jobs.Job, float, float]:
        """POST the job; returns the job, the wall-clock time of the POST and its duration."""
        wall0 = time.time()
        t0 = time.perf_counter()
        job = aidc.jobs.submit(name, parameters=params, client=self.client)
        return job, wall0, time.perf_counter() - t0

    def follow(self, job: aidc.jobs.Job) -> tuple[list[dict], float]:
        """Read the job's SSE stream to its final status event; returns events, wall time seen."""
        events: list[dict] = []
        seen = None
        for e in job.events(follow=True):
            events.append(e)
            if e["type"] == "status" and e["status"] in FINAL and seen is None:
                seen = time.time()
        if seen is None:
            raise CheckFailed(f"job {job.id}: the event stream ended without a final status")
        return events, seen

    def run_service(self, name: str, params: dict, expect: str) -> dict:
        """One job, submit -> done from the client's side, checked; returns its timings."""
        snap = self.cpu_snapshot()
        t0 = time.perf_counter()
        job, wall0, post_s = self.submit(name, params)
        events, seen = self.follow(job)
        took = time.perf_counter() - t0
        cpu = self.cpu_used(snap, self.cpu_snapshot(), took)
        record = job.refresh().data
        self.check_job(record, events, expect)
        return {"took": took, "post": post_s, "wall0": wall0, "seen": seen, "job": record,
                "events": events, **cpu}

    def check_job(self, record: dict, events: list[dict], expect: str) -> None:
        if record["status"] != "completed":
            raise CheckFailed(f"job {record['id']} ended {record['status']}: {record['error']}\n"
                              f"{self.platform.log()[-3000:]}")
        final = [e for e in events if e["type"] == "status"][-1]
        if final["status"] != "completed":
            raise CheckFailed(f"job {record['id']}: last status event {final['status']}")
        printed = "".join(e.get("text") or "" for e in events if e["type"] == "stream")
        if expect not in printed:
            raise CheckFailed(f"job {record['id']}: {expect!r} not in its output {printed[-500:]!r}")

    # -- the baseline -----------------------------------------------------------------
    def run_papermill(self, nb_path: Path, params: dict, expect: str) -> dict:
        """One ``papermill`` CLI run as the job owner's account, checked; returns its timings."""
        self.n_pm += 1
        out = self.out_dir / f"{nb_path.stem}-{self.n_pm}.ipynb"
        cmd = [PAPERMILL, str(nb_path), str(out)]
        for k, v in params.items():
            cmd += ["-p", k, str(v)]
        env = {**os.environ, "HOME": str(self.home), "USER": self.pw.pw_name,
               "LOGNAME": self.pw.pw_name}
        for key in ("JUPYTERHUB_API_TOKEN", "AIDC_TOKEN", "AIDC_URL"):
            env.pop(key, None)
        snap = self.cpu_snapshot()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=nb_path.parent, env=env, user=self.pw.pw_uid,
                              group=self.pw.pw_gid, extra_groups=[], capture_output=True, text=True)
        took = time.perf_counter() - t0
        cpu = self.cpu_used(snap, self.cpu_snapshot(), took)
        if proc.returncode != 0:
            raise CheckFailed(f"papermill exited {proc.returncode}: {proc.stderr[-3000:]}")
        nb = nbformat.read(out, as_version=4)
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                          for o in c.outputs if o.get("output_type") == "stream")
        if expect not in printed:
            raise CheckFailed(f"papermill {out}: {expect!r} not in its output {printed[-500:]!r}")
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        want = [f"{k} = {v}" for k, v in params.items()]
        if not injected or not all(w in injected[0].source for w in want):
            raise CheckFailed(f"papermill {out}: parameters {want} not injected")
        meta = nb.metadata.get("papermill", {})
        return {"took": took, "duration": meta.get("duration"), "printed": printed, "nb": nb, **cpu}

    def run_python(self, code: str) -> dict:
        """``python -c code`` as the job owner's account, in its home; returns its stdout."""
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(self.home),
               "USER": self.pw.pw_name, "LOGNAME": self.pw.pw_name, "LANG": "C.UTF-8"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], cwd=self.home, env=env,
                              user=self.pw.pw_uid, group=self.pw.pw_gid, extra_groups=[],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise CheckFailed(f"python exited {proc.returncode}: {proc.stderr[-3000:]}")
        return {"took": time.perf_counter() - t0, "printed": proc.stdout}

    # -- where the CPU went while one run was measured -----------------------------------
    def cpu_snapshot(self) -> tuple[float, float, dict[int, float]]:
        """(busy CPU-s of the whole machine, all CPU-s, {pid: CPU-s} of the platform's own
        processes: hub, proxy, services, Dask scheduler/nanny/workers, fork servers; not the
        job owner's processes, i.e. not the kernels)."""
        t = psutil.cpu_times()
        total = sum(t)
        busy = total - t.idle - getattr(t, "iowait", 0.0)
        own = {}
        for proc in process_tree(self.platform):
            try:
                if proc.uids().real == self.pw.pw_uid:
                    continue
                c = proc.cpu_times()
                own[proc.pid] = c.user + c.system
            except psutil.Error:
                pass
        return busy, total, own

    @staticmethod
    def cpu_used(before, after, seconds: float) -> dict[str, float]:
        """Machine busy (in cores, of os.cpu_count()) and platform CPU-s between two snapshots."""
        busy = (after[0] - before[0]) / seconds if seconds else float("nan")
        platform = sum(after[2][pid] - cpu for pid, cpu in before[2].items() if pid in after[2])
        return {"busy_cores": busy, "platform_cpu_s": platform}

    # -- clean-up ---------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        return clean_up(self.platform)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def phases(r: dict) -> dict[str, float]:
    """Where one service job's time went, from the job record and its events (seconds)."""
    job, events = r["job"], r["events"]
    created, started, finished = ts(job["created"]), ts(job["started"]), ts(job["finished"])
    starts = [ts(e["time"]) for e in events if e["type"] == "cell_start"]
    ends = [ts(e["time"]) for e in events if e["type"] == "cell_end"]
    return {
        "POST -> created": created - r["wall0"],
        "created -> started (queue, dispatch)": started - created,
        "started -> first cell (Dask task, kernel, papermill setup)": min(starts) - started,
        "first cell -> last cell done (the cells)": max(ends) - min(starts),
        "last cell done -> finished (kernel stop, output, result back)": finished - max(ends),
        "finished -> client sees it (SSE)": r["seen"] - finished,
    }


# -- the three goals ---------------------------------------------------------------------
def goal_a(b: Bench, nb_path: Path, rounds: int, out: list[str]) -> bool:
    svc, pm = [], []
    for r in range(rounds):
        order = ("service", "papermill") if r % 2 == 0 else ("papermill", "service")
        line = []
        for side in order:
            if side == "service":
                res = b.run_service("trivial.ipynb", {"x": 2}, "result 42")
                svc.append(res)
                line.append(f"service {res['took']:.3f} s")
            else:
                res = b.run_papermill(nb_path, {"x": 2}, "result 42")
                pm.append(res)
                line.append(f"papermill {res['took']:.3f} s")
        log(f"(a) round {r + 1}/{rounds}: {', '.join(line)}")
    s_med = median([r["took"] for r in svc])
    p_med = median([r["took"] for r in pm])
    ratio = s_med / p_med
    out.append(f"(a) trivial notebook, submit -> done, {rounds} rounds (alternating, after 1 warm-up each):")
    out.append("  {:<44} {:>9} {:>8} {:>8}".format("side", "median s", "min s", "max s"))
    row = "  {:<44} {:>9.3f} {:>8.3f} {:>8.3f}"
    st = [r["took"] for r in svc]
    pt = [r["took"] for r in pm]
    out.append(row.format("aidc jobs service (POST + SSE to final)", s_med, min(st), max(st)))
    out.append(row.format("papermill CLI (process start to exit)", p_med, min(pt), max(pt)))
    out.append(f"  service POST itself: median {median([r['post'] for r in svc]) * 1000:.0f} ms")
    out.append("  service phases (median over rounds, from the job record and its events):")
    ph = [phases(r) for r in svc]
    for key in ph[0]:
        out.append(f"    {key:<64} {median([p[key] for p in ph]) * 1000:7.0f} ms")
    slow = max(svc, key=lambda r: r["took"])
    out.append(f"  slowest service round ({slow['took']:.3f} s): " + "; ".join(
        f"{k.split(' (')[0]} {v * 1000:.0f} ms" for k, v in phases(slow).items()))
    dur = [r["duration"] for r in pm if r["duration"] is not None]
    if dur:
        out.append(f"  papermill phases (median): papermill's own notebook time (kernel start to end, "
                   f"its metadata) {median(dur):.3f} s; CLI start, imports and exit "
                   f"{p_med - median(dur):.3f} s")
    verdict = "PASS" if ratio <= GOAL_A else f"FAIL ({ratio / GOAL_A:.2f}x the allowed)"
    out.append(f"goal (a): service submit -> done <= {GOAL_A:.2f}x papermill (median): "
               f"{ratio:.3f}x: {verdict}")
    return ratio <= GOAL_A


def goal_b(b: Bench, nb_path: Path, n_jobs: int, baseline_runs: int, out: list[str]) -> bool:
    # service: submit them all, then read each stream to its end (in submit order: when the
    # loop ends, every job has been seen final; jobs already final replay and end at once)
    log(f"(b) submitting {n_jobs} jobs")
    t0 = time.perf_counter()
    wall0 = time.time()
    jobs = []
    for i in range(n_jobs):
        job, posted, _ = b.submit("trivial.ipynb", {"x": i + 1})
        jobs.append((job, posted))
    submitted = time.perf_counter() - t0
    results = []
    for job, posted in jobs:
        events, seen = b.follow(job)
        results.append((job, events, seen, posted))
    svc_wall = time.perf_counter() - t0
    last_seen = max(seen for _, _, seen, _ in results)
    records, ph = [], []
    for i, (job, events, seen, posted) in enumerate(results):
        rec = job.refresh().data
        b.check_job(rec, events, f"result {21 * (i + 1)}")
        records.append(rec)
        ph.append(phases({"job": rec, "events": events, "wall0": posted, "seen": seen}))
    log(f"(b) service: {n_jobs} jobs in {svc_wall:.2f} s, all completed and checked")
    created = [ts(r["created"]) for r in records]
    started = [ts(r["started"]) for r in records]
    finished = [ts(r["finished"]) for r in records]
    runs = [f - s for s, f in zip(started, finished)]
    waits = [s - c for c, s in zip(created, started)]
    points = sorted([(s, 1) for s in started] + [(f, -1) for f in finished])
    conc = peak = 0
    for _, d in points:
        conc += d
        peak = max(peak, conc)

    # baseline: a sequential loop of papermill CLI runs
    n_base = min(baseline_runs, n_jobs)
    log(f"(b) papermill: {n_base} sequential runs")
    pm_t = []
    t1 = time.perf_counter()
    for i in range(n_base):
        res = b.run_papermill(nb_path, {"x": i + 1}, f"result {21 * (i + 1)}")
        pm_t.append(res["took"])
        if (i + 1) % 10 == 0:
            log(f"(b) papermill: {i + 1}/{n_base} in {time.perf_counter() - t1:.1f} s")
    pm_measured = time.perf_counter() - t1
    extrapolated = n_base < n_jobs
    pm_wall = pm_measured / n_base * n_jobs if extrapolated else pm_measured

    svc_tp = n_jobs / svc_wall
    pm_tp = n_jobs / pm_wall
    ratio = svc_tp / pm_tp
    out.append(f"(b) {n_jobs} trivial jobs (x = 1..{n_jobs}), wall time until all are done:")
    out.append(f"  aidc jobs service: {svc_wall:.2f} s = {svc_tp:.2f} jobs/s (POSTs of all {n_jobs}: "
               f"{submitted:.2f} s; first POST -> last final status seen "
               f"{last_seen - wall0:.2f} s)")
    out.append(f"    per job (median / max): queued {median(waits):.3f} / {max(waits):.3f} s, "
               f"running (started -> finished) {median(runs):.3f} / {max(runs):.3f} s; "
               f"at most {peak} running at once; service time first created -> last finished "
               f"{max(finished) - min(created):.2f} s")
    out.append("    per job phases (median): " + "; ".join(
        f"{k.split(' (')[0]} {median([p[k] for p in ph]) * 1000:.0f} ms" for k in list(ph[0])[2:5]))
    if extrapolated:
        out.append(f"  papermill CLI, sequential: EXTRAPOLATED from {n_base} measured runs "
                   f"({pm_measured:.2f} s, mean {pm_measured / n_base:.3f} s/run) to {n_jobs} runs: "
                   f"{pm_wall:.2f} s = {pm_tp:.2f} jobs/s")
    else:
        out.append(f"  papermill CLI, sequential: {pm_wall:.2f} s = {pm_tp:.2f} jobs/s "
                   f"(per run median {median(pm_t):.3f} s, max {max(pm_t):.3f} s)")
    verdict = "PASS" if ratio >= GOAL_B else f"FAIL ({ratio / GOAL_B:.2f}x of the goal)"
    out.append(f"goal (b): service throughput >= {GOAL_B:.0f}x sequential papermill: "
               f"{ratio:.2f}x: {verdict}" + (" (baseline extrapolated)" if extrapolated else ""))
    return ratio >= GOAL_B


def calibrate(seconds: float = 3.0) -> float:
    """Training steps per second of the notebook's loop in a plain Python process."""
    proc = subprocess.run([sys.executable, "-c", CALIBRATE.replace("SECONDS", str(seconds))],
                          capture_output=True, text=True, check=True, timeout=300)
    return float(proc.stdout.strip().splitlines()[-1])


def train_cell_seconds(nb: nbformat.NotebookNode) -> float:
    """papermill's recorded duration of the training cell in an output notebook."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "t_import" in cell.source:
            return float(cell.metadata["papermill"]["duration"])
    raise CheckFailed("no training cell in the output notebook")


def goal_c(b: Bench, nb_path: Path, steps: int, rounds: int, out: list[str]) -> bool:
    expect = f"trained {steps} steps"
    svc, pm = [], []
    for r in range(rounds):
        order = ("service", "papermill") if r % 2 == 0 else ("papermill", "service")
        line = []
        for side in order:
            if side == "service":
                res = b.run_service("train.ipynb", {"steps": steps, "seed": 0}, expect)
                m = res["job"]["metrics"]
                for key in ("final_loss", "train_s"):
                    if not isinstance(m.get(key), (int, float)):
                        raise CheckFailed(f"training job {res['job']['id']}: metric {key} not recorded: {m}")
                if len(res["job"]["series"].get("loss", [])) < 20:
                    raise CheckFailed(f"training job: loss series {res['job']['series'].get('loss')}")
                res["train_s"], res["import_s"] = m["train_s"], m.get("import_s")
                res["final_loss"] = m["final_loss"]
                res["cell_s"] = train_cell_seconds(aidc.jobs.get(res["job"]["id"], client=b.client).output())
                svc.append(res)
                line.append(f"service {res['took']:.2f} s (cell {res['cell_s']:.2f} s, imports "
                            f"{res['import_s']:.2f} s, loop {res['train_s']:.2f} s)")
            else:
                res = b.run_papermill(nb_path, {"steps": steps, "seed": 0}, expect)
                tail = res["printed"].split("trained ", 1)[1]
                res["train_s"] = float(tail.split(" in ", 1)[1].split(" s,", 1)[0])
                res["final_loss"] = float(tail.rsplit("final loss ", 1)[1].split()[0])
                res["import_s"] = float(tail.rsplit("(imports ", 1)[1].split()[0])
                res["cell_s"] = train_cell_seconds(res["nb"])
                pm.append(res)
                line.append(f"papermill {res['took']:.2f} s (cell {res['cell_s']:.2f} s, imports "
                            f"{res['import_s']:.2f} s, loop {res['train_s']:.2f} s)")
        log(f"(c) round {r + 1}/{rounds}: {', '.join(line)}")
    losses = {r["final_loss"] for r in svc + pm}
    if len(losses) != 1:
        raise CheckFailed(f"the training runs ended with different losses: {sorted(losses)}")

    def med(rs, key):
        return median([r[key] for r in rs])

    s_med, p_med = med(svc, "took"), med(pm, "took")
    s_loop, p_loop = med(svc, "train_s"), med(pm, "train_s")
    ratio = s_med / p_med
    out.append(f"(c) training notebook ({steps} steps of a 256-512-512-10 MLP, torch 1 thread), "
               f"{rounds} round(s), medians:")
    head = ("side", "total s", "training cell s", "imports s", "loop s", "outside the cell s")
    out.append("  {:<40} {:>8} {:>16} {:>10} {:>8} {:>19}".format(*head))
    row = "  {:<40} {:>8.2f} {:>16.2f} {:>10.2f} {:>8.2f} {:>19.2f}"
    for name, rs in (("aidc jobs service (POST + SSE to final)", svc), ("papermill CLI", pm)):
        out.append(row.format(name, med(rs, "took"), med(rs, "cell_s"), med(rs, "import_s"),
                              med(rs, "train_s"), med([{"x": r["took"] - r["cell_s"]} for r in rs], "x")))
    out.append("  (training cell: papermill's own duration of the cell in each output notebook; imports: "
               "`import torch, aidc` timed inside the cell)")
    if rounds > 1:
        for name, rs in (("service", svc), ("papermill", pm)):
            out.append(f"  {name} per round (total / loop s, in run order): " + ", ".join(
                f"{r['took']:.2f} / {r['train_s']:.2f}" for r in rs))
    for name, rs in (("service", svc), ("papermill", pm)):
        out.append(f"  while {name} ran: machine busy " + ", ".join(
            f"{r['busy_cores']:.2f}" for r in rs) + f" of {os.cpu_count()} cores (all processes; the "
            f"training itself is 1); platform processes (not the kernel) used " + ", ".join(
            f"{r['platform_cpu_s']:.1f}" for r in rs) + " CPU-s")
    ph = [phases(r) for r in svc]
    out.append("  service phases (median): " + "; ".join(
        f"{k.split(' (')[0]} {median([p[k] for p in ph]):.3f} s" for k in ph[0]))
    out.append(f"  same work on both sides: final loss {losses.pop()!r} on every run; the service "
               f"recorded {len(svc[0]['job']['series']['loss'])} loss points + final_loss, train_s")
    verdict = "PASS" if ratio <= GOAL_C else f"FAIL ({ratio / GOAL_C:.3f}x the allowed)"
    out.append(f"goal (c): service <= {GOAL_C:.2f}x papermill on a ~{p_med:.0f} s training notebook: "
               f"{ratio:.3f}x (training loop alone {s_loop / p_loop:.3f}x): {verdict}")
    return ratio <= GOAL_C


def recursion_result(printed: str, where: str) -> dict:
    if "recursion " not in printed:
        raise CheckFailed(f"{where}: no 'recursion' line in its output {printed[-500:]!r}")
    return json.loads(printed.rsplit("recursion ", 1)[1].splitlines()[0])


def slow_depths(sweep: list[float]) -> list[int]:
    """Start depths at which fib(16) took more than 3x the sweep's median."""
    m = median(sweep)
    return [d for d, t in enumerate(sweep) if t > 3 * m]


def spans(ds: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, start = [], None
    for i, d in enumerate(ds):
        if start is None:
            start = d
        if i + 1 == len(ds) or ds[i + 1] != d + 1:
            out.append(f"{start}-{d}" if d != start else f"{d}")
            start = None
    return ", ".join(out) or "none"


def goal_d(b: Bench, nb_path: Path, rounds: int, out: list[str]) -> bool:
    params = RECURSION_PARAMS
    script = "".join(f"{k} = {v!r}\n" for k, v in params.items()) + RECURSION_CODE
    sides = ("job", "papermill", "python")
    res: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(rounds):
        order = sides[r % 3:] + sides[:r % 3]
        line = []
        for side in order:
            if side == "job":
                run = b.run_service(nb_path.name, params, "recursion ")
                printed = "".join(e.get("text") or "" for e in run["events"] if e["type"] == "stream")
                res[side].append(recursion_result(printed, f"job {run['job']['id']}"))
            elif side == "papermill":
                run = b.run_papermill(nb_path, params, "recursion ")
                res[side].append(recursion_result(run["printed"], "papermill"))
            else:
                run = b.run_python(script)
                res[side].append(recursion_result(run["printed"], "python"))
            x = res[side][-1]
            line.append(f"{side} fib {x['fib'] * 1000:.1f} ms, ackermann {x['ackermann'] * 1000:.0f} ms, "
                        f"slow depths {spans(slow_depths(x['sweep']))}")
        log(f"(d) round {r + 1}/{rounds}: " + "; ".join(line))

    def med(side: str, key: str) -> float:
        return median([x[key] for x in res[side]])

    sweep = {side: [median([x["sweep"][d] for x in res[side]]) for d in range(params["depths"])]
             for side in sides}
    names = {"job": "aidc job (through the service)", "papermill": "papermill CLI (stock kernel)",
             "python": "stock python -c"}
    out.append(f"(d) recursion, {rounds} rounds (the three sides rotating), medians of the in-cell "
               f"times (thread CPU time, each the best of {params['repeats']}):")
    out.append("  {:<34} {:>12} {:>22} {:>16}  {}".format(
        "side", "fib(27) ms", f"ackermann(2, {params['ack_n']}) ms", "sweep total ms",
        "slow depths of fib(16) (> 3x the sweep's median)"))
    for side in sides:
        out.append("  {:<34} {:>12.1f} {:>22.1f} {:>16.1f}  {}".format(
            names[side], med(side, "fib") * 1000, med(side, "ackermann") * 1000,
            sum(sweep[side]) * 1000, spans(slow_depths(sweep[side]))))
    for other in ("papermill", "python"):
        ratios = [j / o for j, o in zip(sweep["job"], sweep[other])]
        worst = max(range(len(ratios)), key=ratios.__getitem__)
        out.append(f"  fib(16) per start depth, job / {other}: median {median(ratios):.2f}x, "
                   f"max {ratios[worst]:.1f}x (depth {worst}: {sweep['job'][worst] * 1000:.2f} vs "
                   f"{sweep[other][worst] * 1000:.2f} ms)")
    peak = {side: max(range(len(sweep[side])), key=sweep[side].__getitem__) for side in sides}
    same = abs(peak["job"] - peak["papermill"]) <= 1
    out.append(f"  slowest start depth: job {peak['job']}, stock kernel {peak['papermill']}, "
               f"python {peak['python']}; per round, job: "
               + ", ".join(str(max(range(len(x["sweep"])), key=x["sweep"].__getitem__))
                           for x in res["job"]))
    fib_ratio = med("job", "fib") / med("python", "fib")
    ack_ratio = med("job", "ackermann") / med("python", "ackermann")
    worst = max(fib_ratio, ack_ratio)
    ok = worst <= GOAL_D and same
    verdict = "PASS" if ok else "FAIL"
    out.append(f"goal (d): recursion in a job <= {GOAL_D:.2f}x stock python (median): fib "
               f"{fib_ratio:.3f}x, ackermann {ack_ratio:.3f}x; slowest start depth as a stock "
               f"kernel's (+-1): {'yes' if same else 'NO'}: {verdict}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="(a): measured rounds, each one job and one papermill run")
    ap.add_argument("--jobs", type=int, default=50, help="(b): number of trivial jobs")
    ap.add_argument("--baseline-runs", type=int, default=None,
                    help="(b): sequential papermill runs actually timed (default: --jobs); fewer are "
                         "extrapolated to --jobs, and the output says so")
    ap.add_argument("--train-seconds", type=float, default=60.0,
                    help="(c): size the training loop to take about this long minus 4 s (papermill's "
                         "imports and start-up come on top)")
    ap.add_argument("--train-steps", type=int, default=None, help="(c): training steps (skips the calibration)")
    ap.add_argument("--train-rounds", type=int, default=1, help="(c): rounds, each one job and one papermill run")
    ap.add_argument("--recursion-rounds", type=int, default=3,
                    help="(d): rounds, each one job, one papermill run and one python run")
    ap.add_argument("--only", default="a,b,c,d", help="which goals to run: a, b, c, d or a comma list (default all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (platform logs) after the run")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or only - {"a", "b", "c", "d"}:
        ap.error("--only takes a, b, c, d or a comma-separated list of them")
    root = begin(TMP_PREFIX, "the platform runs jobs as per-user Unix accounts", log)
    if root is None:
        return 2
    started = time.monotonic()
    load0 = os.getloadavg()
    bench = Bench(root)
    out: list[str] = []
    verdicts: dict[str, bool] = {}
    problems: list[str] = []
    failed_check = None
    interrupted = False
    cluster = {}

    try:
        bench.start()
        trivial = bench.put("trivial.ipynb", make_notebook("x = 1", TRIVIAL_CODE))
        # warm-up, not counted: the first job after start may wait for the Dask workers and
        # their fork servers to come up; cold file caches on both sides
        w = bench.run_service("trivial.ipynb", {"x": 2}, "result 42")
        pw_ = bench.run_papermill(trivial, {"x": 2}, "result 42")
        log(f"warm-up (not counted): service {w['took']:.3f} s, papermill {pw_['took']:.3f} s")
        time.sleep(2.5)  # the service's view of the cluster is refreshed every 2 s
        cluster = bench.cluster()
        if "a" in only:
            verdicts["a"] = goal_a(bench, trivial, args.rounds, out)
            out.append("")
        if "b" in only:
            verdicts["b"] = goal_b(bench, trivial, args.jobs, args.baseline_runs or args.jobs, out)
            out.append("")
        if "c" in only:
            steps = args.train_steps
            if steps is None:
                rate = calibrate()
                loop_s = max(1.0, args.train_seconds - 4.0)  # papermill's own ~4 s come on top
                steps = max(20, int(rate * loop_s))
                log(f"(c) calibration: {rate:.0f} steps/s in a plain process -> {steps} steps "
                    f"(~{loop_s:.0f} s of training + papermill's start-up)")
            train = bench.put("train.ipynb", make_notebook("steps = 100\nseed = 0", TRAIN_CODE))
            verdicts["c"] = goal_c(bench, train, steps, args.train_rounds, out)
            out.append("")
        if "d" in only:
            params = "\n".join(f"{k} = {v!r}" for k, v in RECURSION_PARAMS.items())
            recursion = bench.put("recursion.ipynb", make_notebook(params, RECURSION_CODE))
            verdicts["d"] = goal_d(bench, recursion, args.recursion_rounds, out)
            out.append("")
    except CheckFailed as e:
        failed_check = str(e)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        problems = bench.cleanup()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root} (platform output: {bench.platform.log_path}, hub log: "
                f"{bench.platform.data_dir / 'logs' / 'hub.log'})")
    elapsed = time.monotonic() - started
    load1 = os.getloadavg()

    print()
    print("Notebook jobs: aidc jobs service (embedded Dask LocalCluster, fork-server kernels, jobs as "
          "the owner's account) vs the papermill CLI, same notebooks, same python3 kernel")
    print(f"machine: {os.cpu_count()} CPUs, CPython {py_platform.python_version()}, "
          f"{py_platform.platform()}; load average at start {load0[0]:.2f}, at end {load1[0]:.2f}")
    if cluster:
        print(f"jobs cluster: {cluster.get('kind')}, {cluster.get('workers')} workers "
              f"(threads: {cluster.get('threads', cluster.get('nthreads', '?'))})")
    print()
    for line in out:
        print(line)
    if failed_check:
        print(f"CHECK FAILED: {failed_check}")
    elif not interrupted:
        print("checks: OK: every service job completed with the expected output; every papermill "
              "run exited 0 with the expected output and injected parameters")
    report_end(problems, "platform stopped, its Unix accounts (user, admin) and processes are gone, "
               "temporary folders removed" if not args.keep else
               "platform stopped, its Unix accounts and processes are gone (folder kept)", elapsed)
    if interrupted:
        return 130
    return 1 if (failed_check or problems) else 0


if __name__ == "__main__":
    sys.exit(main())
