"""The resources service: who holds which GPU, and who waits, at ``/services/resources/``.

``GET api/gpus``   the inventory's units (each marked ``simulated`` or not), their holders,
                   the free count per kind, and the caller's holdings and quota;
``GET api/queue``  the waiting requests in order;
``GET api/profiles`` the resource profiles offered (the hub's, from the same declaration).
An admin sees every holder and every waiting request; anyone else sees free counts, their
own holdings and their own place in the queue (other people's claims are left out).
"""

from __future__ import annotations

import json
import os

from .. import roles
from ..services.declare import ManagedService, python_command
from ..services.base import ServiceApp, ServiceHandler, run_service, signed_in
from .ledger import GRANTED
from .platform import open_ledger
from .profiles import profiles_from_config

_ledger = None


def ledger():
    global _ledger
    if _ledger is None:
        # the quotas (c.GPULedger.default_quota, user_quotas) come from the drop-ins
        app = ServiceApp.for_platform()
        _ledger = open_ledger(app.data_dir, config=app.config)
    return _ledger


# -- response views: what the API shows of the ledger's records, in one place ----------------
def unit_view(u: dict, claim, shown: bool) -> dict:
    """A GPU unit; its holder and owner only where the caller may see the claim (``shown``)."""
    return {
        "id": u["id"], "node": u["node"], "kind": u["kind"], "name": u["name"],
        "visible_id": u["visible_id"],  # the UUID nvidia-smi and CUDA_VISIBLE_DEVICES show
        "memory_mb": u["memory_mb"], "simulated": u["simulated"],
        "free": u["holder"] is None,
        "holder": u["holder"] if shown else None,
        "owner": claim.owner if shown else None,
    }


def holding_view(c) -> dict:
    return {"holder": c.holder, "units": [u["id"] for u in c.units]}


def waiting_view(c) -> dict:
    return {"holder": c.holder, "owner": c.owner, "position": c.position, "gpus": c.count,
            "kind": c.kind}


class GPUsHandler(ServiceHandler):
    @signed_in
    def get(self):
        claims = {c.holder: c for c in ledger().claims()}
        units, free = [], {}
        for u in ledger().units():
            holder = u["holder"]
            claim = claims.get(holder) if holder else None
            if holder is None:
                free[u["kind"]] = free.get(u["kind"], 0) + 1
            shown = bool(holder and claim and self.caller.can_see(owner=claim.owner))
            units.append(unit_view(u, claim, shown))
        mine = [c for c in claims.values() if c.owner == self.user_name and c.state == GRANTED]
        self.write_json({
            "simulated": any(u["simulated"] for u in units),
            "units": units,
            "free": free,
            "mine": [holding_view(c) for c in mine],
            "quota": ledger().quota_for(self.user_name),
        })


class QueueHandler(ServiceHandler):
    @signed_in
    def get(self):
        waiting = [c for c in ledger().queue() if self.caller.can_see(owner=c.owner)]
        self.write_json({"queue": [waiting_view(c) for c in waiting]})


class ProfilesHandler(ServiceHandler):
    @signed_in
    def get(self):
        raw = os.environ.get("AIDC_RESOURCE_PROFILES")
        declared = profiles_from_config(json.loads(raw) if raw else None)
        self.write_json({"profiles": [p.to_dict() for p in declared]})


def managed_service() -> ManagedService:
    """Entry point (group ``aidc.services``): the resources service declaration."""
    return ManagedService(
        name="resources",
        command=python_command("aidc.gpu.service"),
        roles=[roles.SCIENTIST, roles.VIEWER],
        info={"description": "GPU inventory, holders and queue"},
        display=False,
    )


if __name__ == "__main__":
    run_service([
        (r"/api/gpus", GPUsHandler),
        (r"/api/queue", QueueHandler),
        (r"/api/profiles", ProfilesHandler),
    ])
