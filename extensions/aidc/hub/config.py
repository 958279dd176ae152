"""Turns platform options into JupyterHub configuration (used by hub_config/jupyterhub_config.py).

``aidc up`` passes its options to the hub process through ``AIDC_*`` environment
variables; :func:`configure` reads them and fills in the JupyterHub config object.
Everything here is a default: ``hub_config/jupyterhub_config.py`` and drop-in files in
``<data-dir>/config.d/`` may override any of it afterwards.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..paths import DataDir, data_dir, find_proxy_command, log_rotation, templates_dir, venv_bin
from .. import accounts
from . import landing, services

#: How long (seconds) user servers and platform services may trust what the hub said
#: about a token or a browser session before asking again. A revoked token, a removed
#: user or a changed role takes effect within this time everywhere. JupyterHub's own
#: default is 300 s; change it with ``c.HubAuth.cache_max_age`` in a drop-in.
DEFAULT_AUTH_CACHE_SECONDS = 5

#: the service the ``aidc`` command uses to talk to a running hub
CLI_SERVICE = "aidc-cli"
CLI_SCOPES = [
    "admin:users",
    "admin:groups",
    "admin:servers",
    "tokens",
    "list:users",
    "read:users",
    "read:hub",
]


class KnownWarningsFilter(logging.Filter):
    """Drops JupyterHub warnings about what aidc does on purpose, at every start.

    aidc narrows JupyterHub's default ``user`` role to reading one's own identity
    (:func:`aidc.hub.roles.hub_roles`): ``self`` comes with the ``scientist`` role, so
    a viewer cannot start a server. JupyterHub warns that the narrowed role "does not
    include 'self'"; that one line is turned into a debug line, nothing else is touched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "user role overridden" in str(record.msg) \
                and "does not include 'self'" in str(record.msg):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


@dataclass
class PlatformOptions:
    """What ``aidc up`` was asked for."""

    data_dir: DataDir
    ip: str = "127.0.0.1"
    port: int = 8000
    hub_port: int = 8081
    proxy_api_port: int = 8001
    #: the v2 gRPC inference port (the inference router's; 0: none)
    grpc_port: int = 8002
    #: HTTPS on the public port: certificate and key files (both or neither)
    tls_cert: str = ""
    tls_key: str = ""
    #: JupyterHub's internal_ssl: mutual TLS between hub, proxy, servers and services
    #: (:mod:`aidc.security.internal_tls`)
    internal_ssl: bool = False

    @classmethod
    def from_env(cls) -> "PlatformOptions":
        port = int(os.environ.get("AIDC_PORT", "8000"))
        return cls(
            data_dir=data_dir(),
            ip=os.environ.get("AIDC_IP", "127.0.0.1"),
            port=port,
            hub_port=int(os.environ.get("AIDC_HUB_PORT", port + 81)),
            proxy_api_port=int(os.environ.get("AIDC_PROXY_API_PORT", port + 1)),
            grpc_port=int(os.environ.get("AIDC_GRPC_PORT", port + 2)),
            tls_cert=os.environ.get("AIDC_TLS_CERT", ""),
            tls_key=os.environ.get("AIDC_TLS_KEY", ""),
            internal_ssl=os.environ.get("AIDC_INTERNAL_SSL") == "1",
        )

    def to_env(self) -> dict[str, str]:
        return {
            "AIDC_DATA_DIR": str(self.data_dir.root),
            "AIDC_IP": self.ip,
            "AIDC_PORT": str(self.port),
            "AIDC_HUB_PORT": str(self.hub_port),
            "AIDC_PROXY_API_PORT": str(self.proxy_api_port),
            "AIDC_GRPC_PORT": str(self.grpc_port),
            **({"AIDC_TLS_CERT": self.tls_cert, "AIDC_TLS_KEY": self.tls_key} if self.tls_cert else {}),
            **({"AIDC_INTERNAL_SSL": "1"} if self.internal_ssl else {}),
        }

    @property
    def internal_scheme(self) -> str:
        return "https" if self.internal_ssl else "http"

    @property
    def hub_api_url(self) -> str:
        return f"{self.internal_scheme}://127.0.0.1:{self.hub_port}/hub/api"

    @property
    def public_url(self) -> str:
        host = "127.0.0.1" if self.ip in ("", "0.0.0.0") else self.ip
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"


