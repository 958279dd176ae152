"""What the suite fakes, checked once on a real NVIDIA machine: NVML, CUDA, dask-cuda.

The suite runs on machines without a GPU: NVML is the fake at the pynvml boundary
(``tests/fake_nvml``) and replicas load models on the CPU. This script runs the real
paths on a machine with a GPU, each step on its own (a failing step is reported, the next
one runs):

1. **inventory**: :func:`aidc.gpu.inventory.read_nvml` on the real driver (names, UUIDs,
   memory, MIG mode, not labelled simulated);
2. **replica on ``--device auto``**: ``python -m aidc.models.server`` serving the MNIST CNN
   (TorchScript) with ``CUDA_VISIBLE_DEVICES=0`` and with it empty; the log says where the
   model runs, and its answers match the CPU forward pass; a short closed loop gives the
   p50 of single-sample requests on each;
3. **the collector**: :func:`aidc.monitor.gpus.read_gpus` and ``gpu_samples`` while the
   GPU replica runs: utilization, memory, temperature, power, clocks, and the replica's
   process among the GPU's processes;
4. **XID watcher**: :class:`aidc.monitor.xid.XidWatcher` starts and stops on the real driver;
5. **dask-cuda**: :class:`aidc.jobs.cluster.JobCluster` with ``use_cuda="auto"`` starts a
   ``LocalCUDACluster`` (one worker per GPU) and each worker sees its own
   ``CUDA_VISIBLE_DEVICES`` and a CUDA device in torch.

Run (on the GPU machine, from the repository root, with ``extensions`` on ``PYTHONPATH``
and dask, distributed, dask-cuda, tornado, traitlets, SQLAlchemy installed)::

    python3 benchmarks/gpu_check.py

Prints one line per finding; the result is recorded in ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

import numpy as np
import torch



def say(step: str, **fields) -> None:
    print(json.dumps({"step": step, **fields}, default=str), flush=True)


def step(fn):
    def run(*args):
        t = time.monotonic()
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - report and go on
            say(fn.__name__, ok=False, error=f"{type(e).__name__}: {e}",
                trace=traceback.format_exc()[-1500:])
        finally:
            say(fn.__name__ + " done", seconds=round(time.monotonic() - t, 2))
    return run


@step
def inventory():
    from aidc.gpu.inventory import read_nvml

    inv = read_nvml()
    for d in inv.devices:
        say("inventory", index=d.index, name=d.name, uuid=d.uuid, memory_total_mb=d.memory_total_mb,
            mig=d.mig_enabled)
    say("inventory", ok=bool(inv.devices) and not inv.simulated, source=inv.source,
        units=[u.id for u in inv.units()] if callable(getattr(inv, "units", None)) else None)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


@step
def replica(folder: Path):
    from aidc.models import formats

    torch.manual_seed(0)  # the serving benchmark's MNIST CNN (serving.py imports the test platform)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 5 * 5, 10)).eval()
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    fmt, name, sig = formats.save(model, folder / "model", example=x[:1])
    procs = {}
    for label, visible in (("gpu", "0"), ("cpu", "")):
        port = free_port()
        log = open(folder / f"replica-{label}.log", "w")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
        t = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "aidc.models.server", "--format", fmt, "--artifact",
             str(folder / "model" / name), "--signature-json", json.dumps(sig.to_dict()),
             "--name", "cnn", "--version", "1", "--port", str(port), "--device", "auto"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        procs[label] = proc
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() - t < 120:
            try:
                with urllib.request.urlopen(base + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.1)
        ready = time.monotonic() - t
        body = json.dumps({"inputs": [{"name": sig.inputs[0].name, "shape": list(x.shape),
                                       "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
        status, answer = post(base + f"/v2/models/cnn/infer", body)
        out = np.asarray(json.loads(answer)["outputs"][0]["data"], np.float32).reshape(expected.shape)
        one = json.dumps({"inputs": [{"name": sig.inputs[0].name, "shape": [1, 1, 28, 28],
                                      "datatype": "FP32", "data": x[:1].ravel().tolist()}]}).encode()
        lat = []
        end = time.monotonic() + 3
        while time.monotonic() < end:
            t0 = time.perf_counter()
            post(base + "/v2/models/cnn/infer", one)
            lat.append(time.perf_counter() - t0)
        where = [line.strip() for line in open(folder / f"replica-{label}.log")
                 if "runs on" in line or "ready:" in line]
        say("replica", side=label, CUDA_VISIBLE_DEVICES=visible, ready_s=round(ready, 2),
            status=status, matches_cpu=bool(np.allclose(out, expected, atol=1e-3)),
            max_abs_diff=float(np.abs(out - expected).max()),
            p50_ms=round(float(np.median(lat)) * 1000, 3), requests=len(lat), log=where)
    return procs


@step
def collector(replica_pid: int | None):
    from aidc.monitor import gpus

    inv = gpus.read_gpus()
    samples = gpus.gpu_samples(inv, claims=[])
    for s in samples:
        pids = [p.get("pid") for p in s.get("processes", [])]
        say("collector", gpu=s["gpu"], name=s["name"], simulated=s["simulated"],
            utilization_percent=s["utilization_percent"],
            memory_used_gib=round(s["memory_used_bytes"] / 2**30, 2),
            temperature_c=s.get("temperature_celsius"), power_w=s.get("power_watts"),
            energy_j=s.get("energy_joules"), sm_clock_hz=s.get("sm_clock_hertz"),
            processes=s.get("processes"), replica_seen=replica_pid in pids)


@step
def xid():
    from aidc.monitor.xid import XidWatcher

    w = XidWatcher()
    w.start()
    time.sleep(1)
    alive = w._thread is not None and w._thread.is_alive()  # False: it found no driver
    w.stop()
    say("xid", ok=alive, watching=alive, counts=w.counts)


@step
def dask_cuda():
    from aidc.jobs.cluster import JobCluster

    async def main():
        cluster = JobCluster(use_cuda="auto")
        client = await cluster.start()
        try:
            def probe():
                import os as _os

                import torch as _torch
                return {"CUDA_VISIBLE_DEVICES": _os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "cuda": _torch.cuda.is_available(),
                        "device": _torch.cuda.get_device_name(0) if _torch.cuda.is_available() else None}
            seen = await client.run(probe)
            say("dask-cuda", kind=cluster.describe(), workers=seen)
        finally:
            await cluster.close()
    asyncio.run(main())


def main() -> None:
    say("machine", torch=torch.__version__, cuda=torch.cuda.is_available(),
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        python=sys.version.split()[0])
    inventory()
    folder = Path(tempfile.mkdtemp(prefix="aidc-gpu-check-"))
    procs = replica(folder) or {}
    gpu = procs.get("gpu")
    collector(gpu.pid if gpu is not None else None)
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        p.wait(timeout=30)
    xid()
    dask_cuda()


if __name__ == "__main__":
    main()
