"""The REST routes the Lab panel calls: ``/aidc/api/<service>/<path>`` on the user's server.

The panel runs in the browser with the user's Jupyter session; it never holds a hub or
service token. Each route relays the call to the hub service of the same name
(``/services/<service>/api/<path>``) with this server's own hub token
(``JUPYTERHUB_API_TOKEN``), which belongs to the server's owner: the services see the
signed-in user, with that user's rights, and nothing more. Only the owner reaches the
routes (JupyterHub's identity provider, and :func:`aidc.lab.hide_foreign_servers` for the
404), and Jupyter Server's ``APIHandler`` checks the XSRF token of cookie-authenticated
writes as it does for its own routes.

The relay goes through :class:`aidc.client.Client`, the one client behind the Python API
and the CLI, in a worker thread so the server's event loop never waits on a service.
A service's refusal keeps its status and message; a service that does not answer, or
answers with something that is not its API, is a 502 whose message says so.

``/aidc/v2/models/<path>`` reaches the models service's v2 inference endpoints
(``/services/models/v2/models/<path>``) the same way, for the Models section's "try it".

The routes are described by ``openapi.yaml`` beside this module, served at
``/aidc/api/openapi.json`` (and ``.yaml``) on the server.

A ``GET`` that accepts ``text/event-stream`` (the jobs service's live events) is streamed
instead: a tornado HTTP client of the relay's own passes each chunk on as it arrives,
with the same owner's token and the caller's ``Last-Event-ID``, so a long stream holds no
thread and ends when either side closes.

Every answer the relay makes carries ``X-Aidc-Relay: 1`` (:data:`RELAY_HEADER`), refusals
too: a 401/403 *without* it is this server's own (the page's token has ended), which the
panel answers by getting a new token, while a service's 403 is shown as its message.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import requests
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from ..client import Client
from ..errors import AidcError, PlatformError, UsageError, status_for

#: marks the answers the relay makes, so the panel tells them from this server's own refusals
RELAY_HEADER = "X-Aidc-Relay"

#: the API document of these routes, served at ``/aidc/api/openapi.json`` and ``.yaml``
OPENAPI = Path(__file__).with_name("openapi.yaml")


class LabRelay(LoggingConfigurable):
    """Which services the panel may reach, and how long a call may take."""

    services = List(
        Unicode(),
        ["resources", "jobs", "models"],
        help="""Hub services the Lab panel's routes relay to (``/aidc/api/<name>/...`` →
        ``/services/<name>/api/...``). Any other name answers 404.""",
    ).tag(config=True)

    timeout = Float(
        20.0,
        help="""Seconds a relayed call may take before the panel is told that the service
        is not answering (a 502), so the panel never waits without end.""",
    ).tag(config=True)

    change_timeout = Float(
        600.0,
        help="""Seconds a relayed change (``POST``, ``PUT``, ``DELETE``) may take. Deploying a
        model, adding a canary or rolling back answers once the new replicas are ready,
        which takes longer than a read (see ``timeout``).""",
    ).tag(config=True)

    stream_timeout = Float(
        6 * 3600.0,
        help="""Seconds an event stream relayed to the panel may last. The panel opens a
        new one after it ends (from the last event it saw), so this only bounds how long
        one connection is held.""",
    ).tag(config=True)

    max_streams = Integer(
        16,
        help="""Event streams this server relays at once (each followed job in an open panel
        holds one). They have an HTTP client of their own, so open streams never take the
        places of tornado's shared client (10 at a time), which other code in this server
        may use; a stream beyond this number waits for one to end.""",
    ).tag(config=True)

    _client: Client | None = None
    _streams: AsyncHTTPClient | None = None

    def client(self) -> Client:
        """The owner's client, made on first use from the server's environment
        (``AIDC_URL`` and ``JUPYTERHUB_API_TOKEN``, which the platform's spawner sets)."""
        if self._client is None:
            try:
                self._client = Client(timeout=self.timeout)
            except UsageError as e:  # a server started outside the platform
                raise PlatformError(f"this server does not know the platform: {e}") from None
        return self._client

    async def call(self, method: str, service: str, path: str, body: bytes | None,
                   api: str = "api"):
        """``method`` on the service's ``<api>/<path>``: ``(status, content type, body)``.

        Raises :class:`~aidc.errors.AidcError` as the client does for a refusal."""
        timeout = self.timeout if method == "GET" else self.change_timeout
        kw = {"timeout": timeout}
        if body:
            kw.update(data=body, headers={"Content-Type": "application/json"})
        client = self.client()
        try:
            r = await asyncio.to_thread(client.request, method, f"services/{service}/{api}/{path}",
                                        **kw)
        except requests.Timeout:
            raise PlatformError(f"the {service} service did not answer within "
                                f"{timeout:g} s") from None
        except requests.RequestException as e:  # what the client does not turn into an AidcError
            raise PlatformError(f"the {service} service could not be reached: {e}") from None
        return r.status_code, r.headers.get("Content-Type", "application/json"), r.content


    async def stream(self, request: HTTPRequest):
        """Fetch a streaming ``request`` (:meth:`stream_request`) with the streams' own client."""
        if self._streams is None:
            self._streams = AsyncHTTPClient(force_instance=True, max_clients=self.max_streams)
        return await self._streams.fetch(request, raise_error=False)

    def stream_request(self, service: str, path: str, headers: dict, on_header, on_chunk
                       ) -> HTTPRequest:
        """The streaming ``GET`` of the service's ``api/<path>``, as the owner."""
        client = self.client()
        return HTTPRequest(
            f"{client.url}/services/{service}/api/{path}", method="GET",
            headers={"Authorization": client.session.headers["Authorization"], **headers},
            connect_timeout=self.timeout, request_timeout=self.stream_timeout,
            header_callback=on_header, streaming_callback=on_chunk)


class _StreamEnded(Exception):
    """The panel went away: ends the service's stream (raised in the streaming callback)."""


class RelayHandler(APIHandler):
    """``/aidc/api/<service>/<path>``: the call, relayed as the server's owner."""

    @property
    def relay(self) -> LabRelay:
        return self.settings["aidc_relay"]

    async def _relay(self, service: str, path: str, api: str = "api") -> None:
        self._check(service, path)
        if self.request.query:
            path = f"{path}?{self.request.query}"
        try:
            status, kind, body = await self.relay.call(self.request.method, service, path,
                                                       self.request.body or None, api)
        except AidcError as e:
            status = getattr(e, "status", None)  # the service's refusal (aidc.client), any 4xx
            if isinstance(e, PlatformError) and not (status and status < 500):
                self.log.warning("aidc panel: %s %s/%s failed: %s", self.request.method, service, path, e)
                self._error(502, str(e))
            else:
                self._error(status if status and status < 500 else status_for(e), str(e))
            return
        self.set_status(status)
        self.set_header(RELAY_HEADER, "1")
        if body:
            self.set_header("Content-Type", kind)
            self.finish(body)
        else:
            self.finish()

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header(RELAY_HEADER, "1")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status, "message": message}))

    def _check(self, service: str, path: str) -> None:
        if service not in self.relay.services:
            raise web.HTTPError(404, f"no service {service!r} behind the aidc panel")
        if any(part in (".", "..") for part in path.split("/")):
            # the HTTP client would resolve them, leaving the service's API
            raise web.HTTPError(404, "a path with '.' or '..' segments")

    async def _stream(self, service: str, path: str) -> None:
        """Relay an event stream chunk by chunk; an answer that is not a stream (a refusal)
        is relayed whole, as :meth:`_relay` does."""
        self._check(service, path)
        if self.request.query:
            path = f"{path}?{self.request.query}"
        headers = {"Accept": "text/event-stream"}
        if self.request.headers.get("Last-Event-ID"):
            headers["Last-Event-ID"] = self.request.headers["Last-Event-ID"]
        answer = {"status": 0, "kind": "", "streaming": False}
        held: list[bytes] = []

        def on_header(line: str) -> None:
            if line.startswith("HTTP/"):
                answer["status"] = int(line.split()[1])
            elif line.lower().startswith("content-type:"):
                answer["kind"] = line.split(":", 1)[1].strip()

        def on_chunk(chunk: bytes) -> None:
            if not answer["streaming"]:
                if answer["status"] != 200 or not answer["kind"].startswith("text/event-stream"):
                    held.append(chunk)
                    return
                answer["streaming"] = True
                self.set_header("Content-Type", "text/event-stream")
                self.set_header("Cache-Control", "no-cache")
                self.set_header("X-Accel-Buffering", "no")
                self.set_header(RELAY_HEADER, "1")
            if self.request.connection.stream is None or self.request.connection.stream.closed():
                raise _StreamEnded()
            self.write(chunk)
            self.flush().add_done_callback(lambda f: f.exception())  # a closed panel: seen above

        try:
            request = self.relay.stream_request(service, path, headers, on_header, on_chunk)
        except PlatformError as e:
            self._error(502, str(e))
            return
        try:
            await self.relay.stream(request)
        except _StreamEnded:
            return
        except (OSError, HTTPClientError) as e:
            if not answer["streaming"]:
                self._error(502, f"the {service} service could not be reached: {e}")
                return
        if answer["streaming"]:
            self.finish()
            return
        body = b"".join(held)
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            self._error(502, f"the {service} service answered {answer['status'] or 'nothing'}, "
                             "not the aidc API (it may be starting or stopped)")
            return
        self._error(answer["status"] if answer["status"] >= 400 else 502, str(message))

    @web.authenticated
    async def get(self, service: str, path: str) -> None:
        if "text/event-stream" in self.request.headers.get("Accept", ""):
            await self._stream(service, path)
        else:
            await self._relay(service, path)

    @web.authenticated
    async def post(self, service: str, path: str) -> None:
        await self._relay(service, path)

    @web.authenticated
    async def put(self, service: str, path: str) -> None:
        await self._relay(service, path)

    @web.authenticated
    async def delete(self, service: str, path: str) -> None:
        await self._relay(service, path)


