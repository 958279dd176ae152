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
"""

from __future__ import annotations

import json

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from ..security import audit

SCOPE = audit.WRITE_SCOPE
SCOPE_DEFINITION = {SCOPE: {"description": "Add events to the platform's audit log (platform services)."}}
#: most events in one post (a service sends what piled up while the hub was away)
MAX_EVENTS = 500


class AuditEventsHandler(APIHandler):
    """Append a service's events: ``{"events": [{"kind": "job", "data": {...}}, ...]}``."""

    def check_xsrf_cookie(self):  # token-only API: no cookie-authenticated browser posts here
        return

    def post(self):
        service = self.current_user
        if not isinstance(service, orm.Service) or SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, f"only platform services may add audit events (scope {SCOPE})")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON: {\"events\": [...]}") from None
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not events:
            raise web.HTTPError(400, "\"events\" must be a non-empty list")
        if len(events) > MAX_EVENTS:
            raise web.HTTPError(400, f"at most {MAX_EVENTS} events per request, not {len(events)}")
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


def handlers() -> list[tuple]:
    """For ``c.JupyterHub.extra_handlers`` (mounted under ``/hub/``)."""
    return [(r"/api/aidc/audit", AuditEventsHandler)]