def configure(c, options: PlatformOptions | None = None) -> PlatformOptions:
    """Fill the JupyterHub config object ``c`` for one platform."""
    o = options or PlatformOptions.from_env()
    d = o.data_dir.ensure()
    os.environ["AIDC_DATA_DIR"] = str(d.root)  # audit events from the hub process

    c.JupyterHub.ip = o.ip
    c.JupyterHub.port = o.port
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = o.hub_port
    c.JupyterHub.db_url = d.hub_db_url
    c.JupyterHub.cookie_secret_file = str(d.cookie_secret)
    c.JupyterHub.template_paths = [str(templates_dir())]
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.cleanup_proxy = True
    c.JupyterHub.authenticate_prometheus = True
    c.JupyterHub.default_url = landing.default_url  # viewers land on the dashboards

    # nginx on the public port, configurable-http-proxy behind it (aidc.hub.edge)
    c.JupyterHub.proxy_class = "aidc.hub.edge.EdgeProxy"
    c.ConfigurableHTTPProxy.command = [find_proxy_command()]
    c.ConfigurableHTTPProxy.api_url = f"{o.internal_scheme}://127.0.0.1:{o.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(d.proxy_pid_file)
    c.ConfigurableHTTPProxy.auth_token = d.secret(d.secrets_dir / "proxy-token")

    # hub.log: 0600 (it names users and their addresses), rotated (see aidc.paths)
    c.JupyterHub.logging_config = {
        "handlers": {
            "aidc_file": {
                "class": "aidc.paths.PrivateFileHandler",
                "filename": str(d.hub_log),
                "formatter": "aidc_plain",
                **log_rotation(),
            }
        },
        "filters": {"aidc_known_warnings": {"()": "aidc.hub.config.KnownWarningsFilter"}},
        "formatters": {"aidc_plain": {"format": "[%(levelname)1.1s %(asctime)s %(name)s] %(message)s"}},
        # the application's logger is named after its class: PlatformHub under `aidc up`
        # (aidc.hub.app), JupyterHub when the hub is started with `jupyterhub -f`
        "loggers": {name: {"handlers": ["console", "aidc_file"], "filters": ["aidc_known_warnings"]}
                    for name in ("PlatformHub", "JupyterHub")},
    }

    # authentication and spawning: real Unix accounts as root, shared account otherwise
    if accounts.running_as_root():
        c.JupyterHub.authenticator_class = "aidc.hub.auth.SystemUserPAMAuthenticator"
        c.JupyterHub.spawner_class = "aidc.hub.spawner.SystemUserSpawner"
    else:
        c.JupyterHub.authenticator_class = "aidc.hub.auth.DevSharedPasswordAuthenticator"
        c.SharedPasswordAuthenticator.user_password = d.secret(d.dev_password_file, 16)
        c.JupyterHub.spawner_class = "aidc.hub.spawner.SharedAccountSpawner"
    c.Authenticator.username_pattern = accounts.NAME_PATTERN.pattern
    c.Authenticator.allow_existing_users = True

    # jupyterhub-singleuser without JupyterLab's 0.6 s Node.js probe (aidc.hub.singleuser)
    c.Spawner.cmd = [str(venv_bin() / "python"), "-m", "aidc.hub.singleuser"]
    c.Spawner.default_url = "/lab"
    # a spawn may wait in the GPU queue (GPUAllocationMixin.gpu_queue_timeout, 600 s)
    c.Spawner.start_timeout = 720
    c.Spawner.http_timeout = 60
    c.Spawner.environment = {
        # kernels and terminals find the platform's Python first
        "PATH": f"{venv_bin()}:/usr/local/bin:/usr/bin:/bin",
        # where aidc.client finds the platform from inside a server
        "AIDC_URL": o.public_url,
    }
    if o.tls_cert:
        configure_tls(c, o)
    if o.internal_ssl:
        configure_internal_ssl(c, o)
    # $JUPYTERHUB_API_TOKEN in a server acts as its user (within the user's own
    # permissions), so notebooks use the platform services without pasting a token
    c.Spawner.server_token_scopes = [
        "users:activity!user",
        "access:servers!server",
        "self",
        "access:services",
    ]

    # the audit log's one writer: services post their events here (aidc.hub.audit_api)
    from . import audit_api, audit_requests

    c.JupyterHub.custom_scopes = {**(c.JupyterHub.get("custom_scopes") or {}), **audit_api.SCOPE_DEFINITION}
    c.JupyterHub.extra_handlers = [*(c.JupyterHub.get("extra_handlers") or []), *audit_api.handlers()]
    # a removed user's secrets are audited as removed by whoever removed the user (aidc.hub.removal)
    from .removal import name_the_remover

    name_the_remover()
    # changes made through JupyterHub's own REST API and admin page (aidc.hub.audit_requests)
    c.JupyterHub.tornado_settings = {**(c.JupyterHub.get("tornado_settings") or {}),
                                     "log_function": audit_requests.audit_request}

    cli_token = d.secret(d.cli_token_file)
    c.JupyterHub.services = [{"name": CLI_SERVICE, "api_token": cli_token}]
    c.JupyterHub.load_roles = [
        {
            "name": "aidc-cli",
            "description": "The aidc command on the platform's host.",
            "scopes": CLI_SCOPES,
            "services": [CLI_SERVICE],
        }
    ]
    return o


