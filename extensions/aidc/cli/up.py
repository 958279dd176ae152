"""``aidc up``: run the platform in the foreground."""

from __future__ import annotations


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "up",
        parents=[common],
        help="run the platform in the foreground (Ctrl-C stops everything)",
        description="Run the hub, the proxy and the platform services until Ctrl-C or SIGTERM.",
    )
    p.add_argument("--ip", default="127.0.0.1", help="public address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="public port (default 8000)")
    p.add_argument("--hub-port", type=int, help="internal hub API port (default PORT+81)")
    p.add_argument("--proxy-api-port", type=int, help="internal proxy API port (default PORT+1)")
    p.add_argument("--grpc-port", type=int, default=None,
                   help="v2 inference over gRPC (tritonclient.grpc) on this port, on the same "
                        "address as the public port and with its TLS (default PORT+2; 0: off)")
    p.add_argument(
        "--simulated-gpus",
        metavar="N",
        help="GPUs to simulate when the machine has no NVIDIA driver (default 4; always "
        "labelled simulated). A JSON list declares names, memory and MIG layouts.",
    )
    p.add_argument(
        "--db-url",
        metavar="URL",
        help="one database for the whole platform, e.g. postgresql://aidc@dbhost/aidc "
        "(default: SQLite files in the data directory). Remembered (0600) in the data "
        "directory, so later starts need no flag; '-' reads it from standard input, which "
        "keeps a password off the command line (or leave the password to ~/.pgpass)",
    )
    p.add_argument("--tls-cert", metavar="FILE",
                   help="serve the public port over HTTPS with this PEM certificate (with --tls-key); "
                        "HSTS and secure cookies follow")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key (unencrypted)")
    p.add_argument("--tls-self-signed", action="store_true",
                   help="HTTPS with a self-signed certificate made for this machine (a trial: "
                        "browsers warn; the platform's own clients trust it)")
    p.add_argument("--internal-ssl", action="store_true",
                   help="mutual TLS between the hub, the proxy, user servers and services as well "
                        "(JupyterHub's internal_ssl: a private CA in the data directory signs each "
                        "part's certificate; every internal port then refuses plain HTTP and "
                        "clients without a signed certificate)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import os

    from .. import platform

    if args.simulated_gpus is not None:
        os.environ["AIDC_SIMULATED_GPUS"] = args.simulated_gpus

    from ..hub.config import PlatformOptions  # here: imports JupyterHub
    from ..paths import DataDir

    from .keys import check_at_start

    d = DataDir.from_arg(args.data_dir)
    cert, key = _tls_files(args, d)
    check_at_start(d)  # a missing or wrong key-encryption key stops the start here
    options = PlatformOptions(
        data_dir=d,
        ip=args.ip,
        port=args.port,
        hub_port=args.hub_port or args.port + 81,
        proxy_api_port=args.proxy_api_port or args.port + 1,
        grpc_port=args.port + 2 if args.grpc_port is None else args.grpc_port,
        tls_cert=cert,
        tls_key=key,
        internal_ssl=args.internal_ssl,
    )
    db_url = args.db_url
    if db_url == "-":
        import sys

        db_url = sys.stdin.readline().strip()
    return platform.run(options, db_url)


def _tls_files(args, d) -> tuple[str, str]:
    """The certificate and key to serve, checked before anything starts ("" for HTTP)."""
    from pathlib import Path

    from ..errors import UsageError
    from ..security import tls

    if args.tls_self_signed:
        if args.tls_cert or args.tls_key:
            raise UsageError("--tls-self-signed makes its own certificate: leave out --tls-cert and --tls-key")
        d.ensure()
        cert, key = tls.self_signed(d.tls_dir, d.secrets_dir, args.ip)
    elif args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise UsageError("HTTPS needs both --tls-cert FILE and --tls-key FILE")
        cert, key = Path(args.tls_cert).resolve(), Path(args.tls_key).resolve()
    else:
        return "", ""
    tls.check_pair(cert, key)
    return str(cert), str(key)
