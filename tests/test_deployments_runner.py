"""The deployment runner's state machine, in seconds: no hub, no root, no model framework.

:class:`aidc.models.deployments.DeploymentRunner` runs for real (its processes, Unix
sockets, health checks, routing, draining); only what it starts is fake. The fakes, in the
way JupyterHub's ``tests/mocking.py`` keeps ``SlowSpawner``, ``NeverSpawner`` and
``BadSpawner``:

- :data:`FAKE_REPLICA`: a stand-in for ``python -m aidc.models.server``: a small
  stdlib-only HTTP server, started by the runner as the replica command with the same
  ``--unix-socket PATH`` argument. It answers ``GET /v2/health/ready`` and ``POST
  /v2/models/<name>/versions/<v>/infer`` (404 for another model or version), counts every
  request it gets, and behaves as the real server does on SIGTERM (not ready, stops
  listening, finishes the requests in progress, exits; it leaves its socket file behind,
  as tornado does). Control files tell it to fail its health check, answer slowly, take a
  while to load, or exit at start (:class:`ReplicaControl`); a test kills it with SIGKILL.
- :class:`ReplicaControl`: what a test tells the fake replicas of one version (per version
  or per replica process) and what they counted.
- :class:`FakeRegistry`: the three registry reads the runner makes (model owner, version
  record, deployments to restore); the owner has no Unix account, so replicas run as the
  test's own user from the artifact in place, and their sockets go to ``run_root``.
- :class:`FakeReplicaRunner`: the real runner with :data:`FAKE_REPLICA` as its replica
  command (its ``_command``), remembering every process it started so a test can check
  that none is left.
- :class:`Load`: steady traffic from a few concurrent callers while a test promotes or
  rolls back; it records every answer and every failure a caller would have seen.

The end-to-end tests through real model servers are in ``tests/test_models.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aidc.errors import PlatformError
from aidc.models.deployments import DeploymentRunner

FAKE_REPLICA = r'''
"""Fake aidc.models.server replica (tests/test_deployments_runner.py)."""
import asyncio, json, os, signal, sys, time

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
NAME, VERSION = args["--name"], args["--version"]
CONTROL, SOCKET = args["--control"], args["--unix-socket"]
PID = os.getpid()
STARTED = time.monotonic()


def flag(what):
    """Control file <what>.<pid> (this process) or <what> (its version): its text, or None."""
    for name in (f"{what}.{PID}", what):
        try:
            with open(os.path.join(CONTROL, name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            pass
    return None


with open(os.path.join(CONTROL, f"started.{PID}"), "w"):
    pass
if flag("crash") is not None:
    sys.exit(3)  # as a server that cannot load its model: gone before it listens
LOAD_SECONDS = float(flag("startup") or 0)  # listens at once, ready after this (real: loading)
requests_log = os.open(os.path.join(CONTROL, f"requests.{PID}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
busy = 0
stopping = False


def ready():
    return (not stopping and flag("unready") is None
            and time.monotonic() - STARTED >= LOAD_SECONDS)


async def answer(method, path):
    if method == "GET" and path == "/v2/health/ready":
        return (200 if ready() else 503), b"{}"
    if method == "POST" and path == f"/v2/models/{NAME}/versions/{VERSION}/infer":
        os.write(requests_log, b"infer\n")
        if not stopping and not ready():  # draining: requests still get answers, as in the real one
            return 503, b'{"error": "not ready"}'
        await asyncio.sleep(float(flag("slow") or 0))
        return 200, json.dumps({"model_name": NAME, "model_version": VERSION, "pid": PID,
                                "outputs": []}).encode()
    return 404, b'{"error": "no such route"}'


async def serve(reader, writer):
    global busy
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            method, path, _ = line.decode("latin-1").split(" ", 2)
            headers = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, v = h.decode("latin-1").split(":", 1)
                headers[k.strip().lower()] = v.strip()
            await reader.readexactly(int(headers.get("content-length") or 0))
            busy += 1
            try:
                status, payload = await answer(method, path)
                close = stopping
                head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n")
                if close:
                    head += "Connection: close\r\n"
                writer.write(head.encode() + b"\r\n" + payload)
                await writer.drain()
            finally:
                busy -= 1
            if close:
                break
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    global stopping
    # the real server (tornado) leaves its socket file behind: so does this one
    keep = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
    server = await asyncio.start_unix_server(serve, path=SOCKET, **keep)
    os.chmod(SOCKET, 0o600)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    stopping = True
    server.close()  # no new connections; the open ones finish their requests
    deadline = time.monotonic() + 30
    while busy and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    os._exit(0)


asyncio.run(main())
'''


class ReplicaControl:
    """What a test tells the fake replicas of one version, and what they counted.

    A flag set without ``pid`` applies to every replica process of the version (restarted
    ones too); with ``pid``, to that process only. Flags: ``unready`` (health check
    answers 503, infer too), ``slow`` (seconds each infer takes), ``startup`` (seconds a
    newly started process stays unready: loading its model), ``crash`` (a new process
    exits at once).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def set(self, what: str, value: object = "", pid: int | None = None) -> None:
        (self.folder / (what if pid is None else f"{what}.{pid}")).write_text(str(value))

    def clear(self, what: str, pid: int | None = None) -> None:
        (self.folder / (what if pid is None else f"{what}.{pid}")).unlink(missing_ok=True)

    def requests(self, pid: int | None = None) -> int:
        """Infer requests that replica process ``pid`` got (None: every process of the version)."""
        files = [self.folder / f"requests.{pid}"] if pid else self.folder.glob("requests.*")
        return sum(f.read_bytes().count(b"\n") for f in files if f.exists())

    def started(self) -> int:
        """Processes of this version started so far (restarts included)."""
        return len(list(self.folder.glob("started.*")))


