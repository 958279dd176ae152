"""The public edge: nginx on the platform's public port, configurable-http-proxy behind it.

configurable-http-proxy (CHP) is JupyterHub's proxy: the hub adds and removes its routes
as servers start and stop, and it costs ~0.27 CPU-ms a request (Node.js' http-proxy),
which made it the largest cost of a model inference that is not the model itself
(``benchmarks/serving.py``'s per-process CPU). So, where nginx is installed,
:class:`EdgeProxy` runs nginx on the public address and CHP behind it:

* CHP listens on a Unix socket in a private folder (0700, the hub's user), not on a port:
  no other account can reach it past nginx (CHP's public side has no authentication of its
  own, and it would take their ``X-Forwarded-For`` as a client address);
* nginx sends everything to CHP (WebSockets, streamed answers and uploads pass as they
  come), except the paths of ``direct_routes``, which go straight to their service over
  pooled keep-alive connections: ``/services/models/v2/`` to the inference router
  (:mod:`aidc.models.router`, which checks every caller's token itself). The hub's routing
  table is untouched: CHP still routes those paths too, for callers that reach it another
  way (``edge = "off"``);
* nginx terminates TLS when the platform has a certificate (``aidc up --tls-cert``), with
  HSTS on every answer, and tells what is behind it the caller's address and scheme
  (``X-Forwarded-For``, ``X-Real-IP``, ``X-Forwarded-Proto``), which CHP passes on
  unchanged (``--no-x-forward``): the hub's audit keeps the real source address;
* the hub starts, checks and stops both, as it does CHP alone: a proxy that exits is
  started again within ``Proxy.check_running_interval`` (JupyterHub's check), and nginx
  ends with the hub (parent-death signal), so a hub killed outright does not keep the port.

Without nginx (or ``c.EdgeProxy.edge = "off"``) this is JupyterHub's
``ConfigurableHTTPProxy``, on the public port as before.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from urllib.parse import quote, urlparse

from jupyterhub.proxy import ConfigurableHTTPProxy
from jupyterhub.utils import wait_for_server
from traitlets import Dict, Enum, Float

from .. import nginx
from ..process import die_with_parent

#: the socket CHP listens on, in the edge's private folder
CHP_SOCKET = "proxy.sock"
#: the body (v2's ``{"error": ...}``) of nginx's 503 while a direct route's service is away
_AWAY = '{"error": "the %s is not answering (restarting?); try again in a moment"}'


def _in_child(parent: int) -> None:
    """Before nginx runs: its open-file limit, and its end with the hub (or now, if the hub
    is already gone)."""
    nginx.before_exec()
    if not die_with_parent(signal.SIGTERM, parent=parent):
        os._exit(1)


class EdgeError(RuntimeError):
    """The edge (nginx) could not serve the public port: the reason, for the operator."""


def config(folder: str, host: str, port: int, chp_socket: str, direct: dict[str, str | list[str]],
           tls: tuple[str, str] | None = None, client: tuple[str, str, str] | None = None) -> str:
    """nginx's configuration: ``host:port`` (with ``tls`` = (certificate file, key file),
    HTTPS) to CHP on ``chp_socket``, and each path prefix of ``direct`` to its URL, or its
    URLs: the first, then the others while it does not answer (``https`` ones, under
    internal TLS, as the proxy's ``client`` = (key, certificate, trust bundle):
    :func:`aidc.nginx.upstream_tls_lines`)."""
    forwarded = """      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Scheme $scheme;
"""
    # with TLS: HSTS on every answer (once: the hub's own is hidden), and a plain HTTP
    # request on the port (nginx's 497) sent to the same URL over HTTPS
    hsts = ('    proxy_hide_header Strict-Transport-Security;\n'
            '    add_header Strict-Transport-Security "max-age=31536000" always;\n'
            '    error_page 497 =301 https://$http_host$request_uri;\n') if tls else ""
    upstreams, locations = [], []
    for i, (prefix, urls) in enumerate(sorted(direct.items())):
        urls = [urls] if isinstance(urls, str) else list(urls)
        targets = [urlparse(u) for u in urls]
        # the first URL serves; the others (same scheme) take over while it does not answer:
        # a request whose connection failed, or that had no answer, is sent to the next
        # (inference has no side effects), and the first is tried again after a second
        servers = "".join(f" server {t.hostname}:{t.port}"
                          f"{' max_fails=1 fail_timeout=1s' if n == 0 else ' backup'};"
                          for n, t in enumerate(targets))
        upstreams.append(f"  upstream direct{i} {{{servers} keepalive 64; }}\n")
        scheme = targets[0].scheme
        locations.append(f"""    location {prefix} {{
      proxy_pass {scheme}://direct{i};
{forwarded}{nginx.upstream_tls_lines(client if scheme == "https" else None)}      proxy_set_header Connection "";
      proxy_next_upstream error timeout non_idempotent;
      error_page 502 504 = @away{i};
    }}
    location @away{i} {{
      default_type application/json;
      return 503 '{_AWAY % ("service behind " + prefix)}';
    }}
