"""aidc: a notebook-first AI platform built on JupyterHub.

The package is organised one module per concept (see ``docs/architecture.md``):
``aidc.hub`` (JupyterHub side), ``aidc.security`` (audit events), ``aidc.services``
(base for hub-managed services), ``aidc.client`` (the one client behind the Python
API and the CLI) and ``aidc.cli`` (the ``aidc`` command).
"""

__version__ = "0.1.0"
