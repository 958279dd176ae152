"""``aidc up``: prepare the data directory, then run JupyterHub in the foreground.

The hub process is this process (:class:`aidc.hub.app.PlatformHub`, JupyterHub with
services started side by side). JupyterHub itself starts configurable-http-proxy and
the managed services, and on Ctrl-C or SIGTERM stops every user server, every service
and the proxy (``cleanup_servers`` / ``cleanup_proxy``) before exiting.

The platform database is chosen here, once per start (:func:`choose_database`), and
handed to the hub and its services as ``$AIDC_DB_URL``; every store then finds it
through :meth:`aidc.paths.DataDir.db_url`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from traitlets import Integer, Unicode
from traitlets.config import Config, Configurable, PyFileConfigLoader

from .db import redacted
from .errors import PlatformError
from . import accounts
from .hub.config import PlatformOptions
from .hub.directory import DatabaseDirectory, running_platform
from .hub.users import INITIAL_ADMIN, PlatformUsers
from .paths import DB_URL_ENV, DataDir, hub_config_file, project_root
from .security.internal_tls import certs_dir, hub_files

DEV_MODE_WARNING = """\
WARNING: aidc is not running as root, so it runs in shared-account development mode:
every user's server runs as {account}, with no isolation between users, and everyone
signs in with the shared password in {password_file}. Run `make up` as root for real
per-user Unix accounts."""


class Platform(Configurable):
    """Settings of the platform as a whole (``c.Platform.*`` in a ``config.d`` drop-in)."""

    db_url = Unicode(
        "",
        help="""SQLAlchemy URL of the one database of the platform, e.g.
        `postgresql://aidc@db.example.org/aidc` (the password, if the URL has one, is kept
        0600 in the data directory and never logged; libpq's ~/.pgpass works too). The
        hub, the GPU ledger, the jobs store, the model registry and later stores all keep
        their tables there. Empty (default): SQLite files in the data directory.
        `aidc up --db-url` overrides it.""",
    ).tag(config=True)

    gpu_shares = Unicode(
        "",
        help="""GPUs offered as time-sliced shares, `"INDEX=N,..."`: `"3=4"` makes GPU 3 four
        shares (kind `share`). Empty (default): `$AIDC_GPU_SHARES`, else every GPU whole.""",
    ).tag(config=True)

    log_max_bytes = Integer(
        None,
        allow_none=True,
        help="""Size at which a platform log file (hub.log, each service's log) rotates; 0:
        never. Default: `$AIDC_LOG_MAX_BYTES`, else 10 MiB.""",
    ).tag(config=True)

    log_backups = Integer(
        None,
        allow_none=True,
        help="""Rotated log files kept (`hub.log.1` ...). Default: `$AIDC_LOG_BACKUPS`, else 5.""",
    ).tag(config=True)

    def environment(self) -> dict[str, str]:
        """What is configured here for the hub and the services it starts, which read it
        from their environment (``aidc.gpu.platform.shares_spec``, ``aidc.paths.log_rotation``)."""
        env = {"AIDC_GPU_SHARES": self.gpu_shares or None,
               "AIDC_LOG_MAX_BYTES": self.log_max_bytes, "AIDC_LOG_BACKUPS": self.log_backups}
        return {k: str(v) for k, v in env.items() if v is not None}


def drop_in_config(d: DataDir) -> Config:
    """The configuration of ``<data-dir>/config.d/*.py`` as the hub will load it."""
    config = Config()
    for path in sorted(d.config_d.glob("*.py")):
        config.merge(PyFileConfigLoader(path.name, path=str(path.parent)).load_config())
    return config


def choose_database(d: DataDir, db_url: str | None = None,
                    settings: Platform | None = None) -> str | None:
    """The platform database for this start: ``--db-url``, else ``c.Platform.db_url``,
    else the one chosen at an earlier start; None: SQLite files (the default).

    A chosen URL is checked to answer, stored 0600 in the data directory (so the CLI and
    later starts find it without a password on their command line), and put in this
    process's ``$AIDC_DB_URL``, which the hub passes on to the services it starts.
    """
    settings = settings or Platform(config=drop_in_config(d))
    url = (db_url or "").strip() or settings.db_url.strip()
    if url:
        import sqlalchemy as sa

        try:
            sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            raise PlatformError(
                "the database URL is not an SQLAlchemy URL; write it as "
                "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ) from None
        check_database(url)
        d.ensure()
        if d.configured_db_url() != url or not d.db_url_file.exists():
            d.write_private(d.db_url_file, url + "\n")
        os.environ[DB_URL_ENV] = url
    else:
        url = d.configured_db_url()
        if url:
            check_database(url)
            os.environ[DB_URL_ENV] = url
    return url


def check_database(url: str) -> None:
    """Refuse to start on a database that does not answer (its password never shown)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 - any driver error is the user's to read
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        password = sa.engine.make_url(url).password
        if password:
            reason = reason.replace(str(password), "***")
        raise PlatformError(
            f"cannot use the platform database {redacted(url)}: {reason}"
        ) from None
    finally:
        engine.dispose()


def _check_port_free(ip: str, port: int, what: str, flag: str = "--port") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip or "0.0.0.0", port))
        except OSError as e:
            raise PlatformError(
                f"cannot start: {what} port {port} on {ip or '0.0.0.0'} is in use ({e.strerror}); "
                f"choose another with {flag}"
            ) from None


def stop_orphaned_proxy(d) -> None:
    """A proxy left running by a hub that was killed (SIGKILL, power loss) is ours to stop.

    Its routes are rebuilt by the new hub; user servers are left running and reattached.
    """
    try:
        pid = int(d.proxy_pid_file.read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return
    if "configurable-http-proxy" not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.1)
    print(f"stopped the proxy (pid {pid}) left by the previous run", flush=True)


def _server_alive(state: dict) -> bool:
    """Local servers: is their process running? Others (state without a pid): assume so.

    A server with no state at all never finished starting.
    """
    if not state:
        return False
    pid = state.get("pid")
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runtime_paths() -> list[Path]:
    """What user accounts must reach to run their servers: the Python env and the code."""
    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent]
    root = project_root()
    if root is not None:
        paths.append(root / "extensions")
    return paths


def prepare(options: PlatformOptions, db_url: str | None = None) -> str | None:
    """Everything before the hub starts; returns the admin password on first run only.

    ``db_url``: the platform database asked for on the command line (see
    :func:`choose_database`).
    """
    from .gpu.platform import shares_spec, simulated_spec

    settings = Platform(config=drop_in_config(options.data_dir))
    os.environ.update(settings.environment())  # this process (the hub) and its services
    simulated_spec(), shares_spec()  # bad GPU settings are refused before anything is made
    d = options.data_dir.ensure()
    state = running_platform(d)
    if state is not None:
        raise PlatformError(
            f"the platform in {d.root} is already running (pid {state['pid']}, {state['url']})"
        )
    choose_database(d, db_url, settings)
    stop_orphaned_proxy(d)
    _check_port_free(options.ip, options.port, "the public")
    _check_port_free("127.0.0.1", options.hub_port, "the hub's", "--hub-port")
    _check_port_free("127.0.0.1", options.proxy_api_port, "the proxy API", "--proxy-api-port")
    if options.grpc_port:
        _check_port_free(options.ip, options.grpc_port, "the gRPC inference", "--grpc-port (0: none)")
    if accounts.running_as_root():
        accounts.ensure_group()
        accounts.grant_runtime_access(runtime_paths())
    users = PlatformUsers(d, DatabaseDirectory(d.hub_db_url))
    password = users.ensure_initial_admin()
    prepare_gpus(options)
    return password


def prepare_gpus(options: PlatformOptions) -> None:
    """Sync the ledger with the GPUs now present; free what dead servers held.

    Servers the hub records as running whose process is alive keep their GPUs; claims
    of servers that died while the hub was down, and of servers the hub does not know
    as running (e.g. a spawn cut short by a hub crash), are released. (The hub, as it
    starts, forgets dead servers without stopping them, so this is the place.)
    """
    from jupyterhub import orm

    from .gpu.platform import detect_and_sync, open_ledger

    d = options.data_dir
    ledger = open_ledger(d.root)
    inventory = detect_and_sync(ledger)
    db = orm.new_session_factory(d.hub_db_url)()
    try:
        running = {
            f"server:{s.user.name}/{s.name}"
            for s in db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None))
            if _server_alive(s.state or {})
        }
    finally:
        db.close()
    freed = ledger.reconcile(running, "server")
    kind = "SIMULATED" if inventory.simulated else "NVML"
    print(f"GPUs ({kind}): {len(inventory.devices)} devices, {len(inventory.units())} allocatable units"
          + (f"; released the GPUs of {len(freed)} servers that are gone" if freed else ""), flush=True)


def banner(options: PlatformOptions, password: str | None) -> str:
    d = options.data_dir
    lines = [f"aidc is starting on {options.public_url}  (data: {d.root})"]
    if options.tls_cert:
        from .security.tls import bundle_path

        lines.append(f"HTTPS with {options.tls_cert}; clients on this host trust it with "
                     f"REQUESTS_CA_BUNDLE={bundle_path(d.root)}")
    if options.grpc_port:
        host = "127.0.0.1" if options.ip in ("", "0.0.0.0") else options.ip
        lines.append(f"v2 inference over gRPC on {host}:{options.grpc_port} "
                     f"({'TLS' if options.tls_cert else 'plain'}; a hub token in 'authorization')")
    if options.internal_ssl:
        lines.append(f"internal TLS: hub, proxy, servers and services speak mutual TLS "
                     f"(authorities in {certs_dir(d.root)})")
    if d.configured_db_url():
        lines.append(f"database: {redacted(d.configured_db_url())}")
    if not accounts.running_as_root():
        import getpass

        lines.append(DEV_MODE_WARNING.format(account=getpass.getuser(), password_file=d.dev_password_file))
    if password is not None:
        lines += [
            "",
            "First start: an administrator account was created.",
            f"  user:     {INITIAL_ADMIN}",
            f"  password: {password}",
            f"(also in {d.initial_admin_password}, readable only by this account;"
            " it is not shown again)",
        ]
    return "\n".join(lines)


def run(options: PlatformOptions, db_url: str | None = None) -> int:
    """Run the platform in the foreground until Ctrl-C or SIGTERM."""
    password = prepare(options, db_url)
    print(banner(options, password), flush=True)
    os.environ.update(options.to_env())
    d = options.data_dir
    d.write_private(
        d.state_file,
        json.dumps(
            {
                "pid": os.getpid(),
                "url": options.public_url,
                "hub_api_url": options.hub_api_url,
                # the aidc command's client certificate for the hub's API (internal TLS)
                **({"internal_ssl": hub_files(d.root).as_dict()} if options.internal_ssl else {}),
                "started": time.time(),
            }
        ),
    )
    from .hub.app import PlatformHub

    try:
        PlatformHub.launch_instance(argv=["-f", str(hub_config_file())])
    finally:
        try:
            d.state_file.unlink()
        except FileNotFoundError:
            pass
    return 1 if PlatformHub.initialized() and PlatformHub.instance().failed else 0
