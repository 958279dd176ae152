"""The GPU inventory: real GPUs through NVML, or a declared, clearly labelled simulation.

Everything above this module sees *units*: the things the ledger hands out. A whole GPU
is one unit; a GPU in MIG mode offers its MIG instances instead; a GPU declared as shared
offers N fractional units (memory-capped time slicing). Each unit carries the identifier
that goes into ``CUDA_VISIBLE_DEVICES`` (the GPU or MIG UUID), so a process sees exactly
what it was given.

NVML is reached only through the ``pynvml`` module (``nvidia-ml-py``). Tests put a fake
``pynvml`` first on ``sys.path``; everything above that boundary runs for real.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("aidc.gpu")

WHOLE = "whole"
MIG = "mig"
SHARE = "share"


@dataclass(frozen=True)
class GPUUnit:
    """One allocatable unit: a whole GPU, a MIG instance, or a fractional share."""

    id: str  # "gpu0", "gpu1/mig2", "gpu3/share1"
    kind: str  # WHOLE, MIG or SHARE
    gpu_index: int
    visible_id: str  # what CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES get
    name: str
    memory_mb: int
    simulated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GPUDevice:
    """One physical (or simulated) GPU as NVML reports it."""

    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int = 0
    utilization_pct: int = 0
    mig_enabled: bool = False
    mig_instances: list[dict] = field(default_factory=list)  # {"uuid", "name", "memory_mb"}
    shares: int = 0  # >0: offered as this many fractional units
    simulated: bool = False
    #: what a ``telemetry`` reader of :func:`read_nvml` returned (aidc.monitor); else empty
    telemetry: dict = field(default_factory=dict)

    def units(self) -> list[GPUUnit]:
        if self.mig_enabled and self.mig_instances:
            return [
                GPUUnit(f"gpu{self.index}/mig{i}", MIG, self.index, m["uuid"], m["name"],
                        int(m["memory_mb"]), self.simulated)
                for i, m in enumerate(self.mig_instances)
            ]
        if self.shares > 0:
            per = self.memory_total_mb // self.shares
            return [
                GPUUnit(f"gpu{self.index}/share{i}", SHARE, self.index, self.uuid,
                        f"{self.name} (1/{self.shares})", per, self.simulated)
                for i in range(self.shares)
            ]
        return [GPUUnit(f"gpu{self.index}", WHOLE, self.index, self.uuid, self.name,
                        self.memory_total_mb, self.simulated)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Inventory:
    """A snapshot of the machine's GPUs. ``simulated`` is True when none are real."""

    def __init__(self, devices: list[GPUDevice], simulated: bool, source: str):
        self.devices = devices
        self.simulated = simulated
        self.source = source

    def units(self) -> list[GPUUnit]:
        return [u for d in self.devices for u in d.units()]

    def unit_kinds(self) -> set[str]:
        return {u.kind for u in self.units()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "simulated": self.simulated,
            "source": self.source,
            "devices": [d.to_dict() for d in self.devices],
            "units": [u.to_dict() for u in self.units()],
        }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml(shares: dict[int, int] | None = None, telemetry=None) -> Inventory:
    """Read the real GPUs. Raises ``pynvml.NVMLError_LibraryNotFound`` without a driver.

    ``telemetry(pynvml, handle, mig_handles)``, when given, is called for each GPU in the
    same NVML session and its dict kept as ``GPUDevice.telemetry`` (the monitor's extra
    readings: temperature, power, processes), so NVML is read in one place.
    """
    import pynvml

    shares = shares or {}
    pynvml.nvmlInit()
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            except pynvml.NVMLError:
                util = 0
            mig_enabled, instances = False, []
            try:
                current, _pending = pynvml.nvmlDeviceGetMigMode(h)
                mig_enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:  # GPUs without MIG support
                pass
            mig_handles = []
            if mig_enabled:
                for m in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, m)
                    except pynvml.NVMLError:
                        continue
                    mig_handles.append(mh)
                    instances.append({
                        "uuid": _text(pynvml.nvmlDeviceGetUUID(mh)),
                        "name": _text(pynvml.nvmlDeviceGetName(mh)),
                        "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(mh).total // 2**20,
                    })
            devices.append(GPUDevice(
                index=i,
                uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                name=_text(pynvml.nvmlDeviceGetName(h)),
                memory_total_mb=mem.total // 2**20,
                memory_used_mb=mem.used // 2**20,
                utilization_pct=int(util),
                mig_enabled=mig_enabled,
                mig_instances=instances,
                shares=0 if mig_enabled else int(shares.get(i, 0)),
                telemetry=telemetry(pynvml, h, mig_handles) if telemetry else {},
            ))
        return Inventory(devices, simulated=False, source="nvml")
    finally:
        pynvml.nvmlShutdown()


def simulated(spec: int | list[dict], shares: dict[int, int] | None = None) -> Inventory:
    """An inventory declared in config: a count, or a list of GPUs.

    Each list entry may give ``name``, ``memory_mb``, ``mig`` (a list of
    ``{"name", "memory_mb"}`` instances) and ``shares``.
    """
    shares = shares or {}
    entries = [{} for _ in range(spec)] if isinstance(spec, int) else list(spec)
    devices = []
    for i, e in enumerate(entries):
        mig = e.get("mig") or []
        devices.append(GPUDevice(
            index=i,
            uuid=f"GPU-simulated-{i:04d}",
            name=e.get("name", "Simulated GPU"),
            memory_total_mb=int(e.get("memory_mb", 16384)),
            mig_enabled=bool(mig),
            mig_instances=[
                {"uuid": f"MIG-simulated-{i:04d}-{j}", "name": m.get("name", "Simulated MIG"),
                 "memory_mb": int(m.get("memory_mb", 4096))}
                for j, m in enumerate(mig)
            ],
            shares=int(e.get("shares", shares.get(i, 0))),
            simulated=True,
        ))
    return Inventory(devices, simulated=True, source="simulated")


def detect(simulated_spec: int | list[dict] = 4, shares: dict[int, int] | None = None) -> Inventory:
    """Real GPUs when NVML is there; otherwise the simulated inventory (and a warning)."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        pynvml = None
    if pynvml is not None:
        try:
            inv = read_nvml(shares)
        except pynvml.NVMLError_LibraryNotFound:
            pass
        except pynvml.NVMLError as e:
            log.warning("NVML is installed but failed (%s); using the simulated inventory", e)
        else:
            return inv
    inv = simulated(simulated_spec, shares)
    log.warning("no NVIDIA driver: using a SIMULATED inventory of %d GPUs", len(inv.devices))
    return inv
