"""Audit what is changed through JupyterHub's own REST API and admin page.

aidc's own paths record their events where they act (sign-in, the spawner, ``aidc user``),
but JupyterHub's REST API, which its admin page uses, can add and remove users, change who
is an admin, move users between groups (aidc's roles are groups) and issue tokens without
passing through any of them. Every request to the hub ends in tornado's ``log_function``, so
aidc wraps JupyterHub's own (:func:`jupyterhub.log.log_request`, still called first) and
records, for the hub's API:

- a change that succeeded: ``user`` events (``add``, ``remove``, ``set-role``,
  ``issue-token``), with the caller as actor;
- a refusal given to someone signed in (403, aidc's own hub API included; 404 to a change
  of a user, group or token, or to a read of another user): an ``access`` event.

Beyond its API, the hub refuses people other users' servers itself when a request for one
reaches it (``/hub/user/NAME/...``: the server is stopped, or not yet in the proxy) and when a
browser asks it to sign in to a server or service it may not use (403 from the OAuth
``authorize`` page): those are ``access`` events too. A running server's own refusals are
reported by the server (:mod:`aidc.lab`, checked by :mod:`aidc.hub.audit_api`).

Requests made by the ``aidc`` CLI's service token are skipped: the CLI records them itself,
with the Unix account that ran it. Server starts and stops are recorded by the spawner.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

from jupyterhub.log import log_request

from ..security import audit
from .config import CLI_SERVICE

#: (method, path below /hub/api) -> action, and the group of the path naming the target
_CHANGES = [
    ("POST", re.compile(r"^/users/([^/]+)/tokens$"), "issue-token"),
    ("POST", re.compile(r"^/users/([^/]+)$"), "add"),
    ("POST", re.compile(r"^/users$"), "add"),
    ("DELETE", re.compile(r"^/users/([^/]+)$"), "remove"),
    ("PATCH", re.compile(r"^/users/([^/]+)$"), "set-role"),
    ("POST", re.compile(r"^/groups/([^/]+)/users$"), "set-role"),
    ("DELETE", re.compile(r"^/groups/([^/]+)/users$"), "set-role"),
]
_WATCHED = re.compile(r"^/(users|groups|tokens|aidc)(/|$)")
#: below the base URL: a user's server as the hub answers it, and the OAuth sign-in page
_SERVER_URL = re.compile(r"^(?:hub/)?user/([^/]+)(/|$)")
_AUTHORIZE = "hub/api/oauth2/authorize"


def caller_of(handler) -> str | None:
    """Who made the request, as far as the hub already knows (no new lookup)."""
    who = getattr(handler, "_jupyterhub_user", None)
    if who is None:
        return None
    # JupyterHub's User wrapper and orm.Service both say which they are in ``kind``
    return f"service:{who.name}" if getattr(who, "kind", "user") == "service" else who.name


def _body(handler) -> dict:
    try:
        body = json.loads(handler.request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _targets(match: re.Match, body: dict) -> list[str]:
    pattern = match.re.pattern
    if pattern.startswith("^/users/"):  # the user named in the path
        return [unquote(match.group(1))]
    users = body.get("usernames" if pattern == "^/users$" else "users") or []
    return [str(u) for u in users] if isinstance(users, list) else []


def _detail(action: str, method: str, match: re.Match, body: dict) -> str | None:
    if action != "set-role":
        return None
    if match.re.pattern.startswith("^/groups"):
        return f"{'added to' if method == 'POST' else 'removed from'} group {unquote(match.group(1))}"
    changed = {k: body[k] for k in ("admin", "name") if k in body}
    return f"changed {json.dumps(changed, sort_keys=True)}" if changed else None


def _someone_else(path: str, caller: str) -> bool:
    """Whether ``path`` is about another user than ``caller`` (a read of theirs refused)."""
    match = re.match(r"^/users/([^/]+)", path)
    return match is not None and unquote(match.group(1)) != caller


def audit_request(handler) -> None:
    """Tornado's ``log_function`` for the hub: JupyterHub's log line, then the audit."""
    log_request(handler)
    try:
        _audit(handler)
    except Exception:  # the audit of a request must never break the hub's logging
        audit.log.exception("could not audit %s %s", handler.request.method, handler.request.path)


def _refused_elsewhere(handler, below_base: str) -> None:
    """A refusal outside the hub's API: another user's server, or a sign-in to it."""
    status = handler.get_status()
    if status not in (403, 404):
        return
    server = _SERVER_URL.match(below_base)
    if server is None and not below_base.startswith(_AUTHORIZE):
        return
    caller = caller_of(handler)
    if caller is None or (server is not None and unquote(server.group(1)) == caller):
        return  # anonymous (sent to sign in), or a 404 inside one's own server
    request = handler.request
    audit.record("access", actor=caller, action="refused", target=f"{request.method} {request.path}",
                 result="failure", status=status, remote_ip=request.remote_ip, service="hub")


def _audit(handler) -> None:
    request = handler.request
    base = handler.settings.get("base_url", "/")
    prefix = base + "hub/api"
    if not request.path.startswith(prefix) or request.path.startswith(base + _AUTHORIZE):
        if request.path.startswith(base):
            _refused_elsewhere(handler, request.path[len(base):])
        return
    path = request.path[len(prefix):]
    if not _WATCHED.match(path):
        return
    caller = caller_of(handler)
    if caller is None or caller == f"service:{CLI_SERVICE}":
        return
    status = handler.get_status()
    method = request.method
    if status == 403 or (status == 404 and (method != "GET" or _someone_else(path, caller))):
        audit.record("access", actor=caller, action="refused", target=f"{method} {request.path}",
                     result="failure", status=status, remote_ip=request.remote_ip, service="hub")
        return
    if status >= 300:
        return
    for verb, pattern, action in _CHANGES:
        match = pattern.match(path)
        if verb != method or match is None:
            continue
        body = _body(handler)
        detail = _detail(action, method, match, body)
        for target in _targets(match, body) or ["?"]:
            audit.record("user", actor=caller, action=action, target=target, result="success",
                         reason=detail)
        return
