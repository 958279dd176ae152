"""The platform's one ledger and inventory, as every process opens them.

The hub, the resources service and (later) the jobs and models services all call
:func:`open_ledger` on the same data directory, so they share one ledger.
"""

from __future__ import annotations

import json
import os

from ..errors import UsageError
from ..paths import DataDir
from .inventory import Inventory, detect
from ..security import audit
from .ledger import GRANTED, Claim, GPULedger

DEFAULT_SIMULATED_GPUS = 4


def platform_db_url(data_dir: str | os.PathLike) -> str:
    """The platform database (see :meth:`aidc.paths.DataDir.db_url`)."""
    return DataDir.from_arg(data_dir).db_url()


class AuditedLedger(GPULedger):
    """The ledger as the platform's processes use it: every grant and release also goes to
    the audit log (``gpu`` events: ``claim`` when a holder is first seen granted by this
    process, ``release`` when units are freed), whichever process made the decision: the
    hub for servers, the jobs service for jobs, the models service for deployments.
    Benchmarks and unit tests use :class:`GPULedger` itself, which records nothing."""

    def __init__(self, **traits):
        super().__init__(**traits)
        self._reported: dict[str, str] = {}  # holder -> owner, claims recorded as granted

    def _granted(self, claim: Claim | None) -> Claim | None:
        if claim is not None and claim.state == GRANTED and claim.holder not in self._reported:
            self._reported[claim.holder] = claim.owner
            audit.record("gpu", actor=claim.owner or "platform", action="claim", target=claim.holder,
                         result="success", units=[u["id"] for u in claim.units])
        return claim

    def request(self, holder: str, owner: str, count: int, *args, **kwargs) -> Claim:
        claim = super().request(holder, owner, count, *args, **kwargs)
        if claim.state == GRANTED and not claim.owner:
            claim.owner = owner
        return self._granted(claim)

    def poll(self, holder: str) -> Claim | None:
        return self._granted(super().poll(holder))

    def release(self, holder: str) -> list[str]:
        freed = super().release(holder)
        owner = self._reported.pop(holder, None)
        if freed:
            audit.record("gpu", actor=owner or "platform", action="release", target=holder,
                         result="success", units=list(freed))
        return freed


def open_ledger(data_dir: str | os.PathLike, **traits) -> GPULedger:
    return AuditedLedger(db_url=platform_db_url(data_dir), **traits)


def simulated_spec() -> int | list[dict]:
    """``AIDC_SIMULATED_GPUS``: a count, or a JSON list of GPUs (see inventory.simulated)."""
    raw = os.environ.get("AIDC_SIMULATED_GPUS", str(DEFAULT_SIMULATED_GPUS)).strip()
    try:
        spec = json.loads(raw) if raw.startswith("[") else int(raw)
    except ValueError:
        spec = None
    if spec is None or (isinstance(spec, int) and spec < 0):
        raise UsageError(
            f"--simulated-gpus must be a number of GPUs (0 or more) or a JSON list of GPUs, not {raw!r}"
        )
    return spec


def shares_spec() -> dict[int, int]:
    """``AIDC_GPU_SHARES``: GPUs offered as time-sliced shares, ``"INDEX=N,..."`` (e.g. ``"3=4"``)."""
    raw = os.environ.get("AIDC_GPU_SHARES", "").strip()
    if not raw:
        return {}
    try:
        pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
        shares = {int(i): int(n) for i, n in pairs}
    except ValueError:
        shares = None
    if shares is None or any(n < 1 for n in shares.values()):
        raise UsageError(f"AIDC_GPU_SHARES must look like '3=4,5=2' (GPU index=shares), not {raw!r}")
    return shares


def detect_and_sync(ledger: GPULedger) -> Inventory:
    """Read the GPUs (NVML, else the simulation) and make the ledger's units match."""
    inventory = detect(simulated_spec(), shares_spec())
    ledger.sync_inventory(inventory)
    return inventory
