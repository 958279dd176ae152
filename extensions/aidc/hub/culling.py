"""Culling idle servers: jupyterhub-idle-culler, run by the hub as a managed service.

Culling stops the server through the hub, so the spawner's ``stop`` releases its GPUs
like any other stop. :mod:`aidc.gpu.culler` adds a GPU-aware policy on top.
"""

from __future__ import annotations

import os

from .services import ManagedService, python_command

#: seconds of inactivity after which jupyterhub-idle-culler stops a server
DEFAULT_IDLE_TIMEOUT = 3600


def idle_culler_service(timeout: int | None = None, every: int | None = None) -> ManagedService:
    """Entry point (group ``aidc.services``): jupyterhub-idle-culler as a hub service.

    ``AIDC_IDLE_TIMEOUT`` / ``AIDC_IDLE_CULL_EVERY`` change the defaults; a drop-in may
    also ``register(idle_culler_service(timeout=...))``.
    """
    timeout = timeout or int(os.environ.get("AIDC_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT))
    every = every or int(os.environ.get("AIDC_IDLE_CULL_EVERY", max(10, min(600, timeout // 4))))
    return ManagedService(
        name="idle-culler",
        command=python_command("jupyterhub_idle_culler", f"--timeout={timeout}", f"--cull-every={every}"),
        hub_scopes=["list:users", "read:users:activity", "read:servers", "delete:servers"],
        web=False,
        info={"description": f"stops servers idle for {timeout} s"},
    )