#: Strict-Transport-Security on the hub's answers: browsers that saw the platform over
#: HTTPS never use plain HTTP for it again (a year)
HSTS = "max-age=31536000"


def configure_tls(c, o: PlatformOptions) -> None:
    """HTTPS on the public port (configurable-http-proxy serves it), secure cookies, HSTS,
    and the platform's own clients trusting its certificate (:mod:`aidc.security.tls`)."""
    from ..security import tls

    c.JupyterHub.ssl_cert = o.tls_cert
    c.JupyterHub.ssl_key = o.tls_key
    c.JupyterHub.cookie_options = {**(c.JupyterHub.get("cookie_options") or {}), "secure": True}
    settings = dict(c.JupyterHub.get("tornado_settings") or {})
    settings["headers"] = {**settings.get("headers", {}), "Strict-Transport-Security": HSTS}
    settings["xsrf_cookie_kwargs"] = {**settings.get("xsrf_cookie_kwargs", {}), "secure": True}
    c.JupyterHub.tornado_settings = settings
    bundle = str(tls.trust_bundle(o.data_dir.root, Path(o.tls_cert)))
    # the hub, services (finalize), user servers and their kernels, and (through the jobs
    # service) job kernels verify the public URL against it
    os.environ.update(REQUESTS_CA_BUNDLE=bundle, SSL_CERT_FILE=bundle)
    c.Spawner.environment = {**c.Spawner.environment, "REQUESTS_CA_BUNDLE": bundle, "SSL_CERT_FILE": bundle}


def configure_internal_ssl(c, o: PlatformOptions) -> None:
    """JupyterHub's ``internal_ssl``: its authorities in ``<data-dir>/internal-ssl/`` (made
    at the first start, kept after), mutual TLS on every internal hop; aidc's services,
    clients and spawner follow (:mod:`aidc.security.internal_tls`)."""
    from ..security import internal_tls

    c.JupyterHub.internal_ssl = True
    c.JupyterHub.internal_certs_location = str(internal_tls.certs_dir(o.data_dir.root))


def auth_cache_seconds(c) -> int:
    """The hub-answer cache time of servers and services (``c.HubAuth.cache_max_age``)."""
    for section in ("HubOAuth", "HubAuth"):
        value = c[section].get("cache_max_age") if section in c else None
        if value is not None:
            return int(value)
    return DEFAULT_AUTH_CACHE_SECONDS


def finalize(c, options: PlatformOptions) -> None:
    """Add services (built-in and drop-in) and roles; call after the drop-ins are loaded."""
    cache = auth_cache_seconds(c)
    # user servers: JupyterHub's HubOAuth in the server reads its config from the
    # command line (the single-user server loads no platform drop-ins)
    args = [a for a in (c.Spawner.get("args") or []) if "cache_max_age" not in a]
    c.Spawner.args = [*args, f"--HubOAuth.cache_max_age={cache}"]
    # services: aidc.services.base builds their HubOAuth from this
    extra_env = {"AIDC_URL": options.public_url, "AIDC_AUTH_CACHE_SECONDS": str(cache)}
    if options.tls_cert:  # services reach each other at the public URL: trust its certificate
        from ..security.tls import bundle_path

        bundle = str(bundle_path(options.data_dir.root))
        extra_env.update(REQUESTS_CA_BUNDLE=bundle, SSL_CERT_FILE=bundle)
    profiles = c.GPUAllocationMixin.get("resource_profiles")
    if profiles:
        # services (and through them the CLI) see the same profiles as the spawn form
        extra_env["AIDC_RESOURCE_PROFILES"] = json.dumps(list(profiles))
    services.apply(c, str(options.data_dir.root), extra_env=extra_env,
                   scheme="https" if c.JupyterHub.get("internal_ssl") else "http")


def load_drop_ins(c, data_dir: DataDir, load_subconfig) -> list[Path]:
    """Load ``<data-dir>/config.d/*.py`` in name order (after the defaults)."""
    loaded = []
    for path in sorted(data_dir.config_d.glob("*.py")):
        load_subconfig(str(path))
        loaded.append(path)
    return loaded


logging.getLogger("aidc").setLevel(logging.INFO)
