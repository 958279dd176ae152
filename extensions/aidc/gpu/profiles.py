"""Resource profiles: declared once, they drive the spawn form, the API, the CLI and Kubernetes.

A profile says what a server (or job) gets: GPU units of one kind, CPU cores and memory.
:func:`validate_options` turns a user's request (``{"profile": "gpu-1"}`` from the form or
the REST API) into a :class:`ResourceProfile`, refusing unknown profiles and profiles
the ledger refuses at once those that this platform can never satisfy.

:func:`unsatisfiable_reason` says (for the spawn form) why a profile can never start
here, and :func:`clamp_to_machine` cuts the CPU cores and memory a profile promises to
what the machine has (the spawner logs a warning when it does).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from ..errors import UsageError
from .inventory import MIG, SHARE, WHOLE


@dataclass(frozen=True)
class ResourceProfile:
    id: str
    display_name: str
    description: str
    gpus: int = 0
    gpu_kind: str = WHOLE  # WHOLE, MIG or SHARE
    cpu_cores: float = 1
    memory_gb: float = 4
    default: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_PROFILES: tuple[ResourceProfile, ...] = (
    ResourceProfile("cpu", "CPU only", "2 CPU cores, 4 GB memory, no GPU", 0, WHOLE, 2, 4, True),
    ResourceProfile("gpu-1", "1 GPU", "1 whole GPU, 4 CPU cores, 16 GB memory", 1, WHOLE, 4, 16),
    ResourceProfile("gpu-2", "2 GPUs", "2 whole GPUs on one node, 8 CPU cores, 32 GB memory", 2, WHOLE, 8, 32),
    ResourceProfile("mig-1", "1 MIG slice", "1 MIG instance of a partitioned GPU, 2 CPU cores, 8 GB", 1, MIG, 2, 8),
    ResourceProfile("share-1", "GPU share", "a memory-capped share of a time-sliced GPU, 2 CPU cores, 8 GB", 1, SHARE, 2, 8),
)


def profiles_from_config(entries: list[dict] | None) -> list[ResourceProfile]:
    """Profiles from ``c.GPUSpawner.profiles`` style dicts, or the defaults."""
    if not entries:
        return list(DEFAULT_PROFILES)
    return [ResourceProfile(**e) for e in entries]


def find(profiles: list[ResourceProfile], profile_id: str | None) -> ResourceProfile:
    if not profile_id:
        return next((p for p in profiles if p.default), profiles[0])
    for p in profiles:
        if p.id == profile_id:
            return p
    raise UsageError(
        f"unknown profile {profile_id!r}; choose one of: {', '.join(p.id for p in profiles)}"
    )


def validate_options(profiles: list[ResourceProfile], options: dict | None) -> ResourceProfile:
    """A user's options (form or REST) -> the profile they get, or a UsageError saying why not.

    Whether the GPUs can ever be had is the ledger's call (:meth:`GPULedger.request`).
    """
    options = dict(options or {})
    profile_id = options.pop("profile", None)
    if isinstance(profile_id, list):  # from a form
        profile_id = profile_id[0] if profile_id else None
    unknown = sorted(k for k in options if k not in ("profile",))
    if unknown:
        raise UsageError(f"unknown server option(s) {', '.join(unknown)}; only 'profile' is accepted")
    return find(profiles, profile_id)


#: how each kind of GPU unit is counted in messages (as the ledger says it)
_KIND_LABEL = {WHOLE: "whole GPUs", MIG: "MIG instances", SHARE: "GPU shares"}


def unsatisfiable_reason(profile: ResourceProfile, units: list[dict]) -> str | None:
    """Why ``profile`` can never start on a platform with these GPU ``units``, or None.

    ``units`` are the ledger's rows (:meth:`GPULedger.units`); like the ledger, a request
    must fit on one node.
    """
    if not profile.gpus:
        return None
    per_node: dict[str, int] = {}
    for u in units:
        if u["kind"] == profile.gpu_kind:
            per_node[u.get("node") or ""] = per_node.get(u.get("node") or "", 0) + 1
    most = max(per_node.values(), default=0)
    if profile.gpus <= most:
        return None
    label = _KIND_LABEL.get(profile.gpu_kind, profile.gpu_kind)
    if most == 0:
        return f"this platform has no {label}"
    where = "any node of this platform" if len(per_node) > 1 else "this platform"
    return f"needs {profile.gpus} {label}, but {where} has {most}"


def machine_resources() -> tuple[int, float]:
    """(CPU cores this process may use, total memory in GB) of this machine."""
    cores = len(os.sched_getaffinity(0))
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil is a dependency of the hub
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cores, memory / 2**30


def _fmt(x: float) -> str:
    return f"{x:g}" if float(x).is_integer() else f"{x:.1f}"


def clamp_to_machine(
    profile: ResourceProfile, cores: int | None = None, memory_gb: float | None = None
) -> tuple[ResourceProfile, str | None]:
    """``profile`` with its CPU cores and memory cut to the machine's, and what was cut.

    Returns the (possibly unchanged) profile and None, or the clamped profile and a
    sentence naming the profile, what it promised and what it gets, for the hub log.
    """
    if cores is None or memory_gb is None:
        have_cores, have_mem = machine_resources()
        cores = have_cores if cores is None else cores
        memory_gb = have_mem if memory_gb is None else memory_gb
    memory_gb = int(memory_gb * 10) / 10  # rounded down, as shown
    new_cores = min(profile.cpu_cores, cores)
    new_mem = min(profile.memory_gb, memory_gb)
    if (new_cores, new_mem) == (profile.cpu_cores, profile.memory_gb):
        return profile, None
    clamped = replace(profile, cpu_cores=new_cores, memory_gb=new_mem)
    message = (
        f"profile {profile.id!r} promises {_fmt(profile.cpu_cores)} CPU cores and "
        f"{_fmt(profile.memory_gb)} GB memory, but this machine has {cores} cores and "
        f"{_fmt(memory_gb)} GB: the server gets {_fmt(new_cores)} CPU cores and "
        f"{_fmt(new_mem)} GB"
    )
    return clamped, message
