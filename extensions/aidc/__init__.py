"""aidc: a notebook-first AI platform built on JupyterHub.

The package is organised one module per concept (see ``docs/architecture.md``):
``aidc.hub`` (JupyterHub side), ``aidc.security`` (audit events), ``aidc.services``
(base for hub-managed services), ``aidc.client`` (the one client behind the Python
API and the CLI) and ``aidc.cli`` (the ``aidc`` command), ``aidc.jobs`` (notebook jobs) and
``aidc.record`` (metrics of the running job), ``aidc.data`` (datasets).
"""

__version__ = "0.1.0"

from . import data, jobs, models  # noqa: E402  (aidc.jobs.submit(...), aidc.models.deploy(...), aidc.data.get(...))
from .client import gpus  # noqa: E402  (aidc.gpus(): a table of the GPUs in a notebook)
from .jobs.metrics import record  # noqa: E402  (aidc.record("accuracy", 0.97))

__all__ = ["data", "gpus", "jobs", "models", "record"]
