"""GPU-aware spawning: profiles in, GPUs from the ledger, exactly those GPUs visible.

:class:`GPUAllocationMixin` goes in front of a JupyterHub spawner. At start it

1. turns ``user_options`` (``{"profile": "gpu-1"}`` from the spawn form or the REST API)
   into a :class:`~aidc.gpu.profiles.ResourceProfile`: unknown profiles are a 400;
2. asks the :class:`~aidc.gpu.ledger.GPULedger` for the profile's units: more than the
   platform has is a 400 at once, over quota a 403 with the quota in the message;
   otherwise granted, or queued (the spawn page shows the queue position through
   JupyterHub's progress events, and a wait limit ends with a clear message);
3. starts the server with ``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES`` set to
   the units' UUIDs, CPU affinity to the profile's cores, and a memory limit.

Stopping the server (or a failed spawn, or a cull, or removing the user) releases the
units; ``aidc up`` reconciles the ledger with the hub's servers before the hub starts.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import resource

from jinja2 import Environment, FileSystemLoader, select_autoescape
from tornado import web
from traitlets import Float, List, default
from traitlets.config import LoggingConfigurable

from ..errors import AidcError, UsageError
from ..gpu import profiles as gpu_profiles
from ..gpu.ledger import GRANTED, Claim, GPULedger, ImpossibleRequestError, QuotaExceededError
from ..gpu.platform import open_ledger
from ..paths import data_dir as platform_data_dir, templates_dir


def _http_error(e: AidcError) -> web.HTTPError:
    status = 403 if isinstance(e, QuotaExceededError) else 400
    err = web.HTTPError(status, str(e))
    err.jupyterhub_message = str(e)  # shown on the spawn page
    return err


def _note_user_options(spawner, user_options: dict) -> None:
    """JupyterHub's ``apply_user_options`` hook: ``profile`` is applied at start, others ignored."""
    others = sorted(k for k in user_options or {} if k != "profile")
    if others:
        spawner.log.debug("user_options for %s not used by aidc: %s",
                          getattr(spawner, "_log_name", "?"), ", ".join(others))


