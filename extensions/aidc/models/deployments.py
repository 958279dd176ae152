"""Running deployments: model-server replica processes, their health, and traffic between versions.

A deployment of model ``name`` serves one primary version and, optionally, a canary
version that gets a weighted share of the requests. Each served version runs
``replicas`` processes of :mod:`aidc.models.server`, each listening on a Unix socket
only (mode 0600, in the 0700 folder of its owner's artifact copy): a replica checks no
token, so its one door is the one the service opens after authenticating the caller;
there is no TCP port that another local account could find in ``/proc`` and call. The
:class:`DeploymentRunner` keeps them alive (a replica that dies is started again; a
version serves once one replica answers ``/v2/health/ready`` and is ready once every
replica asked for does), and switches traffic only to versions that are ready, so
promotion and rollback never drop a request: the old version's replicas are stopped
once the requests they are serving have finished (SIGTERM lets a server finish in-flight
requests). The status reports each version's and each replica's cold start
(``ready_seconds``: from the start of serving, or of the replica's process, until ready,
i.e. loaded and warmed up).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from ..errors import PlatformError
from ..process import die_with_parent
from . import artifacts_local, routing
from .endpoint_metrics import EndpointMetrics
from ..accounts import RunAs
from .sandbox import Staged, owner_account, process_options, stage


#: numbers replicas' socket files apart (one folder may hold several versions' sockets)
_SOCKETS = itertools.count()


def _die_with_parent() -> None:
    """A replica's ``preexec_fn``: SIGKILL when the models service dies (nothing to save)."""
    die_with_parent(signal.SIGKILL)


#: how often a replica that exits while its version loads is started before the version fails
START_ATTEMPTS = 4
#: seconds a replaced version keeps running after the routing table stops naming it
ROUTER_GRACE = 0.5


