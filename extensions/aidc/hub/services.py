"""How platform services register with JupyterHub as managed services.

A service (jobs, models, dashboards, metrics, ...) declares itself once as a
:class:`ManagedService` (:mod:`aidc.services.declare`, below the hub, re-exported here
with :func:`register` for drop-in configs). The hub configuration (:func:`apply`) turns
every declared service into

* a ``c.JupyterHub.services`` entry: JupyterHub starts and stops the process, gives it
  its own API token (``JUPYTERHUB_API_TOKEN``) and an OAuth client, and the proxy
  routes ``/services/<name>/`` to it;
* a JupyterHub role ``service-<name>`` holding the hub scopes the service's token needs;
* ``access:services!service=<name>`` added to the aidc roles that may use it;
* the proxy's routes of its ``proxy_paths`` (``Proxy.extra_routes``; for a ``direct``
  service also the public edge's, ``EdgeProxy.direct_routes``), and every service's
  address in every service's environment (``AIDC_SERVICE_URL_<NAME>``).

Services are found through the ``aidc.services`` entry points and :func:`register` calls
in drop-in config files (:func:`aidc.services.declare.discover`). The service process
itself is written with :mod:`aidc.services.base`.
"""

from __future__ import annotations

from .. import roles
from ..services.declare import (  # noqa: F401 - the documented names for drop-ins and plugins
    ENTRY_POINT_GROUP,
    ManagedService,
    discover,
    python_command,
    register,
)


def apply(c, data_dir: str, services: list[ManagedService] | None = None,
          extra_env: dict[str, str] | None = None, scheme: str = "http") -> None:
    """Add the declared services to a JupyterHub config object ``c``; ``scheme`` is
    ``https`` under ``JupyterHub.internal_ssl`` (the services then serve TLS)."""
    services = discover(config=c) if services is None else services
    names = {s.name for s in services}
    hub_services = [s for s in (c.JupyterHub.services or []) if s.get("name") not in names]
    extra_roles = []
    ours = []
    for s in services:
        ours.append(s.hub_service(data_dir, extra_env, scheme=scheme))
        extra_roles.append(s.hub_role())
        for r in s.roles if s.web else ():
            roles.grant(r, [f"access:services!service={s.name}"])
    # each service finds the others' own addresses (the inference router passes what it
    # does not serve to the models service directly: through the proxy it would come back)
    by_name = {e["name"]: e["url"] for e in ours if "url" in e}
    urls = {f"AIDC_SERVICE_URL_{name.upper().replace('-', '_')}": url for name, url in by_name.items()}
    base = c.JupyterHub.base_url if "base_url" in c.JupyterHub else "/"
    extra_routes = dict(c.Proxy.extra_routes) if "extra_routes" in c.Proxy else {}
    direct = dict(c.EdgeProxy.direct_routes) if "direct_routes" in c.EdgeProxy else {}
    for s, entry in zip(services, ours):
        entry["environment"] = {**urls, **entry["environment"]}
        for path in s.proxy_paths if s.web else ():
            route = "/" + (base.strip("/") + "/" + path.lstrip("/")).lstrip("/")
            extra_routes[route] = entry["url"]
            if s.direct:  # under internal TLS nginx presents the proxy's client certificate
                fallback = by_name.get(s.direct_fallback)
                direct[route] = [entry["url"], *([fallback] if fallback else [])]
    if extra_routes:
        c.Proxy.extra_routes = extra_routes
    if direct:
        c.EdgeProxy.direct_routes = direct
    c.JupyterHub.services = hub_services + ours
    # roles written here by an earlier apply() are replaced, others (the CLI's) kept
    ours = {"user", *roles.ROLE_NAMES, *(f"service-{n}" for n in names)}
    kept = [r for r in (c.JupyterHub.load_roles or []) if r.get("name") not in ours]
    c.JupyterHub.load_roles = [*roles.hub_roles(), *kept, *extra_roles]