class FakeRegistry:
    """The registry reads the runner makes: a model's owner, a version record, deployments."""

    #: no Unix account has this name: replicas run as the test's user, the artifact in place
    owner = "no-such-owner-deployments-runner"

    def __init__(self, artifacts: Path):
        self.artifacts = artifacts
        self.deployments: list[dict] = []

    def model(self, name: str) -> dict:
        return {"name": name, "owner": self.owner}

    def version(self, name: str, number: int) -> dict:
        return {"name": name, "version": number, "format": "fake", "filename": f"{name}-v{number}",
                "signature": {"inputs": [], "outputs": []}, "artifact_url": str(self.artifacts)}

    def find_deployments(self) -> list[dict]:
        return list(self.deployments)


class FakeReplicaRunner(DeploymentRunner):
    """The real runner, starting :data:`FAKE_REPLICA` processes instead of model servers."""

    def __init__(self, root: Path, **kwargs):
        super().__init__(FakeRegistry(root / "artifacts"), run_root=root / "run", **kwargs)
        self.control_root = root / "control"
        #: every replica process started, restarts included
        self.spawned: list[subprocess.Popen] = []

    def control(self, name: str, version: int) -> ReplicaControl:
        return ReplicaControl(self.control_root / name / f"v{version}")

    def _command(self, name, version, dep, replicas, artifact):
        return [sys.executable, "-c", FAKE_REPLICA, "--name", name,
                "--version", str(version["version"]),
                "--control", str(self.control(name, version["version"]).folder)]

    def _spawn(self, served, replica):
        super()._spawn(served, replica)
        self.spawned.append(replica.process)