def state_path(data_dir: str) -> Path:
    """Where the service records its running replicas for its successor."""
    return Path(data_dir) / "models" / "replicas.json"


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class Replica:
    #: the replica's Unix socket: its only listening address (the same across restarts)
    socket: Path | None = None
    #: the process this service started (None: not started, or adopted from a predecessor)
    process: subprocess.Popen | None = None
    #: its process id, and the process's start time (which tells a reused pid apart)
    pid: int | None = None
    created: float = 0.0
    ready: bool = False
    restarts: int = 0
    inflight: int = 0
    failed_checks: int = 0
    #: pooled connections to the socket: the service's path to the replica
    session: aiohttp.ClientSession | None = None
    #: when its process last started (monotonic), and the seconds from then until it first
    #: answered ready (loaded and warmed up): its cold start, None until then
    started: float = 0.0
    ready_seconds: float | None = None

    #: the host part of the URLs sent over the socket (only their paths matter)
    url = "http://replica"

    @property
    def label(self) -> str:
        """How logs name this replica: its socket file and process."""
        return f"{self.socket.name if self.socket else '?'} (pid {self.pid})"

    def running(self) -> bool:
        """Its process runs (a child of this service's, or one adopted)."""
        if self.process is not None:
            return self.process.poll() is None
        if self.pid is None:
            return False
        try:
            proc = psutil.Process(self.pid)
            return (abs(proc.create_time() - self.created) < 0.05
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def exited(self) -> bool:
        """It had a process, and that process ended."""
        return (self.process is not None or self.pid is not None) and not self.running()

    @property
    def exit_code(self) -> int | str:
        return self.process.returncode if self.process is not None else "unknown: adopted"

    def signal(self, sig: int) -> None:
        if not self.running():
            return
        try:
            if self.process is not None:
                self.process.send_signal(sig)
            elif self.pid is not None:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def open_session(self) -> None:
        """Pooled keep-alive connections over the socket (no TCP stack: cheaper per request)."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket), limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    def close_session(self) -> None:
        if self.session is not None:
            asyncio.ensure_future(self.session.close())
            self.session = None


@dataclass
class ServedVersion:
    """All replicas of one model version."""

    name: str
    version: int
    command: list[str]
    #: the Unix account its replicas run as (the model's owner), None: the service's own
    identity: RunAs | None = None
    #: the artifact copy that account reads
    staged: Staged | None = None
    #: the GPUs its replicas see (CUDA_VISIBLE_DEVICES): the deployment's ledger claim
    visible_devices: str = ""
    replicas: list[Replica] = field(default_factory=list)
    _next: itertools.count = field(default_factory=itertools.count)
    #: when the service began to serve it (staging the artifact included), and the seconds
    #: from then until every replica was ready: the version's cold start, None until then
    started: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None

    @property
    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready]

    def pick(self) -> Replica | None:
        ready = self.ready
        if not ready:
            return None
        return ready[next(self._next) % len(ready)]

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)


@dataclass
class Route:
    primary: ServedVersion
    canary: ServedVersion | None = None
    canary_weight: float = 0.0

    def choose(self) -> ServedVersion:
        if self.canary is not None and self.canary.ready and random.random() < self.canary_weight:
            return self.canary
        return self.primary


class DeploymentRunner(LoggingConfigurable):
    """Starts, watches and stops replica processes; routes requests to them."""

    ready_timeout = Float(300.0, help="Seconds a new version may take to load and warm up.").tag(config=True)
    health_interval = Float(1.0, help="Seconds between checks of every replica.").tag(config=True)
    drain_timeout = Float(30.0, help="Seconds a replaced version gets to finish its requests.").tag(config=True)
    unavailable_wait = Float(
        15.0, help="Seconds a request waits for a ready replica (while one restarts) before a 503.",
    ).tag(config=True)
    threads_per_replica = Integer(0, help="Compute threads per replica (0: the machine's cores / replicas).").tag(config=True)

    def __init__(self, registry, run_root: Path | None = None, ledger=None,
                 data_dir: str | None = None, lifeline: int | None = None, **kwargs):
        super().__init__(**kwargs)
        #: the process whose end ends the replicas (the hub): they outlive this service, and
        #: a successor adopts them (see :meth:`start`). None: they die with this process
        self.lifeline = lifeline
        #: where the routing table for the inference router goes, and where the router's
        #: request counts come from (aidc.models.routing); None: no router
        self.data_dir = data_dir
        self.table_path = routing.table_path(data_dir) if data_dir else None
        #: the running replicas, for a successor to adopt (written with the table)
        self.state_path = state_path(data_dir) if data_dir else None
        self._published: dict | None = None
        self._state_written: dict | None = None
        self.registry = registry
        #: GPULedger: a deployment's replicas see the GPUs of its claim ``deployment:<name>``
        self.ledger = ledger
        #: where artifacts are staged for their owners' replicas (aidc.models.sandbox)
        self.run_root = run_root or Path(tempfile.gettempdir()) / "aidc-models"
        self.routes: dict[str, Route] = {}
        self._watch: asyncio.Task | None = None
        self.metrics = EndpointMetrics()

    async def start(self) -> None:
        """Bring the recorded deployments back: adopt the replicas a predecessor left running
        (a service that was killed: its replicas kept serving through the router), start
        the others."""
        self._watch = asyncio.create_task(self._watch_loop())
        adopted = self._adoptable()
        for dep in self.registry.find_deployments():  # the service restarted: bring them back
            try:
                await self.apply(dep, wait=False, adopt=adopted.pop(dep["name"], []))
            except Exception as e:
                self.log.error("aidc models: could not restore deployment %s: %s", dep["name"], e)
        for left in adopted.values():  # of deployments removed since: stop them
            for served in left:
                self._stop(served)
        self.publish()

    def _adoptable(self) -> dict[str, list[ServedVersion]]:
        """The versions in the state file with a replica still running, as this service's."""
        out: dict[str, list[ServedVersion]] = {}
        state = routing.read_json(self.state_path) if self.state_path else None
        for name, versions in (state or {}).items():
            for v in versions:
                staged = Staged(Path(v["artifact"]), Path(v["directory"]) if v["directory"] else None)
                try:
                    identity = owner_account(self.registry.model(name)["owner"])
                except Exception:
                    identity = None
                served = ServedVersion(name, v["version"], v["command"], identity=identity,
                                       staged=staged, visible_devices=v["visible_devices"],
                                       ready_seconds=v.get("ready_seconds"))
                for r in v["replicas"]:
                    replica = Replica(socket=Path(r["socket"]), pid=r["pid"], created=r["created"],
                                      restarts=r.get("restarts", 0),
                                      ready_seconds=r.get("ready_seconds"))
                    replica.open_session()
                    served.replicas.append(replica)
                if any(r.running() for r in served.replicas):
                    self.log.info("aidc models: adopted %s v%d: %d of %d replicas running", name,
                                  served.version, sum(r.running() for r in served.replicas),
                                  len(served.replicas))
                    out.setdefault(name, []).append(served)
                else:
                    self._stop(served)
        return out

    @staticmethod
    def adopted_folders(data_dir: str) -> set[str]:
        """The staging folders of the replicas a predecessor left (kept when the service
        empties its staging root at start)."""
        state = routing.read_json(state_path(data_dir)) or {}
        return {Path(v["directory"]).name for versions in state.values() for v in versions
                if v.get("directory")}

    async def close(self) -> None:
        if self._watch:
            self._watch.cancel()
        sessions = []
        for route in list(self.routes.values()):
            for served in (route.primary, route.canary):
                if served:
                    sessions += [r.session for r in served.replicas if r.session is not None]
                    self._stop(served)
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if self.state_path is not None:  # stopped on purpose: nothing is left to adopt
            self.state_path.unlink(missing_ok=True)

    # -- versions -------------------------------------------------------------------
    def _command(self, name: str, version: dict, dep: dict, replicas: int, artifact: Path) -> list[str]:
        threads = self.threads_per_replica or max(1, (os.cpu_count() or 1) // max(replicas, 1))
        return [sys.executable, "-m", "aidc.models.server", "--format", version["format"],
                "--artifact", str(artifact), "--signature-json", json.dumps(version["signature"]),
                "--name", name, "--version", str(version["version"]),
                "--max-batch-size", str(dep["max_batch_size"]),
                "--max-queue-delay-ms", str(dep["max_queue_delay_ms"]), "--threads", str(threads)]

    def _spawn(self, served: ServedVersion, replica: Replica) -> None:
        replica.ready = False
        replica.close_session()
        if replica.socket is None:
            # where the replica's account may create it and nobody else may enter: its
            # artifact copy's 0700 folder (the service's folder without an account change);
            # a restarted replica binds the same path again
            folder = served.staged.directory if served.staged and served.staged.directory else self.run_root
            folder.mkdir(parents=True, exist_ok=True)
            replica.socket = folder / f"r{next(_SOCKETS)}.sock"
        # the model's code runs as its owner (aidc.models.sandbox) and sees exactly the
        # deployment's GPUs, none at all without a claim
        gpus = {"CUDA_VISIBLE_DEVICES": served.visible_devices,
                "NVIDIA_VISIBLE_DEVICES": served.visible_devices or "void"}
        # the Unix socket only: no TCP port that any local account could call without a token
        replica.started = time.monotonic()
        replica.ready_seconds = None
        command = [*served.command, "--unix-socket", str(replica.socket)]
        if self.lifeline is not None:
            # it outlives this service (a successor adopts it: a restart of the service
            # does not stop inference) but not the platform
            command += ["--exit-with", str(self.lifeline)]
        replica.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=None,
            preexec_fn=None if self.lifeline is not None else _die_with_parent,
            **process_options(served.identity, served.staged, gpus))
        replica.pid = replica.process.pid
        try:
            replica.created = psutil.Process(replica.pid).create_time()
        except psutil.Error:
            replica.created = 0.0  # gone already: the next check restarts it
        replica.open_session()

    async def _serve(self, name: str, number: int, dep: dict, wait: bool) -> ServedVersion:
        t0 = time.monotonic()
        version = self.registry.version(name, number)
        identity = owner_account(self.registry.model(name)["owner"])
        artifact = artifacts_local.for_replica(version["artifact_url"], version["filename"])
        staged = stage(artifact, identity, self.run_root, prefix=f"v{number}-")  # short: socket paths
        served = ServedVersion(name, number, self._command(name, version, dep, dep["replicas"], staged.path),
                               identity=identity, staged=staged,
                               visible_devices=self._visible_devices(name), started=t0)
        for _ in range(dep["replicas"]):
            replica = Replica()
            self._spawn(served, replica)
            served.replicas.append(replica)
        if wait:
            await self._wait_ready(served)
        return served

    def _visible_devices(self, name: str) -> str:
        if self.ledger is None:
            return ""
        claim = next((c for c in self.ledger.claims() if c.holder == f"deployment:{name}"), None)
        return claim.visible_devices if claim is not None else ""

    async def _wait_ready(self, served: ServedVersion) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            # before _check starts them again: a version whose every replica keeps exiting
            # while it loads will not load, and waiting out the time-out would not help
            exited = [r.exit_code for r in served.replicas if r.exited()]
            if (served.replicas and len(exited) == len(served.replicas)
                    and all(r.restarts >= START_ATTEMPTS - 1 for r in served.replicas)):
                self._stop(served)
                raise PlatformError(
                    f"model {served.name} version {served.version} did not become ready: its "
                    f"replicas exited while loading, {START_ATTEMPTS} times each (exit code "
                    f"{exited[0]}); see the models service log")
            await self._check(served)
            ready = served.ready
            if len(ready) == len(served.replicas):
                return
            if ready and all(r.ready or r.restarts >= START_ATTEMPTS - 1 for r in served.replicas):
                break  # the others keep exiting while they load: waiting longer will not help
            # a health check is one request on the socket: polling often costs little and
            # is part of the cold start that the status reports
            await asyncio.sleep(0.05)
        if served.ready:
            # serving with fewer replicas than asked for beats serving nothing: the
            # deployment says how many are ready, and the watch keeps restarting the rest
            self.log.warning("aidc models: %s v%d serves with %d of %d replicas ready",
                             served.name, served.version, len(served.ready), len(served.replicas))
            return
        self._stop(served)
        raise PlatformError(f"model {served.name} version {served.version} did not become ready "
                            f"(it could not be loaded, or took longer than {self.ready_timeout:g} s); "
                            "see the models service log")

    async def _check(self, served: ServedVersion) -> None:
        for replica in served.replicas:
            if replica.exited():
                replica.ready = False
                if replica.restarts < 1000:
                    replica.restarts += 1
                    self.log.warning("aidc models: replica %s of %s v%d exited (%s); restarting",
                                     replica.label, served.name, served.version, replica.exit_code)
                    self._spawn(served, replica)
                continue
            try:
                async with replica.session.get(f"{replica.url}/v2/health/ready",
                                            timeout=aiohttp.ClientTimeout(total=5)) as r:
                    replica.ready = r.status == 200
                    replica.failed_checks = 0
                    if replica.ready and replica.ready_seconds is None:
                        replica.ready_seconds = time.monotonic() - replica.started
            except aiohttp.ClientConnectionError:
                replica.ready = False  # nothing listens: starting, or gone
            except asyncio.TimeoutError:
                # busy with requests: only three slow answers in a row take it out
                replica.failed_checks += 1
                if replica.failed_checks >= 3:
                    replica.ready = False
        replicas = served.replicas
        if served.ready_seconds is None and replicas and all(r.ready for r in replicas):
            served.ready_seconds = time.monotonic() - served.started

    def _stop(self, served: ServedVersion) -> None:
        for replica in served.replicas:
            replica.ready = False
            replica.signal(signal.SIGTERM)
            replica.close_session()
            if replica.socket is not None and not (served.staged and served.staged.directory):
                replica.socket.unlink(missing_ok=True)  # in the shared folder (no account change)
        if served.staged is not None:  # loaded already; a stopped version is never restarted
            served.staged.remove()

    async def _drain_and_stop(self, served: ServedVersion) -> None:
        # the inference router reads the new table within a tenth of a second; what it sent
        # before, the replicas finish after SIGTERM (they stop listening, then drain)
        await asyncio.sleep(ROUTER_GRACE)
        deadline = time.monotonic() + self.drain_timeout
        while served.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stop(served)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            for route in list(self.routes.values()):
                for served in (route.primary, route.canary):
                    if served is not None:
                        try:
                            await self._check(served)
                        except Exception:
                            self.log.exception("aidc models: health check failed")
            self.publish()

    # -- what the API calls ------------------------------------------------------------
    async def apply(self, dep: dict, wait: bool = True, adopt: list[ServedVersion] = ()) -> None:
        """Make the running replicas match deployment record ``dep``; switch traffic when
        ready. ``adopt``: versions a predecessor left running, used if they still fit."""
        name = dep["name"]
        current = self.routes.get(name)
        reuse = {}
        if current is not None:
            for served in (current.primary, current.canary):
                if served is not None:
                    reuse[served.version] = served
        for served in adopt:
            reuse.setdefault(served.version, served)
        started: list[ServedVersion] = []

        async def get(number: int) -> ServedVersion:
            served = reuse.get(number)
            if (served is not None and len(served.replicas) == dep["replicas"]
                    and served.visible_devices == self._visible_devices(name)
                    and served.command == self._command(
                        name, self.registry.version(name, number), dep, dep["replicas"],
                        served.staged.path if served.staged else Path("?"))):
                return served
            served = await self._serve(name, number, dep, wait)
            started.append(served)
            return served

        try:
            primary = await get(dep["version"])
            canary = await get(dep["canary_version"]) if dep.get("canary_version") else None
        except Exception:
            for served in started:
                self._stop(served)
            raise
        self.routes[name] = Route(primary, canary, dep.get("canary_weight") or 0.0)
        self.publish()  # before the deploy answers: the router serves it from the next request
        keep = {id(primary), id(canary)}
        for old in reuse.values():
            if id(old) not in keep:
                asyncio.ensure_future(self._drain_and_stop(old))

    async def remove(self, name: str) -> None:
        route = self.routes.pop(name, None)
        self.publish()
        if route:
            for served in (route.primary, route.canary):
                if served:
                    await self._drain_and_stop(served)

    # -- the routing table (what the inference router serves) ---------------------------------
    def table(self) -> dict:
        """Every deployment as the router needs it (see :mod:`aidc.models.routing`)."""
        out = {}
        for name, route in list(self.routes.items()):
            try:
                model = self.registry.model(name)
            except Exception:
                continue  # deleted a moment ago
            weight = route.canary_weight if route.canary else 0.0
            served = [{"version": s.version, "weight": w,
                       "replicas": [{"socket": str(r.socket), "ready": r.ready}
                                    for r in s.replicas if r.socket is not None]}
                      for s, w in ((route.primary, 1 - weight), (route.canary, weight)) if s]
            out[name] = {"owner": model["owner"], "visibility": model.get("visibility"),
                         "groups": list(model.get("groups") or ()),
                         "public": self.registry.is_public(name), "served": served}
        return out

    def publish(self) -> None:
        """Write the routing table if it changed (replicas' readiness, weights, visibility),
        and the running replicas for a successor (:meth:`start`)."""
        if self.table_path is None:
            return
        table = self.table()
        if table != self._published:
            routing.write(self.table_path, table)
            self._published = table
        state = self.running_state()
        if state != self._state_written:
            routing.write_json(self.state_path, state)
            self._state_written = state

    def running_state(self) -> dict:
        """What a successor needs to adopt the running replicas (see :meth:`_adoptable`)."""
        out: dict[str, list] = {}
        for name, route in list(self.routes.items()):
            for served in (route.primary, route.canary):
                if served is None:
                    continue
                staged = served.staged
                out.setdefault(name, []).append({
                    "version": served.version, "command": served.command,
                    "visible_devices": served.visible_devices,
                    "artifact": str(staged.path) if staged else "",
                    "directory": str(staged.directory) if staged and staged.directory else None,
                    "ready_seconds": served.ready_seconds,
                    "replicas": [{"socket": str(r.socket), "pid": r.pid, "created": r.created,
                                  "restarts": r.restarts, "ready_seconds": r.ready_seconds}
                                 for r in served.replicas if r.socket is not None]})
        return out

    def endpoint_metrics(self) -> EndpointMetrics:
        """The router's counts and the service's own (requests it routed itself)."""
        total = self.metrics
        for snapshot in routing.read_stats(self.data_dir) if self.data_dir else ():
            total = total.add(snapshot)
        return total

    def status(self, name: str) -> dict:
        route = self.routes.get(name)
        if route is None:
            return {"ready": False, "versions": []}

        def one(served: ServedVersion | None, weight: float) -> dict | None:
            if served is None:
                return None
            return {"version": served.version, "weight": weight,
                    "ready_seconds": _seconds(served.ready_seconds),
                    "replicas": [{"replica": i, "socket": str(r.socket) if r.socket else None,
                                  "ready": r.ready, "restarts": r.restarts,
                                  "ready_seconds": _seconds(r.ready_seconds),
                                  "pid": r.pid}
                                 for i, r in enumerate(served.replicas)]}

        weight = route.canary_weight if route.canary else 0.0
        versions = [v for v in (one(route.primary, 1 - weight), one(route.canary, weight)) if v]
        served = [s for s in (route.primary, route.canary) if s is not None]
        ready = sum(len(s.ready) for s in served)
        wanted = sum(len(s.replicas) for s in served)
        # ready: every replica asked for answers (a deploy that returns ready is complete);
        # serving: requests get answers (at least one replica of the primary version)
        return {"ready": ready == wanted, "serving": bool(route.primary.ready),
                "ready_replicas": len(route.primary.ready), "versions": versions,
                "stats": self.endpoint_metrics().summary(name)}

    async def replica_metrics(self) -> list[tuple[dict[str, str], str]]:
        """Every running replica's ``/metrics`` text, with the labels that tell replicas apart."""
        targets = []
        for route in list(self.routes.values()):
            for served in (route.primary, route.canary):
                for i, replica in enumerate(served.replicas if served else []):
                    if replica.running():
                        targets.append(({"replica": str(i)}, replica))

        async def fetch(replica: Replica) -> str:
            try:
                async with replica.session.get(f"{replica.url}/metrics",
                                            timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return await r.text() if r.status == 200 else ""
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return ""  # restarting: it is missing from this scrape only

        texts = await asyncio.gather(*(fetch(replica) for _, replica in targets))
        return [(labels, text) for (labels, _), text in zip(targets, texts) if text]

    # -- requests ---------------------------------------------------------------------
    async def forward(self, name: str, version: int | None, body: bytes,
                      headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Send one v2 infer request to a ready replica (of ``version``, else by the traffic split)."""
        route = self.routes.get(name)
        if route is None:
            raise LookupError(f"model {name!r} is not deployed")
        if version is None:
            served = route.choose()
        else:
            served = next((s for s in (route.primary, route.canary) if s and s.version == version), None)
            if served is None:
                raise LookupError(f"version {version} of model {name!r} is not deployed")
        path = f"/v2/models/{name}/versions/{served.version}/infer"
        label = str(served.version)
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.unavailable_wait
        attempt = 0
        while attempt < 3:
            replica = served.pick()
            if replica is None:  # every replica is restarting: hold the request a little
                if time.monotonic() > deadline:
                    self.metrics.record(name, label, 503, time.perf_counter() - t0)
                    raise RuntimeError(f"model {name!r} version {served.version} has no ready replica")
                await asyncio.sleep(0.05)
                continue
            attempt += 1
            replica.inflight += 1
            try:
                async with replica.session.post(f"{replica.url}{path}", data=body,
                                             headers=headers) as r:
                    data = await r.read()
                    out_headers = {k: v for k, v in r.headers.items()
                                   if k.lower() in ("content-type", "inference-header-content-length")}
                    status = r.status
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                replica.ready = False  # dead or restarting: try another replica
                continue
            finally:
                replica.inflight -= 1
            self.metrics.record(name, label, status, time.perf_counter() - t0)
            out_headers["X-Aidc-Model-Version"] = label
            return status, out_headers, data
        self.metrics.record(name, label, 503, time.perf_counter() - t0)
        raise RuntimeError(f"no replica of model {name!r} version {served.version} answered")
