"""The inference router: the direct path of ``/services/models/v2/.../infer`` to the replicas.

The proxy routes ``/services/models/v2/`` here (a route of the ``models-router`` hub
service, :func:`managed_service`), not to the models service, so that an inference request
crosses one small process that does nothing else. For each request the router:

1. reads it with the replicas' own lean HTTP/1.1 layer (:mod:`aidc.models.rest`: a body
   over the limit is a 413 from its ``Content-Length``, before it is read);
2. checks the caller's hub token itself, with the hub's token API (JupyterHub's
   ``HubAuth``, the router's own service token, no new secret): the answer is kept for
   ``ModelsRouter.token_cache_seconds`` (the platform's auth cache time, 5 s by default),
   so a revoked token stops working within that time, and concurrent lookups of one
   token are one request to the hub;
3. applies the models service's rules from the routing table (:mod:`aidc.models.routing`,
   which the service writes): the token must grant access to the models service, and the
   caller must be allowed to see the model (:mod:`aidc.services.visibility`); a model an
   admin opened to public read needs no token;
4. picks the served version by canary weight, then a ready replica in turn, and forwards
   the body over pooled keep-alive connections on the replica's Unix socket
   (:mod:`aidc.models.replica_client`); a replica that does not answer is set aside for
   a second and the request goes to another; with none ready it waits up to
   ``unavailable_wait`` (a replica restarting), then answers 503;
5. counts the request (per-endpoint metrics, which the models service federates; the
   per-caller tally, one audit event a period).

Everything else under ``/services/models/v2`` (health, metadata, readiness, a version by
alias, a caller the rules refuse, a token the hub does not know, a browser with a cookie)
is passed to the models service unchanged, so every refusal keeps its one wording and its
audit event there. A restart of the models service does not stop the router: it keeps the
last routing table; a restart of the router does not stop the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from urllib.parse import quote, unquote, urlparse

from traitlets import Enum, Float, Integer, default
from traitlets.config import LoggingConfigurable

from .. import roles
from ..process import die_with_parent
from ..security import internal_tls
from ..security.tally import CallTally
from ..services import visibility
from ..services.base import ServiceApp, auth_cache_seconds, configure_logging, service_prefix
from ..services.declare import ManagedService, python_command
from . import routing, v2
from .dataplane import Reply
from .endpoint_metrics import EndpointMetrics
from .replica_client import ReplicaGone, ReplicaPool
from .rest import HTTPServer

log = logging.getLogger("aidc.models.router")

#: the largest inference body (as the models service's own limit)
MAX_INFER_BODY = 16 * 1024 * 1024
#: the hub scopes that let a token use the models service (either one)
ACCESS_SCOPES = {"access:services!service=models", "access:services"}
#: request headers a replica needs
_FORWARDED = ("content-type", v2.HEADER_LENGTH.lower(), "content-encoding")
#: headers not passed on to or from the models service (the router's own connection's)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
        "upgrade", "proxy-connection"}
#: how long a replica that did not answer is passed over
_SET_ASIDE = 1.0
#: where a native HTTP/2 front (nginx, :mod:`aidc.models.grpc_front`) sends gRPC calls, as
#: HTTP/1.1 (``POST /inference.GRPCInferenceService/ModelInfer``, the framed message)
GRPC_PATH = "/inference.GRPCInferenceService/"


class ServiceUnavailable(Exception):
    """The models service did not answer a request the router passed on (a 503)."""


class ModelsRouter(LoggingConfigurable):
    """Settings of the inference router (``c.ModelsRouter.*`` in a drop-in)."""

    token_cache_seconds = Float(
        help="""Seconds the hub's answer about a token is kept: a revoked token keeps
        working at most this long. Default: the platform's auth cache time.""").tag(config=True)

    @default("token_cache_seconds")
    def _default_cache(self) -> float:
        return float(auth_cache_seconds())

    unavailable_wait = Float(
        15.0, help="Seconds a request waits for a ready replica (while one restarts) before a 503.",
    ).tag(config=True)
    stats_interval = Float(
        1.0, help="Seconds between writes of the router's request counts for the models service.",
    ).tag(config=True)
    max_body_bytes = Integer(MAX_INFER_BODY, help="The largest inference request body.").tag(config=True)
    grpc_port = Integer(help="""The v2 gRPC inference port (0: none). Default: ``aidc up
        --grpc-port`` (the public port + 2).""").tag(config=True)

    @default("grpc_port")
    def _default_grpc_port(self) -> int:
        return int(os.environ.get("AIDC_GRPC_PORT") or 0)

    workers = Integer(2, help="""Router processes sharing the port (``SO_REUSEPORT``): while one
        restarts, the others serve; more of them serve more requests at once.""").tag(config=True)
    grpc_server = Enum(["auto", "nginx", "python"], "auto", help="""What serves the v2 gRPC port:
        ``nginx``, a native HTTP/2 front handing each call to the router processes
        (:mod:`aidc.models.grpc_front`: ~0.05 CPU-ms a call against ~0.2 for Python's gRPC
        server); ``python``, grpcio's asyncio server in every router process; ``auto``:
        nginx when it is installed (under internal TLS it presents the router's proxy-client
        certificate to the router's port).""").tag(config=True)


