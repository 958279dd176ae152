"""GPU samples: NVML's figures per GPU, and per-process GPU memory with its holder.

NVML is read through :func:`aidc.gpu.inventory.read_nvml` (one session per sample) with
:func:`nvml_telemetry` as its reader of the figures the inventory does not need. Every
reading a GPU does not support is left out, not invented. Without NVML the GPUs are the
platform's simulated inventory: their figures are zeros, and labelled simulated.
"""

from __future__ import annotations

import logging

from ..gpu import inventory
from ..gpu.platform import shares_spec, simulated_spec
from .attribution import attribute

log = logging.getLogger("aidc.monitor")

MIB = 2**20


def _try(pynvml, call, *args):
    try:
        return call(*args)
    except pynvml.NVMLError:
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _processes(pynvml, handle, device: str) -> list[dict]:
    found = _try(pynvml, pynvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
    return [{"pid": int(p.pid), "used_bytes": int(p.usedGpuMemory or 0), "device": device}
            for p in found]


def nvml_telemetry(pynvml, handle, mig_handles) -> dict:
    """The monitor's readings of one GPU (called by ``read_nvml`` inside its NVML session)."""
    out = {}
    temp = _try(pynvml, pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
    if temp is not None:
        out["temperature_c"] = float(temp)
    power = _try(pynvml, pynvml.nvmlDeviceGetPowerUsage, handle)
    if power is not None:
        out["power_w"] = power / 1000.0
    energy = _try(pynvml, pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
    if energy is not None:
        out["energy_j"] = energy / 1000.0
    for key, clock in (("sm_clock_hz", pynvml.NVML_CLOCK_SM), ("memory_clock_hz", pynvml.NVML_CLOCK_MEM)):
        mhz = _try(pynvml, pynvml.nvmlDeviceGetClockInfo, handle, clock)
        if mhz is not None:
            out[key] = mhz * 1e6
    uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
    procs = _processes(pynvml, handle, uuid)
    for mh in mig_handles:
        procs += _processes(pynvml, mh, _text(pynvml.nvmlDeviceGetUUID(mh)))
    out["processes"] = procs
    return out


def read_gpus() -> inventory.Inventory:
    """The GPUs with telemetry (NVML), else the simulated inventory (no telemetry)."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return inventory.simulated(simulated_spec(), shares_spec())
    try:
        return inventory.read_nvml(shares_spec(), telemetry=nvml_telemetry)
    except pynvml.NVMLError_LibraryNotFound:
        return inventory.simulated(simulated_spec(), shares_spec())


def gpu_samples(inv: inventory.Inventory, claims: list, account_of=None, xids: dict | None = None) -> list[dict]:
    """One dict per GPU: its figures, holders from ``claims`` and attributed processes;
    ``xids``: an :class:`~aidc.monitor.xid.XidWatcher`'s counts (real GPUs only)."""
    kwargs = {"account_of": account_of} if account_of else {}
    out = []
    for d in inv.devices:
        t = d.telemetry
        holders = [{"holder": c.holder, "owner": c.owner} for c in claims
                   if any(u["gpu_index"] == d.index for u in c.units)]
        sample = {
            "gpu": str(d.index), "uuid": d.uuid, "name": d.name, "simulated": d.simulated,
            "utilization_percent": float(d.utilization_pct),
            "memory_used_bytes": float(d.memory_used_mb * MIB),
            "memory_total_bytes": float(d.memory_total_mb * MIB),
            "mig": [m["uuid"] for m in d.mig_instances] if d.mig_enabled else [],
            "holders": holders,
            "processes": attribute(t.get("processes", []), d.index, claims, **kwargs),
        }
        for key, name in (("temperature_c", "temperature_celsius"), ("power_w", "power_watts"),
                          ("energy_j", "energy_joules"), ("sm_clock_hz", "sm_clock_hertz"),
                          ("memory_clock_hz", "memory_clock_hertz")):
            if key in t:
                sample[name] = t[key]
        if xids is not None and not d.simulated:
            seen = xids.get(d.uuid, {"count": 0, "last": None})
            sample["xid_errors"], sample["xid_last"] = float(seen["count"]), seen["last"]
        out.append(sample)
    return out
