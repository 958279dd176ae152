"""A real, throw-away PostgreSQL server for tests: Debian's ``postgresql`` (15) binaries.

:class:`PostgresServer` runs ``initdb`` into a temporary folder (superuser ``aidc`` with
a random password, SCRAM authentication for every connection), then ``postgres`` itself
in the foreground (``pg_ctl start`` would detach it from the test run), listening on
``127.0.0.1:PORT`` only, its Unix socket in the folder, ``fsync`` off (a test database
need not survive a power cut). PostgreSQL refuses to run as root, so as root both run
as the ``postgres`` account (``nobody`` where there is none). ``PR_SET_PDEATHSIG`` and
an ``atexit`` hook stop the server with the test run, even when pytest dies; the
folder is removed afterwards. Install the binaries with ``make test-system-deps``.

    with PostgresServer() as pg:
        url = pg.create_database("aidc")  # postgresql://aidc:PASSWORD@127.0.0.1:PORT/aidc
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: where Debian keeps the binaries (not on PATH unless linked)
DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "aidc"


def binary(name: str) -> str | None:
    """``initdb``, ``postgres``, ... from PATH or Debian's folder."""
    found = shutil.which(name)
    if found:
        return found
    candidate = DEBIAN_BIN / name
    return str(candidate) if candidate.is_file() else None


def available() -> bool:
    return all(binary(n) for n in ("initdb", "postgres"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class PostgresServer:
    """One PostgreSQL server in a temporary folder; :meth:`create_database` gives URLs."""

    def __init__(self):
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None

    # lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "PostgresServer":
        account = None
        if os.geteuid() == 0:
            name = "postgres" if _exists("postgres") else "nobody"
            account = pwd.getpwnam(name)
        self.workdir = Path(tempfile.mkdtemp(prefix="aidc-pg-"))
        self.workdir.chmod(0o700)
        if account is not None:
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
        as_account = {} if account is None else {
            "user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        pwfile = self.workdir / "pw"
        pwfile.write_text(self.password + "\n")
        if account is not None:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
        subprocess.run(
            [binary("initdb"), "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, env=env, cwd=self.workdir, timeout=timeout, **as_account)
        pwfile.unlink()
        atexit.register(self.stop)
        log = open(self.workdir / "postgres.log", "ab")
        # the foreground server, so that it dies with the test run (pg_ctl would detach it)
        self.proc = subprocess.Popen(
            [binary("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            preexec_fn=_die_with_parent, **as_account)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not answer in {timeout}s:\n{self.log()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (SIGINT: ``pg_ctl stop -m fast``; SIGKILL if it lingers); remove the folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what `pg_ctl stop -m fast` sends
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # use ---------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def log(self) -> str:
        try:
            return (self.workdir / "postgres.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={self.password} dbname={database}"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` (with the password)."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` through the server's Unix socket: how a platform
        on the database's own machine connects (no TCP stack, fewer wake-ups per query)."""
        return f"postgresql://{SUPERUSER}:{self.password}@/{database}?host={self.workdir}&port={self.port}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; returns its URL."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _exists(account: str) -> bool:
    try:
        pwd.getpwnam(account)
        return True
    except KeyError:
        return False


def hammer_ledger(url: str, worker: int, rounds: int, fast: bool) -> None:
    """One of several processes deciding at once on one ledger (run with ``spawn``: this
    module imports quickly, unlike a test module)."""
    from aidc.gpu.ledger import GPULedger

    ledger = GPULedger(db_url=url, node="n1", driver_fast_path=fast)
    for i in range(rounds):
        holder = f"job:{worker}-{i}"
        ledger.request(holder, f"u{worker}", 1 + i % 2)
        ledger.poll(holder)
        if i % 3:
            ledger.release(holder)
