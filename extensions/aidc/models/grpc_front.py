"""A native HTTP/2 front for the v2 gRPC port: nginx, handing each call to the router.

Python's gRPC server costs ~0.2 CPU-ms a call before any work (``grpc.aio`` or the
threaded one, measured with an empty handler), as much as configurable-http-proxy and the
router's HTTP/1.1 layer together cost a REST call, so gRPC served by it is no faster than
REST. nginx (Debian's ``nginx-light`` or any nginx >= 1.19.7 with HTTP/2) terminates
HTTP/2, and TLS when the platform's public port has it, for ~0.05 CPU-ms a call, and passes
each call over keep-alive HTTP/1.1 to the router processes' own port (their siblings share
it), as ``POST /inference.GRPCInferenceService/<Method>`` with the framed message as the
body (:meth:`aidc.models.router.InferenceRouter._grpc`). The router answers the framed
reply with ``X-Grpc-Status`` and ``X-Grpc-Message``, which nginx sends as the call's
trailers. The caller's token, rules, replica pools and refusals are the router's, as on the
router's own gRPC server (:mod:`aidc.models.grpc_api`), which serves instead where nginx is
not installed (``c.ModelsRouter.grpc_server``).

nginx runs as the router's user, one process, as :mod:`aidc.nginx` runs it: the router's
supervisor restarts it, Linux ends it with the supervisor, its private folder (0700) is
removed when it stops, and its log goes to the router's. (The public port has an nginx of
its own, the hub's edge: :mod:`aidc.hub.edge`.)
"""

from __future__ import annotations

from .. import nginx
from ..errors import size_text

#: request bodies up to this are kept in memory by nginx (larger ones: its private folder)
BODY_BUFFER = 256 * 1024


def config(folder: str, host: str, port: int, upstream: tuple[str, int], max_body: int,
           tls: tuple[str, str] | None = None, client: tuple[str, str, str] | None = None) -> str:
    """nginx's configuration: ``host:port`` (HTTP/2; with ``tls`` = (certificate file, key
    file), over TLS) passing every call to the router's port ``upstream`` (under internal
    TLS, with ``client`` = (key, certificate, trust bundle), the router's proxy-client
    identity: :func:`aidc.nginx.upstream_tls_lines`).

    A message over ``max_body`` is refused by nginx as it comes (its HTTP 413 turned into
    gRPC's RESOURCE_EXHAUSTED, in trailers, by ``@too_large``); smaller bodies beyond
    :data:`BODY_BUFFER` wait in the private folder until whole."""
    head = nginx.preamble(folder, "the v2 gRPC port in front of the inference router "
                          "(aidc.models.grpc_front)")
    listen = nginx.listen(host, port, "ssl" if tls else "", "http2")
    secure = nginx.tls_lines(tls)
    return head + f"""  client_max_body_size {max_body + 5};
  client_body_buffer_size {BODY_BUFFER};
  keepalive_requests 1000000;
  keepalive_timeout 3600s;
  upstream router {{ server {upstream[0]}:{upstream[1]}; keepalive 64; }}
  server {{
    {listen}
{secure}    location / {{
      proxy_pass {"https" if client else "http"}://router;
{nginx.upstream_tls_lines(client)}      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Real-IP $remote_addr;
      proxy_read_timeout 3600s;
      proxy_hide_header X-Grpc-Status;
      proxy_hide_header X-Grpc-Message;
      add_trailer grpc-status $upstream_http_x_grpc_status always;
      add_trailer grpc-message $upstream_http_x_grpc_message always;
      error_page 413 = @too_large;
      error_page 502 504 = @unavailable;
    }}
    location @too_large {{
      default_type application/grpc;
      add_trailer grpc-status 8 always;
      add_trailer grpc-message "request body too large: at most {size_text(max_body)}" always;
      return 200 "";
    }}
    location @unavailable {{
      default_type application/grpc;
      add_trailer grpc-status 14 always;
      add_trailer grpc-message "the inference router is not answering (restarting?)" always;
      return 200 "";
    }}
  }}
}}
"""


def prepare(host: str, port: int, upstream: tuple[str, int], max_body: int,
            tls: tuple[str, str] | None = None, client: tuple[str, str, str] | None = None) -> str:
    """A new private folder (0700) holding the :func:`config` of these arguments; its path."""
    folder = nginx.private_folder("aidc-grpc-front-")
    nginx.write_config(folder, config(folder, host, port, upstream, max_body, tls, client))
    return folder
