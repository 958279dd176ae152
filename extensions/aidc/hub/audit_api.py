"""``POST /hub/api/aidc/audit``: the one writer of the audit log, for the services.

Services (jobs, models, data, ...) do not open the audit log: they send their events here
with their own hub token (:class:`aidc.security.audit.HubSender`). The hub validates each
event against its schema and appends it to the chain with ``service`` set to the name of the
token's service, whatever the body says. So a compromised service can add events in its own
name, and nothing else: it cannot write as the hub, as another service, or touch the lines
already written (the log and its key are the hub's files).

Only tokens with the custom scope :data:`SCOPE` may post (every platform service's role has
it, see :mod:`aidc.services.declare`); the hub's own kinds (``auth``, ``user``, ``server``)
are refused here, as they are recorded by the hub itself.

``POST /hub/api/aidc/audit/refusals`` is the one way in for users' own servers, which run as
their user's Unix account with a token of that user (which the user's kernels can read): a
server reports the requests it refused to *another* signed-in caller (:mod:`aidc.lab`), each
with the token that request carried. The hub trusts none of it: it looks the token up
itself (the actor is whoever the hub says owns it; an unknown or expired token is not
recorded), checks that the token indeed has no access to the reporting user's server, and
that the path is one of that server's. So a user can add, in their server's name, only
refusals that really were refusals of a token they were sent; they cannot name an actor they
hold no token of, report about another server, or touch what is written.
"""

from __future__ import annotations

import json

from jupyterhub import orm, scopes
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.user import User
from tornado import web

from ..security import audit

SCOPE = audit.WRITE_SCOPE
SCOPE_DEFINITION = {SCOPE: {"description": "Add events to the platform's audit log (platform services)."}}
#: most events in one post (a service sends what piled up while the hub was away)
MAX_EVENTS = 500


def events_of(body: bytes) -> list:
    """The ``events`` list of a posted body, or a 400 saying what is wrong with it (both
    audit routes take the same envelope)."""
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        raise web.HTTPError(400, "the body must be JSON: {\"events\": [...]}") from None
    events = parsed.get("events") if isinstance(parsed, dict) else None
    if not isinstance(events, list) or not events:
        raise web.HTTPError(400, "\"events\" must be a non-empty list")
    if len(events) > MAX_EVENTS:
        raise web.HTTPError(400, f"at most {MAX_EVENTS} events per request, not {len(events)}")
    return events


class AuditEventsHandler(APIHandler):
    """Append a service's events: ``{"events": [{"kind": "job", "data": {...}}, ...]}``."""

    def check_xsrf_cookie(self):  # token-only API: no cookie-authenticated browser posts here
        return

    def post(self):
        service = self.current_user
        if not isinstance(service, orm.Service) or SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, f"only platform services may add audit events (scope {SCOPE})")
        events = events_of(self.request.body)
        checked = []
        for i, event in enumerate(events):
            kind = event.get("kind") if isinstance(event, dict) else None
            data = event.get("data") if isinstance(event, dict) else None
            if kind not in audit.SERVICE_KINDS or not isinstance(data, dict):
                raise web.HTTPError(400, f"events[{i}]: kind must be one of {sorted(audit.SERVICE_KINDS)} "
                                         "with an object \"data\"")
            problem = audit.check(kind, {**data, "service": service.name})
            if problem:
                raise web.HTTPError(400, f"events[{i}]: {problem}")
            checked.append((kind, {**data, "service": service.name}))
        for kind, data in checked:  # all or nothing: nothing written unless every event is valid
            audit.record(kind, **data)
        self.set_status(201)
        self.write({"recorded": len(checked)})


class ServerRefusalsHandler(APIHandler):
    """A user server's refusals: ``{"events": [{"kind": "access", "token": "<the refused
    request's token>", "data": {"target": "GET /user/NAME/...", "status": 404, ...}}]}``.

    Answers ``{"recorded": n, "ignored": m}``: an event is ignored (not an error: the server
    cannot know) when its token is no longer valid or it turns out to have access after all.
    """

    def check_xsrf_cookie(self):  # token-only API, as above
        return

    def _actor(self, token: str, owner: str) -> str | None:
        """Who holds ``token`` if it may not use ``owner``'s server (None: not a refusal)."""
        found = orm.APIToken.find(self.db, token) if isinstance(token, str) and token else None
        if found is None:
            return None
        if scopes.has_scope(f"access:servers!server={owner}/", scopes.get_scopes_for(found), db=self.db):
            return None
        if found.user is not None:
            return found.user.name
        return f"service:{found.service.name}" if found.service is not None else None

    def post(self):
        user = self.current_user
        if not isinstance(user, User):
            raise web.HTTPError(403, "only a user's own server may report the requests it refused")
        events = events_of(self.request.body)
        server_path = f"{self.base_url}user/{user.name}/"
        checked = []
        for i, event in enumerate(events):
            event = event if isinstance(event, dict) else {}
            data = event.get("data")
            if event.get("kind") != "access" or not isinstance(data, dict):
                raise web.HTTPError(400, f"events[{i}]: kind must be \"access\" with an object \"data\"")
            target = data.get("target")
            method, _, path = target.partition(" ") if isinstance(target, str) else ("", "", "")
            if not method or not path.startswith(server_path):
                raise web.HTTPError(400, f"events[{i}]: target must be \"METHOD {server_path}...\", "
                                         "a request to your own server")
            clean = {k: data.get(k) for k in ("target", "status", "reason", "remote_ip")}
            clean.update(action="refused", result="failure", service=f"server:{user.name}")
            problem = audit.check("access", {**clean, "actor": "?"})
            if problem:
                raise web.HTTPError(400, f"events[{i}]: {problem}")
            checked.append((event.get("token"), clean))
        recorded = 0
        for token, data in checked:
            actor = self._actor(token, user.name)
            if actor is not None:
                audit.record("access", actor=actor, **data)
                recorded += 1
        self.set_status(201)
        self.write({"recorded": recorded, "ignored": len(checked) - recorded})


def handlers() -> list[tuple]:
    """For ``c.JupyterHub.extra_handlers`` (mounted under ``/hub/``)."""
    return [(r"/api/aidc/audit", AuditEventsHandler),
            (r"/api/aidc/audit/refusals", ServerRefusalsHandler)]
