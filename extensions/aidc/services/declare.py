"""How a platform service declares itself: :class:`ManagedService` and :func:`register`.

A service (jobs, models, resources, dashboards, ...) declares itself once as a
:class:`ManagedService`: its command, the hub scopes its own token needs, and the aidc
roles whose members may use it. Services are found in two ways (:func:`discover`): the
``aidc.services`` entry-point group (how aidc's own services and installable add-ons
plug in: the entry point names a zero-argument callable returning a
:class:`ManagedService`), and :func:`register` calls in drop-in config files
``<data-dir>/config.d/*.py``.

The declaration lives here, below the hub, so that a service module declares itself
without importing the hub; the hub turns the declarations into its configuration
(:func:`aidc.hub.services.apply`), and ``aidc.hub.services.ManagedService`` and
``register`` remain the documented names for drop-ins. The service process itself is
written with :mod:`aidc.services.base`.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from jupyterhub.utils import random_port

from .. import roles
from ..security import internal_tls
from ..security.audit import WRITE_SCOPE
from . import launch

ENTRY_POINT_GROUP = "aidc.services"


@dataclass
class ManagedService:
    """Declaration of one hub-managed service."""

    #: URL path segment: the service answers at ``/services/<name>/``
    name: str
    #: command line; ``[sys.executable, "-m", "module"]`` for Python services
    command: list[str]
    #: hub scopes the service's own token gets (e.g. ``["list:users"]``)
    hub_scopes: list[str] = field(default_factory=list)
    #: aidc roles whose members may use the service (browser and API)
    roles: list[str] = field(default_factory=lambda: [roles.SCIENTIST, roles.VIEWER])
    #: scopes the service may ask for in a user's OAuth token, beyond access to itself
    oauth_scopes: list[str] = field(
        default_factory=lambda: ["read:users:name!user", "read:users:groups!user"]
    )
    #: local port; ``None`` picks a free one when the hub starts
    port: int | None = None
    #: False for background services with no web server (cullers): no URL, no OAuth
    web: bool = True
    environment: dict[str, str] = field(default_factory=dict)
    #: more URL paths under the hub's base URL that the proxy routes to this service
    #: (``Proxy.extra_routes``; the longest matching path wins, so one service can take
    #: part of another's: the inference router takes ``services/models/v2/``)
    proxy_paths: list[str] = field(default_factory=list)
    #: the public edge (:mod:`aidc.hub.edge`, nginx) sends the ``proxy_paths`` straight to
    #: this service, past configurable-http-proxy: only for a service that authenticates
    #: every request itself (the inference router)
    direct: bool = False
    #: the service that serves those paths too (the models service, for the router): the
    #: edge sends them there while this one does not answer (a restart of the whole service)
    direct_fallback: str = ""
    #: shown on the hub's home page
    display: bool = True
    info: dict = field(default_factory=dict)

    def hub_service(self, data_dir: str, extra_env: dict[str, str] | None = None,
                    scheme: str = "http") -> dict:
        """The ``c.JupyterHub.services`` entry (``scheme`` https under internal TLS: the
        proxy and the hub then reach the service over mutual TLS).

        The service's environment carries the hub process's ``AIDC_*`` settings (data
        dir, GPU simulation, database URL, public URL), so it sees the same platform.
        """
        env = {k: v for k, v in os.environ.items() if k.startswith("AIDC_")}
        env.update({"AIDC_DATA_DIR": data_dir, **(extra_env or {}), **self.environment})
        if self.proxy_paths:  # it forwards as the proxy does: under internal TLS, as its client
            env[internal_tls.ENV_WANTS_PROXY_CLIENT] = "1"
        command = launch.wrap(list(self.command))  # dies with the hub (see launch)
        if not self.web:
            return {"name": self.name, "command": command, "environment": env,
                    "display": False, "info": dict(self.info)}
        port = self.port or random_port()
        # a free port now may be one the platform binds a moment later (the public port, the
        # hub's, the proxy API's, gRPC's: seen with ports picked at random, as the tests pick them)
        taken = {os.environ.get(k) for k in ("AIDC_PORT", "AIDC_HUB_PORT", "AIDC_PROXY_API_PORT",
                                             "AIDC_GRPC_PORT")}
        while not self.port and str(port) in taken:
            port = random_port()
        return {
            "name": self.name,
            "url": f"{scheme}://127.0.0.1:{port}",
            "command": command,
            "environment": env,
            "oauth_no_confirm": True,
            "oauth_client_allowed_scopes": [
                f"access:services!service={self.name}",
                *self.oauth_scopes,
            ],
            "display": self.display,
            "info": dict(self.info),
        }

    def hub_role(self) -> dict:
        """The service token's role: its ``hub_scopes``, and adding audit events (every
        platform service reports what it does to the hub's audit writer)."""
        return {
            "name": f"service-{self.name}",
            "description": f"The {self.name} service's own API token.",
            "scopes": [*self.hub_scopes, WRITE_SCOPE],
            "services": [self.name],
        }


_registered: dict[str, ManagedService] = {}


def register(service: ManagedService) -> ManagedService:
    """Declare a service (from a drop-in config file, or a plugin's setup code)."""
    _registered[service.name] = service
    return service


def python_command(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module`` in the platform's environment."""
    return [sys.executable, "-m", module, *args]


def discover(config=None) -> list[ManagedService]:
    """Services declared through the ``aidc.services`` entry points, then register().

    An entry point that takes a ``config`` argument gets the hub's traitlets
    configuration, so its settings are ``c.Something.*`` in a drop-in like any other
    (``c.Dashboards.enabled = False`` makes the dashboards' entry point return ``None``).
    """
    found: dict[str, ManagedService] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        factory = ep.load()
        takes_config = "config" in inspect.signature(factory).parameters
        service = factory(config=config) if takes_config else factory()
        if service is not None:  # a factory returns None when its settings turn it off
            found[service.name] = service
    found.update(_registered)
    return list(found.values())
