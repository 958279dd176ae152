"""One event stream for security-relevant actions, built on jupyter-events.

Every process of the platform (the hub, the ``aidc`` CLI, later the services) records
through :func:`record`, which validates the event against a versioned schema in
``schemas/`` and appends one JSON line to ``<data-dir>/logs/audit.jsonl`` as a link of a
hash chain with signed checkpoints (:mod:`aidc.security.chain`: ``aidc audit verify``). Each line
carries ``actor``, ``action``, ``target``, ``result`` and jupyter-events'
``__timestamp__`` (RFC 3339, UTC: ``2026-12-02T04:52:30.615874Z``) and
``__schema_version__``.

New kinds of event are a new schema file plus a name in :data:`SCHEMAS`; the log file
and its format stay the same for every producer, so the chain covers all of them.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..paths import platform_data_dir
from .chain import ChainedLog, iter_lines

if TYPE_CHECKING:
    from jupyter_events import EventLogger

SCHEMA_DIR = Path(__file__).parent / "schemas"
BASE_ID = "https://aidc.dev/events/security/"

#: short name -> schema file; ``record("auth", ...)`` etc.
SCHEMAS = {"auth": "auth.yaml", "user": "user.yaml", "server": "server.yaml",
           "job": "job.yaml", "dataset": "dataset.yaml", "model": "model.yaml", "gpu": "gpu.yaml",
           "access": "access.yaml", "secret": "secret.yaml", "key": "key.yaml"}
#: the hub scope that lets a platform service's token add events (:mod:`aidc.hub.audit_api`)
WRITE_SCOPE = "custom:aidc-audit:write"
#: the kinds services report (through the hub's writer; ``server``: the GPU culler stopping
#: one); sign-ins and user changes only the hub and the CLI write
SERVICE_KINDS = frozenset({"job", "dataset", "model", "gpu", "access", "server", "secret"})

log = logging.getLogger("aidc.audit")

_loggers: dict[str, EventLogger] = {}


def _skip_iri_grammar() -> None:
    """Before jupyter-events is imported (on first use): it brings jsonschema's format
    checkers, and one of them, rfc3987-syntax, compiles a grammar at import (about 0.75 s of
    every `aidc user ...` call and every platform start) to check the "iri" format, which no
    audit schema uses: jsonschema skips that check without it."""
    sys.modules.setdefault("rfc3987_syntax", None)  # None: "import" fails at once


def _event_logger(path: Path) -> EventLogger:
    key = str(path)
    if key not in _loggers:
        _skip_iri_grammar()
        from jupyter_events import EventLogger

        path.parent.mkdir(parents=True, exist_ok=True)
        logger = EventLogger(handlers=[ChainHandler(ChainedLog(path, audit_key_path(path)))])
        for filename in SCHEMAS.values():
            logger.register_event_schema(SCHEMA_DIR / filename)
        _loggers[key] = logger
    return _loggers[key]


class ChainHandler(logging.Handler):
    """Where jupyter-events hands each validated event: a link of the audit chain."""

    def __init__(self, chain: ChainedLog):
        super().__init__()
        self.chain = chain

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D401 - logging API
        try:
            self.chain.append(dict(record.msg))
        except Exception:  # pragma: no cover - a full disk, a lost data directory
            self.handleError(record)


def audit_key_path(log_path: Path) -> Path:
    """The key that signs the chain's head and checkpoints: ``<data-dir>/secrets/audit-key``."""
    return log_path.parent.parent / "secrets" / "audit-key"


def audit_log_path() -> Path | None:
    """The audit log of the platform this process belongs to (None outside one)."""
    data_dir = platform_data_dir()
    return data_dir.audit_log if data_dir else None


def cli_actor() -> str:
    """The actor recorded for changes made with the ``aidc`` command."""
    return f"cli:{getpass.getuser()}"


def check(kind: str, data: dict[str, Any]) -> str | None:
    """Why ``data`` is not a valid event of ``kind`` (None when it is)."""
    if kind not in SCHEMAS:
        return f"unknown kind of event {kind!r}"
    if kind not in _schemas:
        _skip_iri_grammar()
        from jupyter_events.schema import EventSchema

        _schemas[kind] = EventSchema(SCHEMA_DIR / SCHEMAS[kind])
    try:
        _schemas[kind].validate({k: v for k, v in data.items() if v is not None})
    except Exception as e:  # jsonschema's ValidationError: its message names the field
        return getattr(e, "message", None) or str(e)
    return None


_schemas: dict[str, Any] = {}


def in_service() -> str | None:
    """The name of the hub-managed service this process is (None in the hub or the CLI)."""
    return os.environ.get("JUPYTERHUB_SERVICE_NAME") or None


def record(kind: str, path: Path | None = None, **data: Any) -> None:
    """Record one audit event of ``kind`` (``auth``, ``user``, ``server``, ``job``, ...).

    ``path`` defaults to the current platform's audit log. In a platform service the event
    goes to the hub's writer instead (:class:`aidc.security.sender.HubSender`): services never
    open the log. Recording never raises into the caller's action: an event that fails
    validation is a bug, logged loudly.
    """
    if path is None and in_service():
        from .sender import hub_sender

        clean = {k: v for k, v in data.items() if v is not None}
        problem = check(kind, clean)
        if problem:
            log.error("audit event %s %s not sent: %s", kind, clean, problem)
            return
        hub_sender().send(kind, clean)
        return
    path = path or audit_log_path()
    if path is None:
        log.warning("no AIDC_DATA_DIR: audit event %s %s not recorded", kind, data)
        return
    clean = {k: v for k, v in data.items() if v is not None}
    # jupyter-events writes ``timestamp.isoformat() + "Z"``: an aware time would give
    # "...+00:00Z", which is not RFC 3339 (datetime.fromisoformat and log tools refuse
    # it). A naive UTC time gives "2026-12-02T04:52:30.615874Z".
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    try:
        _event_logger(path).emit(schema_id=BASE_ID + kind, data=clean, timestamp_override=now)
    except Exception:  # pragma: no cover - a schema mismatch is a programming error
        log.exception("could not record audit event %s %s", kind, clean)


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events of an audit log, oldest first, rotated files included (for the CLI,
    tests and dashboards)."""
    return [json.loads(line) for _, _, line in iter_lines(path)]
