"""Where aidc keeps things: the data directory and the files shipped with the project.

All platform state lives in one data directory (``./.aidc`` by default) so that a
deployment is backed up, moved or wiped as one folder. Secrets in it are 0600 and the
directory itself 0700: user accounts never need to read it.
"""

from __future__ import annotations

import logging.handlers
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PlatformError

DEFAULT_DATA_DIR = ".aidc"

#: the data directory as ``aidc up`` hands it to the hub and the services it starts
DATA_DIR_ENV = "AIDC_DATA_DIR"
#: the platform database URL as ``aidc up`` hands it to the hub and the services it
#: starts (their environment is private to the platform account, unlike a command line)
DB_URL_ENV = "AIDC_DB_URL"


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (no window where it is readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


#: a platform log file rotates at this size (``AIDC_LOG_MAX_BYTES``), keeping
#: ``AIDC_LOG_BACKUPS`` older files (``hub.log.1`` ...)
DEFAULT_LOG_MAX_BYTES = 10 * 2**20
DEFAULT_LOG_BACKUPS = 5


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


def log_rotation() -> dict:
    """``maxBytes`` and ``backupCount`` of the platform's log files (from the environment)."""
    return {"maxBytes": _env_int("AIDC_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES),
            "backupCount": _env_int("AIDC_LOG_BACKUPS", DEFAULT_LOG_BACKUPS)}


class PrivateFileHandler(logging.handlers.RotatingFileHandler):
    """A log file only the platform's account can read: created 0600, kept 0600.

    Platform logs name people and addresses. The file is opened with mode 0600 from
    the start (no readable window), a file left readable by an older version is made
    0600 when opened, and each file that rotation starts is 0600 too. ``maxBytes=0``
    (the default) never rotates, as :class:`logging.FileHandler`.
    """

    def _open(self):  # noqa: D401 - logging API
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


@dataclass(frozen=True)
class DataDir:
    """The layout of one platform's data directory."""

    root: Path

    @classmethod
    def from_arg(cls, value: str | os.PathLike | None) -> "DataDir":
        """Resolve ``--data-dir`` (or ``$AIDC_DATA_DIR``, or ``./.aidc``) to an absolute path."""
        raw = value or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
        return cls(Path(raw).expanduser().resolve())

    # files -------------------------------------------------------------
    @property
    def hub_db(self) -> Path:
        return self.root / "jupyterhub.sqlite"

    @property
    def hub_db_url(self) -> str:
        """JupyterHub's own tables: in the platform database, or ``jupyterhub.sqlite``."""
        return self.db_url("jupyterhub.sqlite")

    @property
    def db_url_file(self) -> Path:
        """The platform database URL chosen with ``aidc up --db-url`` or ``c.Platform.db_url``
        (0600: it may hold a password)."""
        return self.secrets_dir / "db-url"

    def configured_db_url(self) -> str | None:
        """The one database chosen for the platform (e.g. ``postgresql://...``), or None: SQLite files.

        The hub and the services it starts read it from ``$AIDC_DB_URL``; every other
        process of the platform account (the CLI offline, benchmarks) from the data
        directory, where ``aidc up`` stored it.
        """
        url = os.environ.get(DB_URL_ENV, "").strip()
        if not url:
            try:
                url = self.db_url_file.read_text().strip()
            except OSError:
                return None
        return url or None

    def db_url(self, sqlite_file: str = "aidc.sqlite") -> str:
        """The SQLAlchemy URL a store of the platform keeps its tables at.

        Every store (the hub, the GPU ledger, jobs, the model registry, and any later
        one) asks here: with a database server set they all share it (each store with
        its own table names and alembic version table); without one each keeps the
        SQLite file ``sqlite_file`` in the data directory (``aidc.sqlite`` is the one
        the ledger and the model registry share).
        """
        return self.configured_db_url() or f"sqlite:///{self.root / sqlite_file}"

    @property
    def cookie_secret(self) -> Path:
        return self.root / "jupyterhub_cookie_secret"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def cli_token_file(self) -> Path:
        """API token of the ``aidc-cli`` service: how the CLI talks to a running hub."""
        return self.secrets_dir / "cli-token"

    @property
    def initial_admin_password(self) -> Path:
        return self.root / "initial-admin-password"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tls_dir(self) -> Path:
        """The self-signed certificate ``aidc up --tls-self-signed`` made (its key stays in
        ``secrets/``)."""
        return self.root / "tls"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.jsonl"

    @property
    def hub_log(self) -> Path:
        return self.logs / "hub.log"

    def service_log(self, name: str) -> Path:
        """The log file of the platform service ``name`` (``logs/jobs.log``)."""
        return self.logs / f"{name}.log"

    @property
    def state_file(self) -> Path:
        """Written by ``aidc up`` while it runs: its PID and the hub's URLs."""
        return self.root / "platform.json"

    @property
    def proxy_pid_file(self) -> Path:
        return self.root / "proxy.pid"

    @property
    def config_d(self) -> Path:
        """Drop-in hub configuration (``*.py``, loaded in name order after the defaults)."""
        return self.root / "config.d"

    @property
    def dev_homes(self) -> Path:
        """Per-user home folders in the shared-account development mode (not root)."""
        return self.root / "homes"

    @property
    def dev_password_file(self) -> Path:
        return self.secrets_dir / "dev-shared-password"

    @property
    def jobs_artifacts(self) -> Path:
        """Job input snapshots and output notebooks (default of ``c.ArtifactStore.url``)."""
        return self.root / "jobs" / "artifacts"

    @property
    def jobs_scratch(self) -> Path:
        """The embedded Dask workers' scratch (spilled data, a running job's output being
        written): private to the service's account, where no other account can plant it
        (not the shared ``/tmp/dask-scratch-space``). Dask removes a dead worker's folder
        when the next worker starts."""
        return self.root / "jobs" / "scratch"

    @property
    def models_artifacts(self) -> Path:
        """Model files (default of ``c.ModelRegistry.artifacts_url``)."""
        return self.root / "models" / "artifacts"

    @property
    def models_cache(self) -> Path:
        """Local copies of model files kept in a remote artifact store."""
        return self.root / "models" / "cache"

    # setup -------------------------------------------------------------
    def ensure(self) -> "DataDir":
        """Create the directory tree with private permissions."""
        try:
            for d in (self.root, self.secrets_dir, self.logs, self.config_d):
                d.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            os.chmod(self.secrets_dir, 0o700)
        except OSError as e:
            raise PlatformError(
                f"cannot use the data directory {self.root}: {e.strerror} ({e.filename}); "
                "choose another with --data-dir"
            ) from None
        return self

    def secret(self, path: Path, nbytes: int = 32) -> str:
        """Return the secret stored at ``path``, creating it (0600) on first use."""
        if path.exists():
            return path.read_text().strip()
        value = secrets.token_hex(nbytes)
        self.ensure()
        _write_private(path, value + "\n")
        return value

    def write_private(self, path: Path, text: str) -> None:
        _write_private(path, text)


def data_dir() -> DataDir:
    """The data directory of the platform this process belongs to: every module asks here.

    ``aidc up`` sets ``$AIDC_DATA_DIR`` for the hub and every service it starts; other
    processes (the CLI, a benchmark) get ``./.aidc``, as ``--data-dir`` does.
    """
    return DataDir.from_arg(None)


def platform_data_dir() -> DataDir | None:
    """The data directory of the platform that started this process, or None outside one.

    For what only a platform process does (write the audit log and service logs, tell the
    platform's own Unix accounts from others): the CLI or a test importing the same code
    must not write into ``./.aidc`` by accident.
    """
    raw = os.environ.get(DATA_DIR_ENV)
    return DataDir.from_arg(raw) if raw else None


def project_root() -> Path | None:
    """The source checkout aidc runs from, if it runs from one (editable install)."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "hub_config" / "jupyterhub_config.py").exists():
        return candidate
    return None


def share_dir() -> Path:
    """Folder holding ``hub_config/`` and ``templates/``: the checkout, or the wheel's data."""
    root = project_root()
    if root is not None:
        return root
    installed = Path(sys.prefix) / "share" / "aidc"
    if (installed / "hub_config").exists():
        return installed
    raise PlatformError(
        "aidc cannot find its hub configuration (hub_config/jupyterhub_config.py). "
        "Reinstall aidc with `make install`."
    )


def hub_config_file() -> Path:
    return share_dir() / "hub_config" / "jupyterhub_config.py"


def templates_dir() -> Path:
    return share_dir() / "templates"


def venv_bin() -> Path:
    """The ``bin`` folder of the Python environment aidc runs in."""
    return Path(sys.executable).parent


def find_proxy_command() -> str:
    """Locate configurable-http-proxy: the project's local npm install first, then PATH."""
    root = project_root()
    candidates = []
    if root is not None:
        candidates.append(root / "node_modules" / ".bin" / "configurable-http-proxy")
    candidates.append(Path(sys.prefix) / "share" / "aidc" / "node_modules" / ".bin" / "configurable-http-proxy")
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    raise PlatformError(
        "configurable-http-proxy is not installed. Run `make install` (it installs it "
        "locally with npm), or `npm install configurable-http-proxy` and put it on PATH."
    )
