"""GPU-aware culling: stop a server that holds GPUs it does not use.

jupyterhub-idle-culler looks at activity only. A server holding a GPU is expensive
while idle, so this service stops one whose kernels have all been idle *and* whose GPUs
showed no utilisation for ``--idle-timeout`` seconds (default 1800), usually long before
the general idle timeout. Stopping goes through the hub, so the GPUs are released like
any other stop, and the cull is recorded in the audit log.

Evidence used, every ``--interval`` seconds:
* kernels: ``GET /user/<name>/<server>/api/kernels`` through the proxy; idle means every
  kernel's ``execution_state`` is ``idle`` (the latest ``last_activity`` counts as the
  start of idleness);
* GPUs: NVML utilisation of each GPU the server holds (a MIG slice reports through its
  parent GPU); with a simulated inventory the GPUs count as unused.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from datetime import datetime

from traitlets import Integer
from traitlets.config import Configurable

from ..errors import AidcError
from ..hubapi import HubAPI
from ..services.declare import ManagedService, python_command
from ..security import audit
from .ledger import GRANTED
from ..paths import data_dir
from .platform import open_ledger

log = logging.getLogger("aidc.gpu.culler")

DEFAULT_IDLE_TIMEOUT = 1800


def gpu_utilization() -> dict[int, int]:
    """GPU index -> utilisation %, or {} without NVML (simulated GPUs count as unused)."""
    try:
        from .inventory import read_nvml

        inv = read_nvml()
    except Exception:  # no driver, or NVML failing: no evidence of use
        return {}
    return {d.index: d.utilization_pct for d in inv.devices}


def _timestamp(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class GPUCuller:
    def __init__(self, hub_api: str, public_url: str, token: str, data_dir: str,
                 idle_timeout: float, interval: float):
        self.hub = HubAPI(hub_api, token)
        #: users' servers, through the proxy, with the same token
        self.servers = HubAPI(public_url, token, timeout=30, retries=0)
        self.ledger = open_ledger(data_dir)
        self.idle_timeout = idle_timeout
        self.interval = interval
        self.idle_since: dict[str, float] = {}
        #: holder -> why the last pass kept it; logged when it changes, so an operator can
        #: read why a server was not culled without a line per server per pass
        self.kept: dict[str, str] = {}

    def _keep(self, holder: str, why: str) -> None:
        if self.kept.get(holder) != why:
            self.kept[holder] = why
            log.info("keeps %s: %s", holder[len("server:"):], why)

    def kernels_idle_since(self, user: str, server: str) -> float | None:
        """When the server's kernels became idle (None: one is busy or it did not answer)."""
        path = f"/user/{user}/{server + '/' if server else ''}api/kernels"
        try:
            kernels = self.servers.request("GET", path)
        except AidcError:  # not answering, or not the server's API: no evidence of idleness
            return None
        if not isinstance(kernels, list):
            return None
        if any(k.get("execution_state") != "idle" for k in kernels):
            return None
        return max((_timestamp(k.get("last_activity")) for k in kernels), default=0.0)

    def check_once(self, now: float | None = None) -> list[str]:
        """One pass: returns the holders culled."""
        now = time.time() if now is None else now
        util = gpu_utilization()
        culled = []
        holders = set()
        for claim in self.ledger.claims():
            if not claim.holder.startswith("server:") or claim.state != GRANTED or not claim.units:
                continue
            holders.add(claim.holder)
            user, _, server = claim.holder[len("server:"):].partition("/")
            busy_gpu = any(util.get(u["gpu_index"], 0) > 0 for u in claim.units)
            kernels_since = None if busy_gpu else self.kernels_idle_since(user, server)
            if kernels_since is None:
                self.idle_since.pop(claim.holder, None)
                self._keep(claim.holder, "its GPUs are in use" if busy_gpu else
                           "a kernel is busy, or the server did not answer")
                continue
            since = max(self.idle_since.setdefault(claim.holder, now), kernels_since)
            if now - since >= self.idle_timeout:
                if self.cull(user, server, now - since):
                    culled.append(claim.holder)
                    self.idle_since.pop(claim.holder, None)
                    self.kept.pop(claim.holder, None)
            else:
                self._keep(claim.holder, f"GPUs unused and kernels idle; stopped after "
                                         f"{self.idle_timeout:g} s of this")
        for gone in set(self.idle_since) - holders:
            self.idle_since.pop(gone, None)
        for gone in set(self.kept) - holders:
            self.kept.pop(gone, None)
        return culled

    def cull(self, user: str, server: str, idle_for: float) -> bool:
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        try:
            self.hub.request("DELETE", path)
            refused = None
        except AidcError as e:
            refused = str(e)
        audit.record(
            "server", actor="gpu-culler", action="stop", target=f"{user}/{server}",
            result="success" if refused is None else "failure",
            reason=f"GPUs unused and kernels idle for {int(idle_for)} s"
            + ("" if refused is None else f"; {refused}"),
        )
        log.info("culled %s/%s (GPUs unused for %d s): %s", user, server, idle_for, refused or "stopped")
        return refused is None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.check_once()
            except Exception:
                log.exception("GPU culling pass failed")
            stop.wait(self.interval)


class GPUCulling(Configurable):
    """When the GPU-aware culler stops servers (``c.GPUCulling.*`` in a drop-in)."""

    idle_timeout = Integer(DEFAULT_IDLE_TIMEOUT, help="""Seconds a server's GPUs may show no
        utilisation while all its kernels are idle before the server is stopped (usually
        well below the general idle timeout: an idle GPU is the expensive part)."""
    ).tag(config=True)
    interval = Integer(0, help="""Seconds between checks; 0: a tenth of the idle timeout,
        between 5 s and 1 min.""").tag(config=True)


def managed_service(config=None) -> ManagedService:
    """Entry point (group ``aidc.services``): the GPU-aware culler, as ``c.GPUCulling``
    in the hub's configuration (``config``) sets it."""
    settings = GPUCulling(config=config)
    timeout = settings.idle_timeout
    every = settings.interval or max(5, min(60, timeout // 10))
    return ManagedService(
        name="gpu-culler",
        command=python_command("aidc.gpu.culler", f"--idle-timeout={timeout}", f"--interval={every}"),
        hub_scopes=["list:users", "read:servers", "delete:servers", "access:servers"],
        web=False,
        info={"description": f"stops servers whose GPUs are unused for {timeout} s"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    parser.add_argument("--interval", type=float, default=60)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    culler = GPUCuller(
        hub_api=os.environ["JUPYTERHUB_API_URL"],
        public_url=os.environ["AIDC_URL"],
        token=os.environ["JUPYTERHUB_API_TOKEN"],
        data_dir=str(data_dir().root),
        idle_timeout=args.idle_timeout,
        interval=args.interval,
    )
    # SIGTERM (the hub's stop, or the hub's death through PR_SET_PDEATHSIG) and Ctrl-C end
    # the process by an exception, wherever it is. Setting a threading.Event from a signal
    # handler deadlocks when the signal lands while the main thread holds the Event's lock
    # inside its own wait(): a culler orphaned that way outlived its hub's SIGKILL.
    signal.signal(signal.SIGTERM, _stop_now)
    signal.signal(signal.SIGINT, _stop_now)
    try:
        culler.run(threading.Event())
    except SystemExit:
        pass


def _stop_now(*_) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
