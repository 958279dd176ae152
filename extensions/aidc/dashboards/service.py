"""The dashboards service: Voila at ``/services/dashboards/``, managed by the hub.

JupyterHub starts Voila on the notebooks in ``notebooks/dashboards/`` (the landing page
lists them: the Voila template ``aidc`` beside this module), signed in through hub OAuth
(:class:`aidc.dashboards.auth.ServicePrefixIdentityProvider`, and JupyterHub's
authorizer, which checks the ``access:services!service=dashboards`` scope that the
viewer, scientist and admin roles hold). Voila's own protections stay on: the notebook
sources are stripped from the page, and ``execute_request`` messages from the browser
are dropped, so a viewer can run only what the dashboards run.

The service's token, which the kernels inherit, reaches the metrics, jobs and models
services and nothing else, and reads them as a viewer (:data:`aidc.roles.VIEWING_SERVICES`).

    python -m aidc.dashboards.service --pool-size=1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from traitlets import Bool, Int
from traitlets.config import Configurable

from .. import roles
from ..paths import share_dir
from ..services.declare import ManagedService, python_command
from .auth import VIEWER_HEADER

NAME = "dashboards"
#: the services a dashboard kernel reads, with the dashboards' own token
READS = ("metrics", "jobs", "models")
#: a Jupyter data folder holding the Voila template ``aidc`` (the landing page)
TEMPLATES = Path(__file__).with_name("share")


class Dashboards(Configurable):
    """The dashboards service (``c.Dashboards`` in a drop-in)."""

    enabled = Bool(True, help="""Run the Voila dashboards at /services/dashboards/. Off, the
        service is not declared at all (no Voila process, no kernels) and viewers land on
        the hub's home page; the test platforms other than the shared one turn it off.""").tag(config=True)

    pool_size = Int(1, help="""Preheated kernels kept ready per dashboard notebook
        (VoilaConfiguration.preheat_kernel): a page opens on a kernel that has already run
        the notebook, in about 0.1 s instead of 1.5 s, at the cost of one idle kernel
        (about 60 MB) per notebook and slot. 0 starts a kernel for each page view.""").tag(config=True)


def notebooks_dir() -> Path:
    """The dashboard notebooks: the checkout's ``notebooks/dashboards``, or the wheel's copy."""
    return share_dir() / "notebooks" / "dashboards"


def managed_service(config=None) -> ManagedService | None:
    """Entry point (group ``aidc.services``): the dashboards, as ``c.Dashboards`` sets them;
    ``None`` when they are turned off."""
    settings = Dashboards(config=config)
    if not settings.enabled:
        return None
    return ManagedService(
        name=NAME,
        command=python_command("aidc.dashboards.service", f"--pool-size={max(settings.pool_size, 0)}"),
        hub_scopes=[f"access:services!service={s}" for s in READS],
        roles=[roles.SCIENTIST, roles.VIEWER],
        info={"description": "Dashboards: cluster, usage and cost, jobs, models"},
    )


def voila_argv(pool_size: int) -> list[str]:
    """Voila's command line under the hub (URL and prefix from the hub's environment)."""
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    argv = [
        str(notebooks_dir()),
        "--no-browser",
        f"--Voila.ip={url.hostname}",
        f"--Voila.port={url.port}",
        f"--Voila.base_url={prefix}",
        "--Voila.identity_provider_class=aidc.dashboards.auth.ServicePrefixIdentityProvider",
        "--Voila.authorizer_class=jupyterhub.singleuser.extension.JupyterHubAuthorizer",
        "--VoilaConfiguration.template=aidc",  # the landing page (share/voila/templates/aidc)
        "--VoilaConfiguration.classic_tree=True",
        "--VoilaConfiguration.strip_sources=True",
        "--VoilaConfiguration.show_tracebacks=False",
        f"--VoilaConfiguration.http_header_envs={[VIEWER_HEADER]!r}",
    ]
    if pool_size > 0:
        argv += ["--VoilaConfiguration.preheat_kernel=True",
                 f"--VoilaConfiguration.default_pool_size={pool_size}"]
    return argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-size", type=int, default=1)
    args = parser.parse_args(argv)
    # Voila finds templates on the Jupyter data path: ours is beside this module
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(TEMPLATES), os.environ.get("JUPYTER_PATH", "")) if p)
    tls_voila().launch_instance(argv=voila_argv(args.pool_size))


def tls_voila():
    """Voila, serving HTTPS and asking the hub and the proxy for their certificates when the
    hub gave the service an ``https`` URL (internal TLS, :mod:`aidc.security.internal_tls`).
    Voila's own ``listen`` has no TLS option (its ``_url`` reads "TODO: https / certfile")."""
    from voila.app import Voila

    from ..security import internal_tls

    class TLSVoila(Voila):
        def listen(self):
            if urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "")).scheme == "https":
                tls = internal_tls.server_context()
                if tls is None:
                    raise SystemExit("the dashboards' URL is HTTPS but the hub gave them no certificate")
                listen = self.app.listen
                self.app.listen = lambda port, address="", **kw: listen(port, address, ssl_options=tls, **kw)
            return super().listen()

    return TLSVoila


if __name__ == "__main__":
    main(sys.argv[1:])
