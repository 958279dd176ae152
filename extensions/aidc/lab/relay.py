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
"""

from __future__ import annotations

import asyncio
import json

import requests
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import Float, List, Unicode
from traitlets.config import LoggingConfigurable

from ..client import Client
from ..errors import AidcError, PlatformError, UsageError, status_for


class LabRelay(LoggingConfigurable):
    """Which services the panel may reach, and how long a call may take."""

    services = List(
        Unicode(),
        ["resources", "jobs"],
        help="""Hub services the Lab panel's routes relay to (``/aidc/api/<name>/...`` →
        ``/services/<name>/api/...``). Any other name answers 404.""",
    ).tag(config=True)

    timeout = Float(
        20.0,
        help="""Seconds a relayed call may take before the panel is told that the service
        is not answering (a 502), so the panel never waits without end.""",
    ).tag(config=True)

    _client: Client | None = None

    def client(self) -> Client:
        """The owner's client, made on first use from the server's environment
        (``AIDC_URL`` and ``JUPYTERHUB_API_TOKEN``, which the platform's spawner sets)."""
        if self._client is None:
            try:
                self._client = Client(timeout=self.timeout)
            except UsageError as e:  # a server started outside the platform
                raise PlatformError(f"this server does not know the platform: {e}") from None
        return self._client

    async def call(self, method: str, service: str, path: str, body: bytes | None):
        """``method`` on the service's ``api/<path>``: ``(status, content type, body)``.

        Raises :class:`~aidc.errors.AidcError` as the client does for a refusal."""
        kw = {}
        if body:
            kw = {"data": body, "headers": {"Content-Type": "application/json"}}
        client = self.client()
        try:
            r = await asyncio.to_thread(client.request, method, f"services/{service}/api/{path}",
                                        **kw)
        except requests.Timeout:
            raise PlatformError(f"the {service} service did not answer within "
                                f"{self.timeout:g} s") from None
        except requests.RequestException as e:  # what the client does not turn into an AidcError
            raise PlatformError(f"the {service} service could not be reached: {e}") from None
        return r.status_code, r.headers.get("Content-Type", "application/json"), r.content


class RelayHandler(APIHandler):
    """``/aidc/api/<service>/<path>``: the call, relayed as the server's owner."""

    @property
    def relay(self) -> LabRelay:
        return self.settings["aidc_relay"]

    async def _relay(self, service: str, path: str) -> None:
        if service not in self.relay.services:
            raise web.HTTPError(404, f"no service {service!r} behind the aidc panel")
        if any(part in (".", "..") for part in path.split("/")):
            # the HTTP client would resolve them, leaving the service's API
            raise web.HTTPError(404, "a path with '.' or '..' segments")
        if self.request.query:
            path = f"{path}?{self.request.query}"
        try:
            status, kind, body = await self.relay.call(self.request.method, service, path,
                                                       self.request.body or None)
        except PlatformError as e:
            self.log.warning("aidc panel: %s %s/%s failed: %s", self.request.method, service, path, e)
            self._error(502, str(e))
            return
        except AidcError as e:
            self._error(status_for(e), str(e))
            return
        self.set_status(status)
        if body:
            self.set_header("Content-Type", kind)
            self.finish(body)
        else:
            self.finish()

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status, "message": message}))

    @web.authenticated
    async def get(self, service: str, path: str) -> None:
        await self._relay(service, path)

    @web.authenticated
    async def post(self, service: str, path: str) -> None:
        await self._relay(service, path)

    @web.authenticated
    async def delete(self, service: str, path: str) -> None:
        await self._relay(service, path)


def setup_handlers(serverapp) -> None:
    """Add the panel's routes (:data:`default_handlers`, below the server's base URL) to
    ``serverapp``'s web application."""
    web_app = serverapp.web_app
    web_app.settings["aidc_relay"] = LabRelay(parent=serverapp)
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [(url_path_join(base, route), handler)
                                 for route, handler in default_handlers])


default_handlers = [
    (r"aidc/api/([a-z][a-z0-9-]*)/(.*)", RelayHandler),
]
