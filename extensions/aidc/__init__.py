"""aidc: a notebook-first AI platform built on JupyterHub.

The package is organised one module per concept (see ``docs/architecture.md``):
``aidc.hub`` (JupyterHub side), ``aidc.security`` (audit events), ``aidc.services``
(base for hub-managed services), ``aidc.client`` (the one client behind the Python
API and the CLI) and ``aidc.cli`` (the ``aidc`` command), ``aidc.jobs`` (notebook jobs) and
``aidc.record`` (metrics of the running job), ``aidc.data`` (datasets), ``aidc.secrets``
(secrets for jobs).

The notebook API (``aidc.jobs.submit(...)``, ``aidc.models.deploy(...)``,
``aidc.data.get(...)``, ``aidc.gpus()``, ``aidc.record(...)``) is loaded on first use
(PEP 562), not when the package is imported: every platform process imports some
``aidc.*`` module (the service launcher, each service, every user server), and most never
touch the notebook API, whose imports (SQLAlchemy, requests) cost each of them about
0.25 s of CPU at start.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> (module, attribute or None for the module itself)
_LAZY = {
    "data": ("aidc.data", None),
    "jobs": ("aidc.jobs", None),
    "models": ("aidc.models", None),
    "secrets": ("aidc.secrets", None),
    "gpus": ("aidc.client", "gpus"),
    "record": ("aidc.jobs.metrics", "record"),
}

__all__ = ["data", "gpus", "jobs", "models", "record", "secrets"]


def __getattr__(name: str):
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'aidc' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
