"""Culling idle servers: jupyterhub-idle-culler, run by the hub as a managed service.

Culling stops the server through the hub, so the spawner's ``stop`` releases its GPUs
like any other stop. :mod:`aidc.gpu.culler` adds a GPU-aware policy on top.
"""

from __future__ import annotations

from traitlets import Integer
from traitlets.config import Configurable

from .services import ManagedService, python_command

#: seconds of inactivity after which jupyterhub-idle-culler stops a server
DEFAULT_IDLE_TIMEOUT = 3600


class IdleCulling(Configurable):
    """When jupyterhub-idle-culler stops idle servers (``c.IdleCulling.*`` in a drop-in)."""

    timeout = Integer(DEFAULT_IDLE_TIMEOUT, help="""Seconds without activity (no kernel
        busy, no browser connected) after which a server is stopped and its GPUs released."""
    ).tag(config=True)
    cull_every = Integer(0, help="""Seconds between the culler's checks; 0: a quarter of
        the timeout, between 10 s and 10 min.""").tag(config=True)


def idle_culler_service(timeout: int | None = None, every: int | None = None,
                        config=None) -> ManagedService:
    """Entry point (group ``aidc.services``): jupyterhub-idle-culler as a hub service.

    ``c.IdleCulling.timeout`` / ``cull_every`` in the hub's configuration (``config``)
    set it; a drop-in may also ``register(idle_culler_service(timeout=...))``.
    """
    settings = IdleCulling(config=config)
    timeout = timeout or settings.timeout
    every = every or settings.cull_every or max(10, min(600, timeout // 4))
    args = [f"--timeout={timeout}", f"--cull-every={every}"]
    hub = config.JupyterHub if config is not None and "JupyterHub" in config else {}
    if hub.get("internal_ssl"):
        # the hub's API is mutual TLS: the culler's own option presents the hub's internal
        # key from JupyterHub's store (it runs as the platform's account, which may read it)
        args += ["--IdleCuller.ssl_enabled=True",
                 f"--IdleCuller.internal_certs_location={hub.get('internal_certs_location')}"]
    return ManagedService(
        name="idle-culler",
        command=python_command("jupyterhub_idle_culler", *args),
        hub_scopes=["list:users", "read:users:activity", "read:servers", "delete:servers"],
        web=False,
        info={"description": f"stops servers idle for {timeout} s"},
    )