class GPUAllocationMixin(LoggingConfigurable):
    """Resource profiles and GPU allocation for a JupyterHub spawner (see module doc)."""

    resource_profiles = List(
        help="""Resource profiles offered to users, as dicts with the fields of
        `aidc.gpu.profiles.ResourceProfile` (id, display_name, description, gpus,
        gpu_kind: whole|mig|share, cpu_cores, memory_gb, default). Empty: the defaults
        cpu, gpu-1, gpu-2, mig-1, share-1. The same list drives the spawn form, the REST
        API validation and the Kubernetes profile_list.""",
    ).tag(config=True)

    gpu_queue_timeout = Float(
        600,
        help="""Longest a spawn waits in the GPU queue before giving up with a message
        (seconds). Keep `Spawner.start_timeout` larger than this.""",
    ).tag(config=True)

    gpu_poll_interval = Float(0.5, help="How often a queued spawn asks the ledger (seconds).").tag(
        config=True
    )

    @default("options_form")
    def _default_options_form(self):
        return self._options_form_html

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # tells JupyterHub (5.3+) that user_options are handled: "profile" is read and
        # checked at start (_allocate); without a hook it warns "Received unhandled
        # user_options ... profile" at every spawn
        return _note_user_options

    ledger: GPULedger | None = None
    claim: Claim | None = None
    profile: gpu_profiles.ResourceProfile | None = None

    @property
    def holder(self) -> str:
        return f"server:{self.user.name}/{self.name}"

    def _ledger(self) -> GPULedger:
        """The hub's one ledger (one engine for all spawners), configured by ``c.GPULedger``."""
        if self.ledger is None:
            data_dir = str(platform_data_dir().root)
            if data_dir not in _LEDGERS:
                _LEDGERS[data_dir] = open_ledger(data_dir, config=self.config)
            self.ledger = _LEDGERS[data_dir]
        return self.ledger

    def _profiles(self) -> list[gpu_profiles.ResourceProfile]:
        return gpu_profiles.profiles_from_config(self.resource_profiles)

    # -- spawn form -----------------------------------------------------------------
    def _options_form_html(self, spawner=None) -> str:
        units = self._ledger().units()
        free: dict[str, int] = {}
        for u in units:
            if u["holder"] is None:
                free[u["kind"]] = free.get(u["kind"], 0) + 1
        cores, memory_gb = gpu_profiles.machine_resources()
        entries = []
        for p in self._profiles():
            reason = gpu_profiles.unsatisfiable_reason(p, units)
            real, clamped = gpu_profiles.clamp_to_machine(p, cores, memory_gb)
            entries.append({
                "profile": p,
                "disabled_reason": reason,
                "machine_note": (
                    f"on this machine: {gpu_profiles._fmt(real.cpu_cores)} CPU cores, "
                    f"{gpu_profiles._fmt(real.memory_gb)} GB memory"
                ) if clamped else None,
            })
        # the default is checked unless it can never start; then the first that can
        startable = [e for e in entries if not e["disabled_reason"]]
        checked = next((e for e in startable if e["profile"].default), startable[0] if startable else None)
        env = Environment(loader=FileSystemLoader(str(templates_dir())), autoescape=select_autoescape())
        return env.get_template("aidc_profiles_form.html").render(
            entries=entries,
            checked=checked["profile"].id if checked else None,
            free=free,
            simulated=any(u["simulated"] for u in units),
        )

    def _clamp_profile(self, profile: gpu_profiles.ResourceProfile) -> gpu_profiles.ResourceProfile:
        """The profile cut to this machine's cores and memory, with a warning when cut."""
        clamped, message = gpu_profiles.clamp_to_machine(profile)
        if message:
            owner = getattr(getattr(self, "user", None), "name", "?")
            self.log.warning("Server of %s: %s", owner, message)
        return clamped

    # -- start / stop ---------------------------------------------------------------
    async def _allocate(self) -> Claim:
        try:
            self.profile = gpu_profiles.validate_options(self._profiles(), self.user_options)
        except UsageError as e:
            raise _http_error(e) from None
        self.profile = self._clamp_profile(self.profile)
        ledger = self._ledger()
        groups = [g.name for g in self.user.groups]
        try:
            claim = await asyncio.to_thread(
                ledger.request, self.holder, self.user.name, self.profile.gpus,
                self.profile.gpu_kind, groups,
            )
        except (ImpossibleRequestError, QuotaExceededError, UsageError) as e:
            raise _http_error(e) from None
        self.claim = claim
        waited = 0.0
        while claim.state != GRANTED:
            if waited >= self.gpu_queue_timeout:
                await asyncio.to_thread(ledger.release, self.holder)
                message = (
                    f"No GPU became free within {int(self.gpu_queue_timeout)} seconds "
                    f"(you were number {claim.position} in the queue). Try again later, "
                    "or choose a smaller profile."
                )
                err = web.HTTPError(503, message)
                err.jupyterhub_message = message
                raise err
            await asyncio.sleep(self.gpu_poll_interval)
            waited += self.gpu_poll_interval
            claim = await asyncio.to_thread(ledger.poll, self.holder)
            if claim is None:  # released under us (server stopped while waiting)
                raise web.HTTPError(409, "the GPU request was cancelled")
            self.claim = claim
        return claim

    def _apply_profile(self, claim: Claim) -> None:
        profile = self.profile
        self.cpu_limit = float(profile.cpu_cores)
        self.mem_limit = int(profile.memory_gb * 2**30)
        visible = claim.visible_devices if claim.units else ""
        self.environment = {
            **self.environment,
            # no GPU at all for a CPU profile: an empty list hides every device
            "CUDA_VISIBLE_DEVICES": visible,
            "NVIDIA_VISIBLE_DEVICES": visible or "void",
            "AIDC_PROFILE": profile.id,
            "AIDC_GPU_UNITS": ",".join(u["id"] for u in claim.units),
            "AIDC_GPUS_SIMULATED": "1" if any(u["simulated"] for u in claim.units) else "0",
            "OMP_NUM_THREADS": str(max(1, math.floor(profile.cpu_cores))),
        }
        shares = [u for u in claim.units if u["kind"] == "share"]
        if shares:
            # the memory cap of a time-sliced share, for the framework in the kernel to apply
            # (e.g. torch.cuda.set_per_process_memory_fraction); TF grows instead of grabbing all
            self.environment["AIDC_GPU_MEMORY_LIMIT_MB"] = str(min(u["memory_mb"] for u in shares))
            self.environment["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"

    def _cpu_set(self) -> set[int]:
        """The profile's cores, least shared with other servers of this hub first."""
        available = sorted(os.sched_getaffinity(0))
        want = max(1, min(len(available), math.ceil(self.profile.cpu_cores)))
        load = {c: 0 for c in available}
        for cores in _CPU_USE.values():
            for core in cores:
                if core in load:
                    load[core] += 1
        chosen = set(sorted(available, key=lambda c: (load[c], c))[:want])
        _CPU_USE[self.holder] = chosen
        return chosen

    def make_preexec_fn(self, name):
        inner = super().make_preexec_fn(name)
        cpus = self._cpu_set() if self.profile else None
        mem = self.mem_limit if self.profile else None

        def preexec():
            if cpus:
                os.sched_setaffinity(0, cpus)
            if mem:
                # a per-process cap on private memory (RLIMIT_DATA leaves CUDA's address
                # space reservations alone); cgroups do whole-server limits in production
                resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
            inner()

        return preexec

    async def start(self):
        claim = await self._allocate()
        self._apply_profile(claim)
        return await super().start()

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            await self._release()

    async def run_post_stop_hook(self):
        # also runs for a server that died on its own, when JupyterHub skips stop()
        await self._release()
        result = super().run_post_stop_hook()
        if inspect.isawaitable(result):
            await result

    async def _release(self) -> None:
        _CPU_USE.pop(self.holder, None)
        await asyncio.to_thread(self._ledger().release, self.holder)
        self.claim = None

    async def progress(self):
        """Queue position while waiting for GPUs, then what was granted."""
        reported = None
        while True:
            claim = self.claim
            if claim is not None and claim.state != GRANTED:
                message = (f"Waiting for {claim.count} GPU(s): number {claim.position} in the queue")
                if message != reported:
                    reported = message
                    yield {"progress": 10, "message": message}
            elif claim is not None:
                got = ", ".join(u["name"] + (" (simulated)" if u["simulated"] else "") for u in claim.units)
                yield {"progress": 50, "message": f"Granted {got or 'no GPU'}; starting JupyterLab"}
                return
            await asyncio.sleep(0.5)


#: the ledger of each data directory, shared by the spawners of this hub process
_LEDGERS: dict[str, GPULedger] = {}

#: cores handed out by this hub process, per holder (for spreading servers)
_CPU_USE: dict[str, set[int]] = {}
