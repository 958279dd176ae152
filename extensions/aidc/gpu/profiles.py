"""Resource profiles: declared once, they drive the spawn form, the API, the CLI and Kubernetes.

A profile says what a server (or job) gets: GPU units of one kind, CPU cores and memory.
:func:`validate_options` turns a user's request (``{"profile": "gpu-1"}`` from the form or
the REST API) into a :class:`ResourceProfile`, refusing unknown profiles and profiles
the ledger refuses at once those that this platform can never satisfy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