class InferenceRelayHandler(RelayHandler):
    """``/aidc/v2/models/<path>``: a model's v2 metadata and inference, as the owner sees
    them through the models service (the panel's "try it")."""

    SUPPORTED_METHODS = ("GET", "POST")

    @web.authenticated
    async def get(self, path: str) -> None:
        await self._relay("models", f"models/{path}", api="v2")

    @web.authenticated
    async def post(self, path: str) -> None:
        await self._relay("models", f"models/{path}", api="v2")


class RelayOpenAPIHandler(APIHandler):
    """``/aidc/api/openapi.(json|yaml)``: these routes' API document (``openapi.yaml`` beside
    this module), as the services serve theirs (:class:`aidc.services.base.OpenAPIHandler`)."""

    @web.authenticated
    def get(self, ext: str) -> None:
        import yaml

        text = OPENAPI.read_text()
        if ext == "yaml":
            self.set_header("Content-Type", "application/yaml")
            self.finish(text)
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(yaml.safe_load(text)))


def setup_handlers(serverapp) -> None:
    """Add the panel's routes (:data:`default_handlers`, below the server's base URL) to
    ``serverapp``'s web application."""
    web_app = serverapp.web_app
    web_app.settings["aidc_relay"] = LabRelay(parent=serverapp)
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [(url_path_join(base, route), handler)
                                 for route, handler in default_handlers])


default_handlers = [
    (r"aidc/api/openapi\.(json|yaml)", RelayOpenAPIHandler),
    (r"aidc/api/([a-z][a-z0-9-]*)/(.*)", RelayHandler),
    (r"aidc/v2/models/(.*)", InferenceRelayHandler),
]