""")
    return nginx.preamble(folder, "the platform's public edge (aidc.hub.edge)", 8192) + f"""\
  # bodies pass as they come: each service applies its own limit (a 413 of its own)
  client_max_body_size 0;
  proxy_request_buffering off;
  proxy_buffering off;
  proxy_read_timeout 1d;
  proxy_send_timeout 1d;
  keepalive_requests 1000000;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream chp {{ server unix:{chp_socket}; keepalive 32; }}
{''.join(upstreams)}  server {{
    {nginx.listen(host, port, "ssl" if tls else "")}
{nginx.tls_lines(tls)}{hsts}    location / {{
      proxy_pass http://chp;
{forwarded}      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      error_page 502 504 = @proxy_away;
    }}
    location @proxy_away {{
      default_type text/plain;
      return 503 "the platform's proxy is restarting; try again in a moment\\n";
    }}
{''.join(locations)}  }}
}}
"""


class EdgeProxy(ConfigurableHTTPProxy):
    """JupyterHub's CHP behind nginx on the public port (``c.JupyterHub.proxy_class``)."""

    edge = Enum(["auto", "nginx", "off"], "auto", config=True, help="""What serves the public
        port: ``nginx``, with configurable-http-proxy behind it on a private socket (a
        native proxy costs a fraction of CHP per request, and the paths of
        ``direct_routes`` skip CHP); ``off``, configurable-http-proxy itself; ``auto``:
        nginx where it is installed.""")
    direct_routes = Dict(config=True, help="""URL path prefix -> service URL (or a list: the
        service, then the services that take over while it does not answer) that nginx sends
        straight to the service, not through configurable-http-proxy: only for a service
        that authenticates every request itself. Filled from the services' declarations
        (``ManagedService.direct``, ``direct_fallback``).""")
    edge_start_timeout = Float(10.0, config=True, help="Seconds nginx may take to listen.")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: the platform's public URL (where nginx listens, or CHP without the edge)
        self.edge_url = self.public_url
        self.edge_program = self._plan()
        self.edge_process: subprocess.Popen | None = None
        self.edge_folder: str | None = None
        self._tls = None
        if self.edge_program:
            self.edge_folder = nginx.private_folder("aidc-edge-")
            socket = os.path.join(self.edge_folder, CHP_SOCKET)
            self.public_url = "http+unix://" + quote(socket, safe="") + urlparse(self.edge_url).path
            if self.ssl_cert:  # nginx serves HTTPS; CHP behind it plain HTTP on the socket
                self._tls = (self.ssl_cert, self.ssl_key)
                self.ssl_cert = self.ssl_key = ""
            self.command = [*self.command, "--no-x-forward"]

    def _plan(self) -> str | None:
        if self.edge == "off" or not self.should_start:
            return None
        if urlparse(self.public_url).scheme not in ("http", "https"):
            return None  # the public URL is a socket already: nothing for nginx to serve
        program = nginx.binary()
        if program is None and self.edge == "nginx":
            self.log.error("aidc: c.EdgeProxy.edge = 'nginx', but nginx is not installed "
                           "(apt-get install nginx): configurable-http-proxy serves the public port")
        return program

    async def start(self):
        await super().start()
        if self.edge_program and (self.edge_process is None or self.edge_process.poll() is not None):
            await self._start_edge()

    async def _start_edge(self) -> None:
        public = urlparse(self.edge_url)
        host = public.hostname or "0.0.0.0"
        port = public.port or (443 if public.scheme == "https" else 80)
        socket = os.path.join(self.edge_folder, CHP_SOCKET)
        client = None
        if self.app is not None and self.app.internal_ssl:  # direct routes reach services as CHP does
            files = self.app.internal_proxy_certs["proxy-client"]
            client = (files["keyfile"], files["certfile"],
                      self.app.internal_trust_bundles["proxy-client-ca"])
        nginx.write_config(self.edge_folder, config(self.edge_folder, host, port, socket,
                                                    self.direct_routes, self._tls, client))
        parent = os.getpid()
        self.log.info("aidc: the public edge (nginx) on %s, configurable-http-proxy behind it; "
                      "direct: %s", self.edge_url, ", ".join(sorted(self.direct_routes)) or "none")
        self.edge_process = subprocess.Popen(
            nginx.command(self.edge_program, self.edge_folder), start_new_session=True,
            preexec_fn=lambda: _in_child(parent))
        up = asyncio.ensure_future(wait_for_server(
            "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]"), port,
            timeout=self.edge_start_timeout))
        while not up.done():
            if self.edge_process.poll() is not None:
                up.cancel()
                raise EdgeError(f"nginx could not serve the public port {host}:{port} "
                                f"(exit status {self.edge_process.returncode}; its reason is in "
                                "the log above): is another program on that port?")
            await asyncio.sleep(0.05)
        await up

    async def check_running(self):
        if self.edge_process is not None and self.edge_process.poll() is not None:
            self.log.error("aidc: the public edge (nginx) exited with status %s; starting it again",
                           self.edge_process.returncode)
            await self._start_edge()
        await super().check_running()

    def stop(self):
        super().stop()
        process, self.edge_process = self.edge_process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        nginx.remove(self.edge_folder)
