"""A fake NVML at the ``pynvml`` boundary: the only fake in the suite, standing in for GPUs.

Put this folder first on ``PYTHONPATH`` and point ``AIDC_FAKE_NVML`` at a JSON file:

    [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "utilization": 0,
      "mig": [{"name": "MIG 1g.10gb", "memory_mb": 9856}, ...]}, ...]

The file is read at every ``nvmlInit`` so a test can change utilisation while the
platform runs. Without ``AIDC_FAKE_NVML`` it behaves like a machine with no driver.
Only the calls aidc makes are implemented, with the real module's names and types.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple

NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


_Memory = namedtuple("c_nvmlMemory_t", "total free used")
_Utilization = namedtuple("c_nvmlUtilization_t", "gpu memory")

_gpus: list[dict] | None = None


class _Handle:
    def __init__(self, gpu: dict, index: int, mig: dict | None = None, mig_index: int = 0):
        self.gpu, self.index, self.mig, self.mig_index = gpu, index, mig, mig_index


_inits = 0  # NVML counts nvmlInit calls: only the last nvmlShutdown unloads it


def nvmlInit():
    global _gpus, _inits
    path = os.environ.get("AIDC_FAKE_NVML")
    if not path:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    with open(path) as f:
        _gpus = json.load(f)
    _inits += 1


def nvmlShutdown():
    global _gpus, _inits
    _inits = max(0, _inits - 1)
    if _inits == 0:
        _gpus = None


def _require():
    if _gpus is None:
        raise NVMLError_Uninitialized("Uninitialized")
    return _gpus


def nvmlSystemGetDriverVersion():
    _require()
    return "580.00.fake"


def nvmlDeviceGetCount():
    return len(_require())


def nvmlDeviceGetHandleByIndex(index):
    gpus = _require()
    if not 0 <= index < len(gpus):
        raise NVMLError_NotFound("Not Found")
    return _Handle(gpus[index], index)


def nvmlDeviceGetName(h):
    return h.mig["name"] if h.mig else h.gpu.get("name", "NVIDIA Fake GPU")


def nvmlDeviceGetUUID(h):
    if h.mig:
        return f"MIG-fake-{h.index:02d}-{h.mig_index}"
    return h.gpu.get("uuid", f"GPU-fake-{h.index:04d}")


def nvmlDeviceGetMemoryInfo(h):
    total = (h.mig or h.gpu).get("memory_mb", 16384) * 2**20
    used = (h.mig or h.gpu).get("used_mb", 0) * 2**20
    return _Memory(total=total, free=total - used, used=used)


def nvmlDeviceGetUtilizationRates(h):
    if h.mig:
        raise NVMLError_NotSupported("Not Supported")
    return _Utilization(gpu=int(h.gpu.get("utilization", 0)), memory=0)


def nvmlDeviceGetMigMode(h):
    if "mig" not in h.gpu:
        raise NVMLError_NotSupported("Not Supported")
    mode = NVML_DEVICE_MIG_ENABLE if h.gpu["mig"] else NVML_DEVICE_MIG_DISABLE
    return [mode, mode]


def nvmlDeviceGetMaxMigDeviceCount(h):
    return len(h.gpu.get("mig") or [])


def nvmlDeviceGetMigDeviceHandleByIndex(h, index):
    migs = h.gpu.get("mig") or []
    if not 0 <= index < len(migs):
        raise NVMLError_NotFound("Not Found")
    return _Handle(h.gpu, h.index, migs[index], index)


# -- telemetry (aidc.monitor): optional keys of a GPU entry, with idle defaults --------
#    "temperature_c", "power_w", "energy_j", "sm_clock_mhz", "mem_clock_mhz", and
#    "processes": [{"pid": 1234, "used_mb": 512}] (on a GPU entry, or a MIG entry for
#    processes in that instance)

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2

_Process = namedtuple("c_nvmlProcessInfo_t", "pid usedGpuMemory gpuInstanceId computeInstanceId")


def _whole_gpu_only(h):
    if h.mig:
        raise NVMLError_NotSupported("Not Supported")
    return h.gpu


def nvmlDeviceGetTemperature(h, sensor):
    return int(_whole_gpu_only(h).get("temperature_c", 35))


def nvmlDeviceGetPowerUsage(h):
    return int(float(_whole_gpu_only(h).get("power_w", 60)) * 1000)  # milliwatts


def nvmlDeviceGetTotalEnergyConsumption(h):
    return int(float(_whole_gpu_only(h).get("energy_j", 0)) * 1000)  # millijoules


def nvmlDeviceGetClockInfo(h, clock):
    gpu = _whole_gpu_only(h)
    if clock == NVML_CLOCK_MEM:
        return int(gpu.get("mem_clock_mhz", 2619))
    return int(gpu.get("sm_clock_mhz", 1980))


def nvmlDeviceGetComputeRunningProcesses(h):
    entry = h.mig if h.mig else h.gpu
    return [_Process(pid=int(p["pid"]), usedGpuMemory=int(p.get("used_mb", 0)) * 2**20,
                     gpuInstanceId=h.mig_index if h.mig else 0xFFFFFFFF,
                     computeInstanceId=0 if h.mig else 0xFFFFFFFF)
            for p in entry.get("processes", [])]


# -- XID events: a GPU entry's "xid_events": [79, 48, ...] are delivered once each, in order,
#    to an event set the GPU is registered with (the file is read again at each wait)

class NVMLError_Timeout(NVMLError):
    pass


nvmlEventTypeXidCriticalError = 8
_EventData = namedtuple("c_nvmlEventData_t", "device eventType eventData gpuInstanceId computeInstanceId")


class _EventSet:
    def __init__(self):
        self.handles, self.delivered = [], {}


def nvmlEventSetCreate():
    _require()
    return _EventSet()


def nvmlDeviceRegisterEvents(h, event_types, event_set):
    if h.mig:
        raise NVMLError_NotSupported("Not Supported")
    event_set.handles.append(h)


def nvmlEventSetWait_v2(event_set, timeout_ms):
    import time

    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            with open(os.environ["AIDC_FAKE_NVML"]) as f:
                gpus = json.load(f)
        except ValueError:  # a test is rewriting the file: look again at the next turn
            gpus = []
        for h in event_set.handles:
            events = gpus[h.index].get("xid_events", []) if h.index < len(gpus) else []
            done = event_set.delivered.get(h.index, 0)
            if done < len(events):
                event_set.delivered[h.index] = done + 1
                return _EventData(h, nvmlEventTypeXidCriticalError, int(events[done]), 0xFFFFFFFF, 0xFFFFFFFF)
        if time.monotonic() >= deadline:
            raise NVMLError_Timeout("Timeout")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def nvmlEventSetFree(event_set):
    event_set.handles = []
