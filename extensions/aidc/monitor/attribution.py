"""Which ledger holder a process on a GPU belongs to.

NVML reports host PIDs per GPU (or MIG instance). A PID's owner is its Unix account
(``/proc/<pid>`` belongs to it); a platform account is ``<prefix><user>`` (see
:mod:`aidc.accounts`), and the holder is that user's server, job or deployment whose
ledger units are on that GPU. A process of an account the platform did not make, or of a
user holding nothing there, is reported with what is known (account, no holder): GPU
memory used outside the ledger is worth seeing.
"""

from __future__ import annotations

import os
import pwd

from ..accounts import DEFAULT_PREFIX


def unix_account(pid: int, proc: str = "/proc") -> str | None:
    """The account a process runs as, or None when it is gone."""
    try:
        uid = os.stat(f"{proc}/{pid}").st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def platform_user(account: str | None, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The platform user of a Unix account (``jupyter-alice`` → ``alice``), else None."""
    if account and prefix and account.startswith(prefix) and len(account) > len(prefix):
        return account[len(prefix):]
    return None


def holder_of(user: str | None, device_ids: set[str], gpu_index: int, claims: list) -> str | None:
    """The holder of ``user`` whose units are on this GPU: a unit whose visible id is one of
    ``device_ids`` (the GPU's or the MIG instance's UUID), else any unit of ``gpu_index``.

    ``claims`` are the ledger's granted claims (:meth:`aidc.gpu.ledger.GPULedger.claims`).
    """
    if user is None:
        return None
    mine = [c for c in claims if c.owner == user and c.units]
    for c in mine:
        if any(u["visible_id"] in device_ids for u in c.units):
            return c.holder
    for c in mine:
        if any(u["gpu_index"] == gpu_index for u in c.units):
            return c.holder
    return None


def attribute(processes: list[dict], gpu_index: int, claims: list, account_of=unix_account,
              prefix: str = DEFAULT_PREFIX) -> list[dict]:
    """``processes`` (``{"pid", "used_bytes", "device"}``, device: the GPU or MIG UUID)
    with ``account``, ``user`` and ``holder`` added."""
    out = []
    for p in processes:
        account = account_of(p["pid"])
        user = platform_user(account, prefix)
        out.append({**p, "account": account, "user": user,
                    "holder": holder_of(user, {p["device"]}, gpu_index, claims)})
    return out