class Load:
    """Requests from ``callers`` concurrent callers, without pause, until the block ends.

    ``answers``: (sent, answered, status, version that answered) per request, times from
    ``time.monotonic``; ``failures``: what a caller got instead of an answer (the service
    turns these into 503s).
    """

    def __init__(self, runner: DeploymentRunner, name: str = "m", callers: int = 4):
        self.runner, self.name, self.callers = runner, name, callers
        self.answers: list[tuple[float, float, int, int]] = []
        self.failures: list[BaseException] = []
        self._stop = False

    async def _caller(self) -> None:
        while not self._stop:
            sent = time.monotonic()
            try:
                status, headers, _ = await self.runner.forward(self.name, None, b"{}", JSON)
            except Exception as e:  # noqa: BLE001 - recorded: the test asserts there are none
                self.failures.append(e)
            else:
                self.answers.append((sent, time.monotonic(), status,
                                     int(headers["X-Aidc-Model-Version"])))
            await asyncio.sleep(0.002)

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._caller()) for _ in range(self.callers)]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    def bad(self) -> list:
        return self.failures + [a for a in self.answers if a[2] != 200]


JSON = {"Content-Type": "application/json"}


def deployment(name: str = "m", version: int = 1, canary: int | None = None, weight: float = 0.0,
               replicas: int = 1) -> dict:
    """A deployment record as the models service hands it to the runner."""
    return {"name": name, "version": version, "canary_version": canary, "canary_weight": weight,
            "replicas": replicas, "gpus": 0, "max_batch_size": 0, "max_queue_delay_ms": 0.0}


async def infer(runner: DeploymentRunner, name: str = "m", version: int | None = None) -> tuple[int, int, int]:
    """One routed request: (status, version that answered, pid of the replica that answered)."""
    status, headers, data = await runner.forward(name, version, b"{}", JSON)
    return status, int(headers["X-Aidc-Model-Version"]), json.loads(data).get("pid")