class TokenCache:
    """Hub answers about tokens, kept ``ttl`` seconds; one lookup at a time per token."""

    def __init__(self, hub_auth, ttl: float):
        self.hub_auth = hub_auth
        self.ttl = ttl
        self.known: dict[str, tuple[float, dict | None]] = {}
        self._pending: dict[str, asyncio.Future] = {}

    def cached(self, token: str):
        """The user model (None: the hub refused the token), or ``...`` when not known now."""
        hit = self.known.get(token)
        if hit is None or hit[0] < time.monotonic():
            return ...
        return hit[1]

    async def lookup(self, token: str) -> dict | None:
        pending = self._pending.get(token)
        if pending is not None:
            return await asyncio.shield(pending)
        future = self._pending[token] = asyncio.get_running_loop().create_future()
        try:
            try:
                user = await self.hub_auth.user_for_token(token, use_cache=False, sync=False)
            except Exception as e:  # the hub is restarting: refuse now, ask again next time
                log.warning("aidc router: the hub did not answer about a token: %s", e)
                future.set_result(None)
                return None
            if len(self.known) > 10000:  # a flood of distinct tokens: start over
                self.known.clear()
            self.known[token] = (time.monotonic() + self.ttl, user)
            future.set_result(user)
            return user
        finally:
            del self._pending[token]


