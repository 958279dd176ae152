"""``aidc audit verify`` and ``aidc audit query``: the audit log, for reviews.

Both read the platform's files directly (``<data-dir>/logs/audit*.jsonl``, readable only
by the platform's account), as an auditor on the machine does; neither needs the platform
to be running. ``verify`` walks the hash chain and the signed checkpoints
(:mod:`aidc.security.chain`) and exits 1 naming the first record that was edited, deleted,
inserted or reordered, or where the log was cut.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from ..errors import AidcError, UsageError
from .parsing import CommandGroup


class AuditLogUnreadable(AidcError):
    """The audit log exists but this account may not read it."""


def add_parser(sub, common) -> None:
    group = CommandGroup(sub, "audit", "check and search the platform's audit log", common)
    group.action("verify", "check that no record was edited, deleted, inserted or reordered", verify)
    q = group.action("query", "list audit events, oldest first", query)
    q.add_argument("--user", help="events by or about this user (actor or target)")
    q.add_argument("--action", help="only this action (login, add, start, stop, ...)")
    q.add_argument("--since", metavar="TIME", help="from this time (ISO 8601 or epoch seconds)")
    q.add_argument("--until", metavar="TIME", help="up to this time (ISO 8601 or epoch seconds)")
    q.add_argument("--json", action="store_true", help="one JSON object per line")


def _log_path(args):
    from ..paths import DataDir

    return DataDir.from_arg(args.data_dir).audit_log


def _readable(call):
    try:
        return call()
    except PermissionError as e:
        raise AuditLogUnreadable(f"cannot read {e.filename}: the audit log is readable only by the "
                                 "platform's account (run as that account, usually root)") from None


def verify(args) -> int:
    from ..security.audit import audit_key_path
    from ..security.chain import verify as walk

    path = _log_path(args)
    key_path = audit_key_path(path)
    if not key_path.exists():
        if not path.exists():
            print(f"no audit log at {path}: nothing to verify")
            return 0
        raise AidcError(f"the audit key {key_path} is missing: the log's signatures cannot be checked")
    verdict = _readable(lambda: walk(path, key_path.read_text().strip().encode()))
    if verdict.ok:
        print(f"audit log OK: {verdict.records} records, chain intact, "
              f"{verdict.checkpoints} signed checkpoint(s) and the signed head match")
        return 0
    print(f"audit log TAMPERED: {verdict.problem} ({verdict.records} records read)")
    return 1


def _moment(raw: str | None, name: str) -> float | None:
    if raw is None:
        return None
    from ..services.fields import time_text

    return time_text(raw, name)


def _when(event: dict) -> float:
    return datetime.fromisoformat(event["__timestamp__"].replace("Z", "+00:00")).timestamp()


def _about(event: dict, user: str) -> bool:
    target = str(event.get("target") or "")
    return event.get("actor") == user or target == user or target.split("/", 1)[0] == user


def query(args) -> int:
    from ..security.audit import read_events

    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    if since is not None and until is not None and since > until:
        raise UsageError("--since must not be after --until")
    shown = 0
    for event in _readable(lambda: read_events(_log_path(args))):
        if args.user and not _about(event, args.user):
            continue
        if args.action and event.get("action") != args.action:
            continue
        t = _when(event)
        if (since is not None and t < since) or (until is not None and t > until):
            continue
        shown += 1
        if args.json:
            print(json.dumps(event, sort_keys=True))
        else:
            moment = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            extra = {k: v for k, v in event.items()
                     if not k.startswith("__") and k not in ("actor", "action", "target", "result")}
            tail = " " + json.dumps(extra, sort_keys=True) if extra else ""
            print(f"{moment}Z  {event.get('actor', '-'):<16} {event.get('action', '-'):<10} "
                  f"{event.get('target', '-'):<16} {event.get('result', '-')}{tail}")
    if not shown and not args.json:
        print("no matching audit events")
    return 0