async def eventually(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def replicas(runner: DeploymentRunner, name: str = "m", version: int = 1) -> list[dict]:
    """The replicas of ``version`` as the deployment API shows them (pid, ready, restarts)."""
    for v in runner.status(name)["versions"]:
        if v["version"] == version:
            return v["replicas"]
    return []


def exited(procs) -> bool:
    return all(p.poll() is not None for p in procs)


@pytest.fixture
async def runner():
    # a short folder of its own: Unix socket paths may not exceed 107 bytes
    root = Path(tempfile.mkdtemp(prefix="aidc-dr-"))
    r = FakeReplicaRunner(root, health_interval=0.1, ready_timeout=10.0, drain_timeout=10.0,
                          unavailable_wait=10.0)
    await r.start()
    yield r
    await r.close()
    deadline = time.monotonic() + 5
    while not exited(r.spawned) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for p in r.spawned:  # a failed test must not leave processes behind for the next ones
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(root, ignore_errors=True)


# -- traffic split --------------------------------------------------------------------
async def test_canary_gets_its_weight_of_requests(runner):
    await runner.apply(deployment(version=1, canary=2, weight=0.1))
    n = 1000
    answers = []
    for _ in range(n // 50):
        answers += await asyncio.gather(*(infer(runner) for _ in range(50)))
    assert all(status == 200 for status, _, _ in answers)
    canary = sum(1 for _, version, _ in answers if version == 2)
    # binomial(1000, 0.1): mean 100, sd 9.5; five sd either way
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(canary - 100) < 5 * sd, canary
    # the replicas themselves got exactly the requests the caller saw them answer
    assert runner.control("m", 2).requests() == canary
    assert runner.control("m", 1).requests() == n - canary
    assert [v["weight"] for v in runner.status("m")["versions"]] == [pytest.approx(0.9), pytest.approx(0.1)]


async def test_a_version_asked_for_by_number_gets_every_request(runner):
    await runner.apply(deployment(version=1, canary=2, weight=0.1))
    answers = await asyncio.gather(*(infer(runner, version=2) for _ in range(40)))
    assert {(status, version) for status, version, _ in answers} == {(200, 2)}
    with pytest.raises(LookupError, match="version 3"):
        await infer(runner, version=3)


async def test_canary_failing_its_health_check_gets_no_traffic(runner):
    await runner.apply(deployment(version=1, canary=2, weight=0.5))
    canary = runner.control("m", 2)
    canary.set("unready")
    await eventually(lambda: not replicas(runner, version=2)[0]["ready"], what="canary out")
    before = canary.requests()
    answers = await asyncio.gather(*(infer(runner) for _ in range(100)))
    assert {(status, version) for status, version, _ in answers} == {(200, 1)}
    assert canary.requests() == before

    canary.clear("unready")
    await eventually(lambda: replicas(runner, version=2)[0]["ready"], what="canary back")
    answers = await asyncio.gather(*(infer(runner) for _ in range(100)))
    assert 20 < sum(1 for _, version, _ in answers if version == 2) < 80


# -- promotion and rollback ---------------------------------------------------------------
async def test_promotion_makes_the_canary_stable_and_drains_the_old_version(runner):
    await runner.apply(deployment(version=1, canary=2, weight=0.5, replicas=2))
    old = [r.process for r in runner.routes["m"].primary.replicas]
    old_sockets = [r.socket for r in runner.routes["m"].primary.replicas]
    canary_pids = {r["pid"] for r in replicas(runner, version=2)}
    runner.control("m", 1).set("slow", 0.5)  # requests in flight on v1 while it is replaced

    async with Load(runner) as load:
        await eventually(lambda: runner.routes["m"].primary.inflight > 0, what="v1 busy")
        await runner.apply(deployment(version=2, replicas=2))
        promoted = time.monotonic()
        await eventually(lambda: exited(old), what="old replicas stopped")
        await asyncio.sleep(0.2)

    assert load.bad() == []
    # the requests v1 was serving when it was replaced got their answers
    assert any(version == 1 and answered > promoted for _, answered, _, version in load.answers)
    # everything sent after the switch went to the new stable version
    after = [a for a in load.answers if a[0] > promoted]
    assert after and {version for _, _, _, version in after} == {2}
    # the canary's replicas became the stable ones: no reload, no restart
    status = runner.status("m")
    assert [(v["version"], v["weight"]) for v in status["versions"]] == [(2, 1.0)]
    assert {r["pid"] for r in status["versions"][0]["replicas"]} == canary_pids
    assert status["ready"]
    assert not any(s.exists() for s in old_sockets)


async def test_rollback_removes_the_canary_and_keeps_the_stable_version(runner):
    await runner.apply(deployment(version=1, canary=2, weight=0.5))
    canary = runner.routes["m"].canary.replicas[0]
    canary_process, canary_socket = canary.process, canary.socket
    stable_pids = {r["pid"] for r in replicas(runner, version=1)}
    runner.control("m", 2).set("slow", 0.3)

    async with Load(runner) as load:
        await eventually(lambda: runner.routes["m"].canary.inflight > 0, what="canary busy")
        await runner.apply(deployment(version=1))
        rolled_back = time.monotonic()
        await eventually(lambda: canary_process.poll() is not None, what="canary stopped")
        await asyncio.sleep(0.2)

    assert load.bad() == []
    assert any(version == 2 and answered > rolled_back for _, answered, _, version in load.answers)
    after = [a for a in load.answers if a[0] > rolled_back]
    assert after and {version for _, _, _, version in after} == {1}
    status = runner.status("m")
    assert [(v["version"], v["weight"]) for v in status["versions"]] == [(1, 1.0)]
    assert {r["pid"] for r in status["versions"][0]["replicas"]} == stable_pids
    assert not canary_socket.exists()


async def test_rollback_to_the_previous_version_switches_only_once_it_is_ready(runner):
    await runner.apply(deployment(version=2))
    current = runner.routes["m"].primary.replicas[0].process
    runner.control("m", 1).set("startup", 0.8)  # the version rolled back to takes a while to load

    async with Load(runner) as load:
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await runner.apply(deployment(version=1))
        switched = time.monotonic()
        await eventually(lambda: current.poll() is not None, what="v2 stopped")
        await asyncio.sleep(0.2)

    assert switched - started >= 0.7  # apply waited for v1 to be ready
    assert load.bad() == []
    # while v1 loaded, v2 kept answering: nobody waited for the switch
    assert any(version == 2 and started + 0.3 < sent < switched - 0.1
               for sent, _, _, version in load.answers)
    assert {version for sent, _, _, version in load.answers if sent > switched} == {1}
    assert [v["version"] for v in runner.status("m")["versions"]] == [1]


# -- replicas that die or fail their health check ------------------------------------------
async def test_killed_replica_is_restarted_and_requests_wait_for_it(runner):
    await runner.apply(deployment(version=1))
    control = runner.control("m", 1)
    control.set("startup", 0.5)  # applies to processes started from now on
    [before] = replicas(runner)
    assert before["restarts"] == 0
    # the status reports the cold start: the version's (from serving) and the replica's
    assert 0 < before["ready_seconds"] <= runner.status("m")["versions"][0]["ready_seconds"]

    os.kill(before["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    answers = await asyncio.gather(*(infer(runner) for _ in range(10)))
    waited = time.monotonic() - t0

    [after] = replicas(runner)
    assert after["restarts"] == 1 and after["ready"]
    assert after["ready_seconds"] >= 0.5  # the new process's cold start: its 0.5 s start-up
    assert after["pid"] != before["pid"]
    assert after["socket"] == before["socket"]
    # none failed: they waited for the new process to load and answered from it
    assert {(status, pid) for status, _, pid in answers} == {(200, after["pid"])}
    assert waited >= 0.4
    assert control.started() == 2


async def test_killed_replica_leaves_traffic_to_the_others_and_comes_back(runner):
    await runner.apply(deployment(version=1, replicas=2))
    victim, survivor = replicas(runner)
    os.kill(victim["pid"], signal.SIGKILL)
    answers = await asyncio.gather(*(infer(runner) for _ in range(40)))
    assert {status for status, _, _ in answers} == {200}

    await eventually(lambda: replicas(runner)[0]["ready"] and replicas(runner)[0]["pid"] != victim["pid"],
                     what="replica restarted")
    restarted = replicas(runner)[0]
    assert restarted["restarts"] == 1 and replicas(runner)[1]["restarts"] == 0
    answers = await asyncio.gather(*(infer(runner) for _ in range(40)))
    assert {pid for _, _, pid in answers} == {restarted["pid"], survivor["pid"]}


async def test_replica_failing_its_health_check_is_taken_out_of_rotation(runner):
    await runner.apply(deployment(version=1, replicas=2))
    control = runner.control("m", 1)
    sick, healthy = replicas(runner)
    control.set("unready", pid=sick["pid"])
    await eventually(lambda: not replicas(runner)[0]["ready"], what="replica out")

    before = control.requests(sick["pid"])
    answers = await asyncio.gather(*(infer(runner) for _ in range(40)))
    assert {(status, pid) for status, _, pid in answers} == {(200, healthy["pid"])}
    assert control.requests(sick["pid"]) == before
    status = runner.status("m")  # serving, but not every replica asked for is ready
    assert status["serving"] and not status["ready"] and status["ready_replicas"] == 1

    control.clear("unready", pid=sick["pid"])
    await eventually(lambda: replicas(runner)[0]["ready"], what="replica back")
    answers = await asyncio.gather(*(infer(runner) for _ in range(40)))
    assert {pid for _, _, pid in answers} == {sick["pid"], healthy["pid"]}


async def test_requests_wait_while_the_only_replica_is_unhealthy(runner):
    await runner.apply(deployment(version=1))
    control = runner.control("m", 1)
    control.set("unready")
    await eventually(lambda: not runner.status("m")["ready"], what="replica out")

    pending = asyncio.gather(*(infer(runner) for _ in range(5)))
    await asyncio.sleep(0.5)
    assert not pending.done()  # held, not failed
    control.clear("unready")
    answers = await asyncio.wait_for(pending, 5)
    assert {status for status, _, _ in answers} == {200}


async def test_requests_get_a_reason_when_no_replica_recovers_in_time(runner):
    runner.unavailable_wait = 0.5
    await runner.apply(deployment(version=1))
    runner.control("m", 1).set("unready")
    await eventually(lambda: not runner.status("m")["ready"], what="replica out")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="has no ready replica"):
        await infer(runner)
    assert 0.4 < time.monotonic() - t0 < 3
    assert runner.status("m")["stats"]["1"]["errors"] == 1


# -- versions that never become ready --------------------------------------------------------
async def test_version_that_never_becomes_ready_fails_with_a_reason(runner):
    runner.ready_timeout = 1.0
    runner.control("m", 1).set("unready")
    t0 = time.monotonic()
    with pytest.raises(PlatformError, match=r"model m version 1 did not become ready .*longer than 1 s"):
        await runner.apply(deployment(version=1, replicas=2))
    assert time.monotonic() - t0 < 5
    assert runner.status("m") == {"ready": False, "versions": []}
    assert len(runner.spawned) == 2
    await eventually(lambda: exited(runner.spawned), timeout=5, what="replicas stopped")
    assert list((runner.run_root).glob("*.sock")) == []
    with pytest.raises(LookupError):
        await infer(runner)


async def test_version_whose_replicas_exit_at_start_fails_without_waiting_out_the_timeout(runner):
    runner.ready_timeout = 30.0  # what a version that crashes must not wait out
    control = runner.control("m", 1)
    control.set("crash")
    t0 = time.monotonic()
    with pytest.raises(PlatformError, match="replicas exited while loading, 4 times each"):
        await runner.apply(deployment(version=1))
    assert control.started() == 4  # started, then restarted three times
    assert time.monotonic() - t0 < runner.ready_timeout / 2
    assert runner.status("m") == {"ready": False, "versions": []}


async def test_new_version_that_never_becomes_ready_leaves_the_old_one_serving(runner):
    runner.ready_timeout = 1.0
    await runner.apply(deployment(version=1))
    [serving] = replicas(runner)
    runner.control("m", 2).set("unready")

    async with Load(runner) as load:
        with pytest.raises(PlatformError, match="version 2 did not become ready"):
            await runner.apply(deployment(version=2))
        await asyncio.sleep(0.1)

    assert load.bad() == [] and {version for _, _, _, version in load.answers} == {1}
    assert [v["version"] for v in runner.status("m")["versions"]] == [1]
    assert replicas(runner)[0]["pid"] == serving["pid"]
    failed = [p for p in runner.spawned if p.pid != serving["pid"]]
    await eventually(lambda: exited(failed), timeout=5, what="v2 replicas stopped")


# -- stopping ----------------------------------------------------------------------------
async def test_undeploy_stops_only_that_deployment(runner):
    await runner.apply(deployment("a", version=1, replicas=2))
    await runner.apply(deployment("b", version=1))
    a = [r.process for r in runner.routes["a"].primary.replicas]
    a_sockets = [r.socket for r in runner.routes["a"].primary.replicas]
    await runner.remove("a")
    await eventually(lambda: exited(a), timeout=5, what="a's replicas stopped")
    assert not any(s.exists() for s in a_sockets)
    with pytest.raises(LookupError, match="not deployed"):
        await infer(runner, "a")
    assert (await infer(runner, "b"))[0] == 200


async def test_close_stops_every_replica_and_removes_the_sockets(runner):
    await runner.apply(deployment("a", version=1, canary=2, weight=0.3, replicas=2))
    await runner.apply(deployment("b", version=1))
    os.kill(replicas(runner, "b")[0]["pid"], signal.SIGKILL)  # one restarted on the way
    await eventually(lambda: replicas(runner, "b")[0]["restarts"] == 1 and replicas(runner, "b")[0]["ready"],
                     what="b restarted")
    # a: two replicas of each version; b: one, started twice on the same socket
    assert len(list(runner.run_root.glob("*.sock"))) == 5 and len(runner.spawned) == 6

    t0 = time.monotonic()
    await runner.close()
    await eventually(lambda: exited(runner.spawned), timeout=5, what="every replica stopped")
    assert time.monotonic() - t0 < 3
    assert list(runner.run_root.glob("*.sock")) == []
