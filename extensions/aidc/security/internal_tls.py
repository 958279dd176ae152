"""TLS between the platform's own parts: JupyterHub's ``internal_ssl``, for aidc's pieces too.

``aidc up --internal-ssl`` turns on ``c.JupyterHub.internal_ssl``: JupyterHub makes a
private certificate authority per role with certipy (``hub-ca``, ``proxy-api-ca``,
``proxy-client-ca``, ``notebooks-ca``, ``services-ca``) in ``<data-dir>/internal-ssl/``
(0700 with the data directory), and every internal hop becomes mutual TLS: the hub's API,
the proxy's API and the proxy's connections to the hub, to user servers and to services.
Each side verifies the other's certificate against the authorities it trusts, so a
process on the machine without a signed key can connect to none of these ports.

JupyterHub hands each process its files as ``JUPYTERHUB_SSL_KEYFILE``,
``JUPYTERHUB_SSL_CERTFILE`` and ``JUPYTERHUB_SSL_CLIENT_CA``, and its own
``HubAuth`` and single-user server use them. This module makes aidc's own code do the
same:

- a service serves TLS and asks for a client certificate (:func:`server_context`, used by
  :func:`aidc.services.base.run_service` and the Voila dashboards), as JupyterHub's
  single-user server does;
- every aidc client of the hub API (:class:`aidc.hubapi.HubAPI`, the audit sender, the
  hub metrics reader) presents the process's certificate and trusts the internal
  authorities besides the usual ones (:func:`client_context`, :func:`mount`), so the
  same client still reaches the public URL, with its own certificate when that is HTTPS;
- each managed service gets a key of its own (:func:`service_files`): JupyterHub would
  give every service that runs as the hub's account the *same* file names
  (``user-service``), rewritten at each service's start, so services starting side by
  side could read one service's key with another's certificate;
- a user's server gets its key and certificate copied into a 0700 folder of its Unix
  account's home, owned by that account and readable by no other
  (:func:`stage_for_account`, :meth:`aidc.hub.spawner.SystemUserSpawner.move_certs`);
- the ``aidc`` command on the host presents the hub's own internal key (root reads it in
  the data directory), named in ``platform.json`` (:func:`hub_files`).

Calls between services, the Lab relay and notebooks' ``aidc.client`` go through the public
URL (the proxy), so they need nothing more. Model replicas keep their private Unix sockets.
"""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from requests.adapters import HTTPAdapter

#: the variables JupyterHub sets for a server or service under internal_ssl
ENV_KEY, ENV_CERT, ENV_CA = "JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA"

#: the folder below the data directory that holds JupyterHub's internal authorities
CERTS_DIR = "internal-ssl"

#: a user server's files, below ``~/.jupyterhub`` of its Unix account (JupyterHub's name)
CERTS_SUBDIR = "jupyterhub-certs"

#: the authority JupyterHub signs servers' and services' certificates with, and the trust
#: bundle a server or service checks its clients against (the hub and the proxy)
NOTEBOOKS_CA = "notebooks-ca"
#: the authority of the proxy's client side: what servers and services accept a forwarded
#: request from (besides the hub), and whose trust bundle verifies servers and services
PROXY_CLIENT_CA = "proxy-client-ca"
#: where a service that forwards as the proxy does (the inference router) finds its
#: proxy-client key, certificate and trust bundle (:func:`proxy_client_files`)
ENV_PROXY_CLIENT = ("AIDC_PROXY_CLIENT_KEYFILE", "AIDC_PROXY_CLIENT_CERTFILE", "AIDC_PROXY_CLIENT_CA")
#: set in the environment of a service that needs those files (``ManagedService.proxy_paths``)
ENV_WANTS_PROXY_CLIENT = "AIDC_WANTS_PROXY_CLIENT"


@dataclass(frozen=True)
class InternalFiles:
    """One process's internal TLS files: its key, its certificate, and the trust bundle
    of the authorities it accepts (as server) and verifies (as client)."""

    keyfile: str
    certfile: str
    cafile: str

    def as_env(self) -> dict[str, str]:
        return {ENV_KEY: self.keyfile, ENV_CERT: self.certfile, ENV_CA: self.cafile}

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def files_from_env(environ=None) -> InternalFiles | None:
    """This process's files, as JupyterHub (or the platform) handed them, or None when
    internal TLS is off."""
    env = os.environ if environ is None else environ
    if not (env.get(ENV_KEY) and env.get(ENV_CERT)):
        return None
    return InternalFiles(env[ENV_KEY], env[ENV_CERT], env.get(ENV_CA, ""))


def server_context(files: InternalFiles | None = None) -> ssl.SSLContext | None:
    """The context a service serves with: its certificate, and clients must present one
    signed by an authority of its trust bundle (JupyterHub's ``make_ssl_context``, as the
    single-user server uses it). None when internal TLS is off."""
    from jupyterhub.utils import make_ssl_context

    files = files or files_from_env()
    if files is None:
        return None
    return make_ssl_context(files.keyfile, files.certfile, cafile=files.cafile or None,
                            purpose=ssl.Purpose.CLIENT_AUTH)


def client_context(files: InternalFiles | None = None) -> ssl.SSLContext | None:
    """The context a client of the hub API connects with: it presents the process's
    certificate and trusts the internal authorities *and* the usual ones (the system's, or
    ``SSL_CERT_FILE``: the platform's bundle when the public port is HTTPS), so one client
    serves both the internal hub API and the public URL. None when internal TLS is off."""
    from jupyterhub.utils import make_ssl_context

    files = files or files_from_env()
    if files is None:
        return None
    ctx = make_ssl_context(files.keyfile, files.certfile, cafile=files.cafile or None,
                           purpose=ssl.Purpose.SERVER_AUTH)
    ctx.load_default_certs()
    bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    if bundle and os.path.isfile(bundle):
        ctx.load_verify_locations(bundle)
    return ctx