def grpc_message(text: str) -> str:
    """``text`` as gRPC's ``grpc-message`` carries it: percent-encoded UTF-8 outside
    printable ASCII (and ``%`` itself)."""
    if text.isascii() and text.isprintable() and "%" not in text:
        return text
    return "".join(c if " " <= c <= "~" and c != "%" else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def grpc_reply(status: int, message: str, answer: bytes = b"") -> Reply:
    """A gRPC call's answer for the native front: the framed reply (or nothing), its status
    in ``X-Grpc-Status`` and ``X-Grpc-Message``, which the front sends as trailers."""
    return Reply(200, answer, "application/grpc",
                 {"X-Grpc-Status": str(status), "X-Grpc-Message": grpc_message(message)})


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: token X`` or ``Bearer X`` header."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None


class _Plane:
    """What the HTTP layer (:mod:`aidc.models.rest`) counts on its connections."""

    def __init__(self, max_body_size: int):
        self.max_body_size = max_body_size
        self.inflight = 0
        self.reading = 0
        self.draining = False

    def record(self, endpoint: str, code: int, seconds: float) -> None:
        pass  # the router counts per model and version itself (InferenceRouter.metrics)

    def request_done(self) -> None:
        self.inflight -= 1


class InferenceRouter:
    """The router's routes (``handle`` is what :class:`aidc.models.rest.HTTPServer` calls)."""

    def __init__(self, settings: ModelsRouter, table: routing.TableReader, tokens: TokenCache,
                 service_url: str, prefix: str, tally: CallTally, client_ssl=None):
        self.settings = settings
        self.table = table
        self.tokens = tokens
        self.service_url = service_url.rstrip("/")
        #: the models service's URL prefix (``/services/models``), under which v2 lives
        self.prefix = prefix.rstrip("/")
        self.plane = _Plane(settings.max_body_bytes)
        self.metrics = EndpointMetrics()
        self.tally = tally
        self.client_ssl = client_ssl
        self.pools: dict[str, ReplicaPool] = {}
        self._turns: dict[tuple[str, int], int] = {}
        self._session = None
        self._servicer = None  # the gRPC servicer, for calls from the native front
        self._v2 = f"{self.prefix}/v2"
        self._infer_head = f"{self._v2}/models/"
        self._health_paths = {f"{self._v2}/health/live": "live", f"{self._v2}/health/ready": "ready"}

    # -- routing ---------------------------------------------------------------------------
    def handle(self, req) -> None:
        path = req.path
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        if req.method == "POST" and path.startswith(GRPC_PATH):
            return self._spawn(self._grpc(req, path[len(GRPC_PATH):]))
        action = None
        if req.method == "POST" and path.startswith(self._infer_head) and path.endswith("/infer"):
            action, tail = self._serve, "/infer"
        elif req.method == "GET" and path.startswith(self._infer_head) and path.endswith("/ready"):
            # readiness from the table: it keeps answering while the models service restarts
            action, tail = self._ready, "/ready"
        if action is not None:
            parts = path[len(self._infer_head):-len(tail)].split("/")
            version = None
            if len(parts) == 3 and parts[1] == "versions" and parts[2].isdigit():
                version = int(parts[2])
            if len(parts) == 1 or version is not None:
                name = unquote(parts[0])
                entry = self.table.get(name) or self.table.get(name, fresh=True)
                if entry is not None and (version is None or any(
                        s.version == version for s in entry.served)):
                    return self._authorize(req, entry, version, action)
        if req.method == "GET" and path in self._health_paths:
            return self._spawn(self._health(req, self._health_paths[path]))
        if not (path == self._v2 or path.startswith(self._v2 + "/")):
            # the router's own prefix (its hub service's route): nothing to see there
            return req.error(404, f"not found: {path}; the inference router serves {self._v2}/")
        self._spawn(self._pass_on(req))

    def _authorize(self, req, entry: routing.ModelEntry, version: int | None, action) -> None:
        """Run ``action(req, entry, version, who)`` if the caller may call the model; else
        the models service answers (its refusal, in its words, audited there)."""
        token = bearer(req.headers.get("authorization"))
        if token is None:
            if entry.public:
                return self._spawn(action(req, entry, version, "anonymous"))
            return self._spawn(self._pass_on(req))
        user = self.tokens.cached(token)
        if user is ...:
            return self._spawn(self._authorize_later(req, entry, version, token, action))
        self._decide(req, entry, version, user, action)

    async def _authorize_later(self, req, entry, version, token, action) -> None:
        self._decide(req, entry, version, await self.tokens.lookup(token), action)

    def _decide(self, req, entry: routing.ModelEntry, version: int | None, user: dict | None,
                action) -> None:
        if self.may_use(user) and visibility.Caller.of(user).can_see(entry.as_resource()):
            return self._spawn(action(req, entry, version, user["name"]))
        if entry.public:
            return self._spawn(action(req, entry, version, "anonymous"))
        self._spawn(self._pass_on(req))

    async def _health(self, req, which: str) -> None:
        """v2 server liveness and readiness, as the service answers them, for a caller with
        access to the models service (or anyone once a public model is deployed): they keep
        answering while the service restarts. Anyone else: the service's own answer."""
        token = bearer(req.headers.get("authorization"))
        public = any(m.public for m in self.table.models.values())
        if (token is None and public) or (token is not None and self.may_use(await self.caller(token))):
            return req.reply(Reply(200, v2.dumps({which: True})))
        await self._pass_on(req)

    async def _ready(self, req, entry: routing.ModelEntry, version: int | None, who: str) -> None:
        """v2 model readiness as the service answers it: 200 when a replica (of ``version``,
        else of the primary version) is ready, else 400; ``{"name", "ready"}``."""
        def ready_in(number: int) -> bool:
            return any(ok for s in entry.served if s.version == number for _, ok in s.replicas)
        # as the service says it: the primary serves, and the version asked for has a replica
        ready = ready_in(entry.served[0].version) and (version is None or ready_in(version))
        req.reply(Reply(200 if ready else 400, v2.dumps({"name": entry.name, "ready": ready})))

    def may_use(self, user: dict | None) -> bool:
        """The hub's user model grants access to the models service."""
        return user is not None and bool(self.tokens.hub_auth.check_scopes(ACCESS_SCOPES, user))

    def may_call(self, user: dict | None, entry: routing.ModelEntry) -> bool:
        """``user`` may call the deployed model (a public one: anyone may)."""
        return entry.public or (self.may_use(user)
                                and visibility.Caller.of(user).can_see(entry.as_resource()))

    async def caller(self, token: str | None) -> dict | None:
        """The hub's user model for ``token`` (cached), None for none or a refused one."""
        if token is None:
            return None
        user = self.tokens.cached(token)
        return await self.tokens.lookup(token) if user is ... else user

    @staticmethod
    def _spawn(coro) -> None:
        asyncio.ensure_future(coro)

    def error_reply(self, req, code: int, message: str) -> Reply:
        """An error of the HTTP layer (a body over the limit, a malformed request): a v2
        error, or for a gRPC call from the native front its gRPC status (413:
        RESOURCE_EXHAUSTED)."""
        if req.path.startswith(GRPC_PATH):
            from . import grpc_api

            return grpc_reply(grpc_api.status_of(code), message)
        return Reply(code, v2.error_body(message))

    async def _grpc(self, req, method: str) -> None:
        """A v2 gRPC call that the native front passed on: the same servicer as the router's
        own gRPC server (:mod:`aidc.models.grpc_api`)."""
        from . import grpc_api

        if self._servicer is None:
            self._servicer = grpc_api.InferenceServicer(self)
        status, message, answer = await grpc_api.answer_framed(
            self._servicer, method, req.data, req.headers, req.headers.get("x-real-ip") or "local")
        req.reply(grpc_reply(status, message, answer))

    # -- the direct path ---------------------------------------------------------------------
    def _pool(self, socket: str) -> ReplicaPool:
        pool = self.pools.get(socket)
        if pool is None:
            pool = self.pools[socket] = ReplicaPool(socket)
        return pool

    def _choose(self, entry: routing.ModelEntry, version: int | None):
        """The served version (by number, else by weight among those with a ready replica)."""
        if version is not None:
            return next((s for s in entry.served if s.version == version), None)
        primary = entry.served[0]
        for canary in entry.served[1:]:
            if canary.weight > 0 and any(ok for _, ok in canary.replicas) and random.random() < canary.weight:
                return canary
        return primary

    def _pick(self, name: str, served: routing.ServedEntry) -> ReplicaPool | None:
        """A ready replica of ``served``, each in turn (one turn counter per version)."""
        now = time.monotonic()
        ready = [self._pool(s) for s, ok in served.replicas if ok]
        ready = [p for p in ready if p.down_until <= now]
        if not ready:
            return None
        key = (name, served.version)
        turn = self._turns[key] = self._turns.get(key, -1) + 1
        return ready[turn % len(ready)]

    async def _serve(self, req, entry: routing.ModelEntry, version: int | None, who: str) -> None:
        headers = req.headers
        status, out, body, served = await self.forward(
            entry, version, req.data, {h: headers.get(h) for h in _FORWARDED if h in headers},
            who, gone=lambda: req.finished)
        extra = {"X-Aidc-Model-Version": str(served)}
        length = out.get(v2.HEADER_LENGTH.lower())
        if length is not None:
            extra[v2.HEADER_LENGTH] = length
        req.reply(Reply(status, body, out.get("content-type", v2.JSON), extra))

    async def forward(self, entry: routing.ModelEntry, version: int | None, body, headers: dict,
                      who: str, gone=lambda: False) -> tuple[int, dict[str, str], bytes, int]:
        """Send one v2 REST infer request to a replica; its status, headers (lower-case
        names), body, and the version that answered. With no replica answering within
        ``unavailable_wait``: a 503 of the v2 error shape. Counted in the metrics and the
        caller's tally (``who``); ``gone()`` says the caller left (stop waiting)."""
        t0 = time.perf_counter()
        name = entry.name
        served = self._choose(entry, version)
        tail = [f"Host: replica\r\nContent-Length: {len(body)}\r\n"]
        for h, value in headers.items():
            if value is not None:
                tail.append(f"{h}: {value}\r\n")
        tail.append("\r\n")
        tail = "".join(tail)
        deadline = time.monotonic() + self.settings.unavailable_wait
        tries = 0
        while tries < 3:
            pool = self._pick(name, served)
            if pool is None:
                if time.monotonic() > deadline or gone():
                    break
                await asyncio.sleep(0.05)  # every replica restarting: hold the request a little
            else:
                tries += 1
                head = (f"POST /v2/models/{quote(name, safe='')}/versions/{served.version}/infer "
                        f"HTTP/1.1\r\n{tail}").encode("latin-1")
                try:
                    status, out, answer = await pool.request(head, body)
                except ReplicaGone as e:
                    log.info("aidc router: replica %s of %s v%d did not answer: %s",
                             pool.socket, name, served.version, e)
                    pool.down_until = time.monotonic() + _SET_ASIDE
                else:
                    label = str(served.version)
                    self.metrics.record(name, label, status, time.perf_counter() - t0)
                    self.tally.count(who, f"{name}@{label}", ok=status < 400)
                    return status, out, answer, served.version
            # the service may say more by now: a replaced version, a restarted replica
            entry = self.table.get(name, fresh=True) or entry
            served = self._choose(entry, version) or served
        label = str(served.version)
        self.metrics.record(name, label, 503, time.perf_counter() - t0)
        self.tally.count(who, f"{name}@{label}", ok=False)
        message = f"model {name!r} version {label} has no ready replica"
        return 503, {"content-type": v2.JSON}, v2.error_body(message), served.version

    # -- everything else: the models service ---------------------------------------------------
    async def _pass_on(self, req) -> None:
        headers = {k: v for k, v in req.headers.items() if k not in _HOP}
        try:
            status, out, body = await self.ask_service(req.method, req.path, headers, req.data)
        except ServiceUnavailable as e:
            return req.error(503, str(e))
        content_type = next((v for k, v in out if k.lower() == "content-type"), v2.JSON)
        req.reply(Reply(status, body, content_type,
                        [(k, v) for k, v in out if k.lower() not in ("content-type", "date", "server")]))

    async def ask_service(self, method: str, path: str, headers: dict, body=b""
                          ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to the models service itself (not through the proxy, which would
        send v2 paths back here): status, headers (pairs, hop-by-hop ones left out), body."""
        import aiohttp  # the rare path: not on a replica's or the hot path's import

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.client_ssl if self.client_ssl else False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False)
        try:
            async with self._session.request(method, self.service_url + path,
                                             data=bytes(body) if body else None,
                                             headers=headers, allow_redirects=False) as r:
                answer = await r.read()
                return r.status, [(k, v) for k, v in r.headers.items() if k.lower() not in _HOP], answer
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            log.warning("aidc router: the models service did not answer %s %s: %s", method, path, e)
            raise ServiceUnavailable(
                "the models service is not answering (restarting?); inference of deployed "
                "models goes on, other v2 requests wait for it") from None

    # -- upkeep ---------------------------------------------------------------------------------
    def forget_gone(self) -> None:
        """Close pools of sockets the table no longer names (versions that were replaced)."""
        live = {s for m in self.table.models.values() for v in m.served for s, _ in v.replicas}
        for socket in [s for s in self.pools if s not in live]:
            self.pools.pop(socket).close()

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        if self._session is not None:
            await self._session.close()


def models_prefix() -> str:
    """``/services/models`` under the hub's base URL (the router's own prefix is its sibling)."""
    own = service_prefix().rstrip("/")  # e.g. /services/models-router
    return own.rsplit("/", 1)[0] + "/models"


def public_tls() -> tuple[bytes, bytes] | None:
    """The public port's key and certificate (PEM), when the platform serves HTTPS."""
    cert, key = os.environ.get("AIDC_TLS_CERT"), os.environ.get("AIDC_TLS_KEY")
    if not (cert and key):
        return None
    with open(key, "rb") as k, open(cert, "rb") as c:
        return k.read(), c.read()


def grpc_front_plan(settings: ModelsRouter) -> str | None:
    """The nginx program that is to serve the gRPC port, or None (the router's own
    ``grpc.aio`` server, or no gRPC port)."""
    from .. import nginx

    if not settings.grpc_port or settings.grpc_server == "python":
        return None
    binary = nginx.binary()
    if binary is None and settings.grpc_server == "nginx":
        log.error("aidc router: c.ModelsRouter.grpc_server = 'nginx', but nginx is not "
                  "installed (apt-get install nginx): gRPC is served by Python's server")
    return binary


def worker(index: int, app: ServiceApp, settings: ModelsRouter, own_grpc: bool = True) -> None:
    """One router process: serves the port (with its siblings: ``SO_REUSEPORT``) until
    SIGTERM; and the gRPC port with ``grpc.aio`` when ``own_grpc`` (no native front)."""
    from jupyterhub.services.auth import HubAuth

    from ..services.base import close_hub_auth

    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    hub_auth = HubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=0)
    tokens = TokenCache(hub_auth, settings.token_cache_seconds)
    table = routing.TableReader(routing.table_path(app.data_dir))
    tally = CallTally(config=app.config)
    router = InferenceRouter(settings, table, tokens, os.environ["AIDC_SERVICE_URL_MODELS"],
                             models_prefix(), tally, client_ssl=internal_tls.proxy_client_context())
    stats = routing.stats_path(app.data_dir, index)
    # a replaced router process's counts go on from its predecessor's (counters never drop)
    router.metrics = router.metrics.add(routing.read_json(stats))

    async def run() -> None:
        server = HTTPServer(router)
        tls = internal_tls.server_context() if url.scheme == "https" else None
        await server.listen(url.port, url.hostname or "127.0.0.1", ssl=tls, reuse_port=True)
        grpc_server = None
        if settings.grpc_port and own_grpc:
            from . import grpc_api  # grpcio: only where gRPC is served

            try:
                grpc_server = await grpc_api.serve(router, settings.grpc_port,
                                                   os.environ.get("AIDC_IP") or "127.0.0.1", public_tls())
            except Exception as e:  # e.g. the port is another program's: REST goes on
                log.error("aidc router: v2 over gRPC is not served: cannot listen on port %d "
                          "(%s); REST inference is not affected. Free the port, or choose "
                          "another with `aidc up --grpc-port`", settings.grpc_port, e)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("aidc router %d (pid %d): serving %s/v2 on %s", index, os.getpid(),
                 router.prefix, url.geturl())
        last_flush = time.monotonic()
        written = None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), settings.stats_interval)
            except asyncio.TimeoutError:
                pass
            if table.refresh():
                router.forget_gone()
            snapshot = router.metrics.snapshot()
            if snapshot != written:
                routing.write_json(stats, snapshot)
                written = snapshot
            if time.monotonic() - last_flush >= max(1, tally.period // 4):
                await asyncio.to_thread(tally.flush)
                last_flush = time.monotonic()
        # stop taking connections (the siblings take the new ones), finish what was sent
        server.stop()
        router.plane.draining = True
        if grpc_server is not None:
            await grpc_server.stop(grace=5)
        await server.close_all_connections()
        routing.write_json(stats, router.metrics.snapshot())
        await asyncio.to_thread(tally.flush, everything=True)
        await router.close()

    asyncio.run(run())
    close_hub_auth(hub_auth)


#: the supervisor's index of the gRPC front (nginx) among its children
FRONT = -1


def main() -> None:
    """The service process: runs ``ModelsRouter.workers`` router processes and replaces
    any that exits, so that one router process's end (a crash, a kill) is not the
    router's: its siblings keep serving the port meanwhile. SIGTERM stops them all."""
    configure_logging()
    app = ServiceApp.for_platform()
    app.name = "aidc-models-router"
    settings = ModelsRouter(config=app.config)
    for old in routing.stats_path(app.data_dir, 0).parent.glob(routing.STATS_GLOB):
        old.unlink(missing_ok=True)  # a previous router's counts: the service would add them
    children: dict[int, int] = {}  # pid: worker index (FRONT: the gRPC front)
    started: dict[int, float] = {}  # worker index: when its process last started
    pause: dict[int, float] = {}  # worker index: seconds to wait before the next start
    stopping = False
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    program = grpc_front_plan(settings)  # nginx, or None
    folder = None
    if program is not None:
        from .. import nginx
        from . import grpc_front

        cert, key = os.environ.get("AIDC_TLS_CERT"), os.environ.get("AIDC_TLS_KEY")
        client = None
        if url.scheme == "https":  # internal TLS: nginx reaches the router as the proxy does
            client = tuple(os.environ[k] for k in internal_tls.ENV_PROXY_CLIENT)
        folder = grpc_front.prepare(
            os.environ.get("AIDC_IP") or "127.0.0.1", settings.grpc_port,
            (url.hostname or "127.0.0.1", url.port), settings.max_body_bytes,
            (cert, key) if cert and key else None, client)
        log.info("aidc router: v2 over gRPC on port %d through nginx (%s)", settings.grpc_port, program)

    def start(index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if die_with_parent(signal.SIGTERM, parent=parent):
                    if index != FRONT:
                        worker(index, app, settings, own_grpc=program is None)
                    else:
                        try:
                            nginx.before_exec()
                            os.execv(program, nginx.command(program, folder))
                        except OSError as e:  # the supervisor starts it again, pausing
                            log.error("aidc router: cannot run nginx (%s): %s", program, e)
            finally:
                os._exit(0)
        children[pid] = index
        started[index] = time.monotonic()

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(max(1, settings.workers)):
        start(index)
    if program is not None:
        start(FRONT)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None or stopping:
            continue
        log.warning("aidc router: process %d (%s) exited (status %d); starting another", pid,
                    "the gRPC front, nginx" if index == FRONT else f"worker {index}", status)
        # one that keeps exiting at once (its port taken, a broken drop-in) must not spin:
        # the pause doubles up to 5 s while it does, and is short again once one has run
        ran = time.monotonic() - started[index]
        pause[index] = 0.1 if ran > 10 else min(5.0, pause.get(index, 0.05) * 2)
        time.sleep(pause[index])
        if not stopping:
            start(index)
    if folder is not None:
        nginx.remove(folder)


def managed_service() -> ManagedService:
    """Entry point (group ``aidc.services``): the router, with the proxy's route of
    ``/services/models/v2/`` to it."""
    return ManagedService(
        name="models-router",
        command=python_command("aidc.models.router"),
        roles=[roles.SCIENTIST, roles.VIEWER],
        proxy_paths=["services/models/v2/"],
        direct=True,  # the public edge sends v2 here itself (aidc.hub.edge), and to the
        direct_fallback="models",  # models service (which serves v2 too) while this is down
        info={"description": "Inference router: the direct path of v2 requests to model replicas"},
        display=False,
    )


if __name__ == "__main__":
    main()
