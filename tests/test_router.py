"""The inference router's decisions, in process: canary weights, failover between replicas,
a table that changes under load, the token cache, what it passes to the models service.

Real parts: the router's HTTP server on a TCP port, stand-in replicas on Unix sockets
(they answer which version and replica they are), a stand-in models service that answers
every request it is passed with 299. The hub is the stand-in (its token answers are what
the tests vary); the end-to-end tests with the real hub, proxy, service and replicas are
in test_models.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from aidc.models import routing
from aidc.models.router import InferenceRouter, ModelsRouter, TokenCache
from aidc.models.rest import HTTPServer
from aidc.security.tally import CallTally


class FakeHub:
    """Token answers: ``users[token]`` or None; counts the lookups."""

    def __init__(self, users: dict[str, dict]):
        self.users = users
        self.lookups = Counter()

    async def user_for_token(self, token, use_cache=True, sync=True):
        self.lookups[token] += 1
        await asyncio.sleep(0.01)
        return self.users.get(token)

    def check_scopes(self, required, user):
        return set(required) & set(user.get("scopes", ()))


async def fake_replica(path: Path, version: int, replica: int) -> asyncio.AbstractServer:
    writers = []

    async def serve(reader, writer):
        writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                body = json.dumps({"version": version, "replica": replica}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    server = await asyncio.start_unix_server(serve, str(path))
    server.writers = writers  # a replica that dies ends its connections too
    return server


async def fake_service() -> tuple[asyncio.AbstractServer, int]:
    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length"):
                await reader.readexactly(int(line.split(b":")[1]))
        body = b'{"passed": true}'
        writer.write(b"HTTP/1.1 299 Passed\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


ALICE = {"name": "alice", "groups": ["scientist"], "admin": False,
         "scopes": ["access:services!service=models"]}
BOB = {"name": "bob", "groups": ["scientist"], "admin": False,
       "scopes": ["access:services!service=models"]}
NO_ACCESS = {"name": "carol", "groups": [], "admin": False, "scopes": ["read:users:name!user"]}


class Setup:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.table_path = tmp / "routes.json"
        self.replicas: dict[tuple[int, int], asyncio.AbstractServer] = {}
        self.hub = FakeHub({"a": ALICE, "b": BOB, "c": NO_ACCESS})

    async def start(self, unavailable_wait: float = 2.0) -> None:
        self.service, service_port = await fake_service()
        settings = ModelsRouter(unavailable_wait=unavailable_wait, token_cache_seconds=60)
        self.router = InferenceRouter(
            settings, routing.TableReader(self.table_path, interval=0.0),
            TokenCache(self.hub, settings.token_cache_seconds),
            f"http://127.0.0.1:{service_port}", "/services/models", CallTally())
        self.http = HTTPServer(self.router)
        await self.http.listen(0)
        port = self.http._servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/services/models/v2/models"
        self.session = aiohttp.ClientSession()

    def socket(self, version: int, replica: int) -> Path:
        return self.tmp / f"v{version}r{replica}.sock"

    async def replica(self, version: int, replica: int) -> None:
        self.replicas[(version, replica)] = await fake_replica(self.socket(version, replica), version, replica)

    def table(self, served: list[tuple[int, float, int]], public: bool = False) -> None:
        """``served``: (version, weight, replicas) each."""
        routing.write(self.table_path, {"m": {
            "owner": "alice", "visibility": "private", "groups": [], "public": public,
            "served": [{"version": v, "weight": w,
                        "replicas": [{"socket": str(self.socket(v, i)), "ready": True}
                                     for i in range(n)]} for v, w, n in served]}})

    async def infer(self, token: str | None = "a", path: str = "m/infer") -> tuple[int, dict]:
        headers = {"Authorization": f"token {token}"} if token else {}
        async with self.session.post(f"{self.url}/{path}", data=b'{"inputs": []}',
                                     headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def close(self) -> None:
        await self.session.close()
        self.http.stop()
        await self.router.close()
        for server in self.replicas.values():
            server.close()
        self.service.close()


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_canary_weight_splits_the_traffic_and_replicas_take_turns(setup):
    async def main():
        await setup.start()
        for v, r in ((1, 0), (1, 1), (2, 0)):
            await setup.replica(v, r)
        setup.table([(1, 0.7, 2), (2, 0.3, 1)])
        seen = Counter()
        for _ in range(1000):
            status, body = await setup.infer()
            assert status == 200, body
            seen[(body["version"], body["replica"])] += 1
        await setup.close()
        return seen
    seen = run(main())
    canary = seen[(2, 0)] / 1000
    assert abs(canary - 0.3) <= 0.05, seen
    assert abs(seen[(1, 0)] - seen[(1, 1)]) <= 2, seen  # in turn


def test_a_replica_that_stops_answering_is_passed_over_without_a_failed_request(setup):
    async def main():
        await setup.start()
        await setup.replica(1, 0)
        await setup.replica(1, 1)
        setup.table([(1, 1.0, 2)])
        for _ in range(10):
            assert (await setup.infer())[0] == 200
        dead = setup.replicas[(1, 0)]  # dies: stops listening, its connections end
        dead.close()
        for writer in dead.writers:
            writer.close()
        setup.socket(1, 0).unlink()
        answers = [await setup.infer() for _ in range(50)]
        await setup.close()
        return answers
    answers = run(main())
    assert all(status == 200 for status, _ in answers), answers
    assert {body["replica"] for _, body in answers[5:]} == {1}


def test_a_new_version_in_the_table_takes_the_traffic_at_once(setup):
    async def main():
        await setup.start()
        await setup.replica(1, 0)
        await setup.replica(2, 0)
        setup.table([(1, 1.0, 1)])
        assert (await setup.infer())[1]["version"] == 1
        setup.table([(2, 1.0, 1)])  # what the service writes before its deploy answers
        after = await setup.infer()
        # a version asked for by number that is not served: the service answers (404 there)
        pinned = await setup.infer(path="m/versions/1/infer")
        await setup.close()
        return after, pinned
    after, pinned = run(main())
    assert after == (200, {"version": 2, "replica": 0})
    assert pinned[0] == 299


def test_readiness_comes_from_the_table_even_with_the_service_gone(setup):
    async def main():
        await setup.start()
        setup.service.close()  # the models service is down (restarting)
        await setup.service.wait_closed()
        setup.table([(1, 1.0, 1)])
        async with setup.session.get(f"{setup.url}/m/ready", headers={"Authorization": "token a"}) as r:
            ready = r.status, await r.json()
        async with setup.session.get(setup.url.rsplit("/models", 1)[0] + "/health/live",
                                     headers={"Authorization": "token a"}) as r:
            live = r.status, await r.json()
        routing.write(setup.table_path, {})  # undeployed: the service would answer, and cannot
        async with setup.session.get(f"{setup.url}/m/ready", headers={"Authorization": "token a"}) as r:
            gone = r.status, await r.json(content_type=None)
        await setup.close()
        return ready, live, gone
    ready, live, gone = run(main())
    assert ready == (200, {"name": "m", "ready": True})
    assert live == (200, {"live": True})
    assert gone[0] == 503 and "models service is not answering" in gone[1]["error"], gone


def test_with_no_replica_answering_the_caller_gets_a_503_that_says_why(setup):
    async def main():
        await setup.start(unavailable_wait=0.3)
        setup.table([(1, 1.0, 1)])  # its socket: nothing listens
        status, body = await setup.infer()
        await setup.close()
        return status, body
    status, body = run(main())
    assert status == 503 and "no ready replica" in body["error"], body


def test_tokens_one_hub_lookup_each_and_refusals_go_to_the_service(setup):
    async def main():
        await setup.start()
        await setup.replica(1, 0)
        setup.table([(1, 1.0, 1)])
        first = await asyncio.gather(*(setup.infer("a") for _ in range(20)))
        other = await setup.infer("b")  # may not see alice's private model
        no_scope = await setup.infer("c")  # a token without access to the models service
        unknown = await setup.infer("zzz")  # the hub does not know it
        anonymous = await setup.infer(None)
        setup.table([(1, 1.0, 1)], public=True)
        public = await setup.infer(None)
        await setup.close()
        return first, other, no_scope, unknown, anonymous, public
    first, other, no_scope, unknown, anonymous, public = run(main())
    assert all(status == 200 for status, _ in first)
    assert setup.hub.lookups["a"] == 1  # twenty requests at once, one question to the hub
    # refused here means: the service answers, with its own wording and audit event
    for status, body in (other, no_scope, unknown, anonymous):
        assert status == 299 and body == {"passed": True}
    assert public[0] == 200


def test_token_answers_expire():
    hub = FakeHub({"a": ALICE})
    cache = TokenCache(hub, ttl=0.0)

    async def main():
        assert await cache.lookup("a") == ALICE
        assert cache.cached("a") is ...  # expired at once: asked again
        hub.users.pop("a")  # revoked
        assert await cache.lookup("a") is None
    run(main())
    assert hub.lookups["a"] == 2