def mount(session, files: InternalFiles | None = None):
    """Make a ``requests`` session connect with :func:`client_context` (nothing when
    internal TLS is off); returns the session."""
    ctx = client_context(files)
    if ctx is not None:
        session.mount("https://", _ContextAdapter(ctx))
    return session


class _ContextAdapter(HTTPAdapter):
    """requests' adapter with one SSL context for every HTTPS connection (requests otherwise
    builds its own, which holds neither the client certificate nor both sets of authorities)."""

    def __init__(self, context: ssl.SSLContext, **kwargs):
        self._context = context
        super().__init__(**kwargs)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        if verify is not False:
            pool["ssl_context"] = self._context
        return host, pool


def certs_dir(data_root: Path) -> Path:
    return Path(data_root) / CERTS_DIR


def hub_files(data_root: Path) -> InternalFiles:
    """The hub's own internal key and certificate (signed by ``hub-ca``) and the bundle of
    every internal authority: what the ``aidc`` command presents to the hub's API."""
    d = certs_dir(data_root)
    return InternalFiles(str(d / "hub-internal" / "hub-internal.key"),
                         str(d / "hub-internal" / "hub-internal.crt"),
                         str(d / "hub-ca_trust.crt"))


def service_files(store_dir: str, name: str, trust_bundle: str) -> InternalFiles:
    """A key and certificate for the managed service ``name`` alone (``service-<name>``,
    signed by ``notebooks-ca`` as JupyterHub signs services; for 127.0.0.1 and localhost),
    remade at each start, in JupyterHub's store ``store_dir``; ``trust_bundle`` is the
    authorities its clients may come from."""
    from certipy import Certipy

    record = Certipy(store_dir=store_dir).create_signed_pair(
        f"service-{name}", NOTEBOOKS_CA, alt_names=["DNS:localhost", "IP:127.0.0.1"], overwrite=True)
    return InternalFiles(record["files"]["key"], record["files"]["cert"], trust_bundle)


def proxy_client_files(store_dir: str, name: str, trust_bundle: str) -> dict[str, str]:
    """A client key and certificate for managed service ``name`` signed by the proxy's
    client authority (``service-<name>-proxy-client``), for a service that forwards requests
    the proxy gave it to other services directly, as the proxy does (the inference router
    passing v2 requests to the models service): those accept it as they accept the proxy,
    and it verifies them with the proxy's trust bundle (``trust_bundle``). As environment
    variables (:data:`ENV_PROXY_CLIENT`)."""
    from certipy import Certipy

    record = Certipy(store_dir=store_dir).create_signed_pair(
        f"service-{name}-proxy-client", PROXY_CLIENT_CA, overwrite=True)
    return dict(zip(ENV_PROXY_CLIENT, (record["files"]["key"], record["files"]["cert"], trust_bundle)))


def proxy_client_context(environ=None) -> ssl.SSLContext | None:
    """The client context of :func:`proxy_client_files` (None when internal TLS is off)."""
    from jupyterhub.utils import make_ssl_context

    env = os.environ if environ is None else environ
    key, cert, ca = (env.get(k) for k in ENV_PROXY_CLIENT)
    if not (key and cert):
        return None
    return make_ssl_context(key, cert, cafile=ca or None, purpose=ssl.Purpose.SERVER_AUTH)


def stage_for_account(paths: dict, account: str) -> dict:
    """Move a user server's key and certificate (and a copy of its trust bundle) from the
    hub's store into ``~account/.jupyterhub/jupyterhub-certs`` (0700, files 0600, all owned by
    the account): the server reads them as its own Unix account, and no other account can.

    The hub runs as root and the folder is in a home the user controls, so every step goes
    through file descriptors opened with ``O_NOFOLLOW`` below the home: a ``.jupyterhub`` or
    ``jupyterhub-certs`` the user made a symbolic link (to ``/etc``, say) stops the spawn
    instead of having root chown or write there. The certificates' folder is made anew,
    root's until its files are written, and handed to the account last.
    """
    pw = pwd.getpwnam(account)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    home = os.open(pw.pw_dir, flags)
    try:
        with suppress(FileExistsError):
            os.mkdir(".jupyterhub", 0o700, dir_fd=home)
        hub_dir = os.open(".jupyterhub", flags, dir_fd=home)
    finally:
        os.close(home)
    try:
        os.fchown(hub_dir, pw.pw_uid, pw.pw_gid)
        os.fchmod(hub_dir, 0o700)
        with suppress(FileNotFoundError):
            shutil.rmtree(CERTS_SUBDIR, dir_fd=hub_dir)  # resists symbolic links (dir_fd)
        os.mkdir(CERTS_SUBDIR, 0o700, dir_fd=hub_dir)
        out = os.open(CERTS_SUBDIR, flags, dir_fd=hub_dir)
    finally:
        os.close(hub_dir)
    staged = {}
    try:
        for what in ("keyfile", "certfile", "cafile"):
            source = Path(paths[what])
            fd = os.open(source.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                         dir_fd=out)
            with os.fdopen(fd, "wb") as f:
                f.write(source.read_bytes())
                os.fchown(f.fileno(), pw.pw_uid, pw.pw_gid)
            if what != "cafile":  # the hub's store keeps the shared trust bundle only
                source.unlink()
            staged[what] = os.path.join(pw.pw_dir, ".jupyterhub", CERTS_SUBDIR, source.name)
        os.fchown(out, pw.pw_uid, pw.pw_gid)
    finally:
        os.close(out)
    return staged
