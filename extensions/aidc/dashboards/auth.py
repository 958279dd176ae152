"""Hub OAuth for Voila running as a hub-managed service, and who is looking.

JupyterHub's identity provider for Jupyter Server registers its ``/oauth_callback`` and
``/logout`` handlers as given; a Jupyter server mounts them under its base URL, Voila
does not. Under ``/services/dashboards/`` the hub then sends the browser back to a
callback nothing answers, and the sign-in loops. :class:`ServicePrefixIdentityProvider`
prefixes them with the service's URL prefix.

It also tells the dashboard kernel who is looking: Voila hands the request headers named
in ``VoilaConfiguration.http_header_envs`` to the kernel as environment variables, and
the identity provider sets :data:`VIEWER_HEADER` on every request it signs in, to the
user's name and aidc role, replacing whatever the browser sent under that name. The
kernel narrows per-user figures to that role (:mod:`aidc.dashboards.sources`); it never
gets the user's token.

A signed-in caller refused the dashboards (a token without access to them) is an ``access``
event, sent to the hub's audit writer like every service's (:func:`aidc.security.audit.record`).
"""

from __future__ import annotations

import json
import os

from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
from jupyterhub.utils import url_path_join

from .. import roles
from ..security import audit

#: request header carrying the signed-in viewer to the kernel (as ``HTTP_X_AIDC_VIEWER``)
VIEWER_HEADER = "X-Aidc-Viewer"
VIEWER_ENV = "HTTP_" + VIEWER_HEADER.upper().replace("-", "_")


class ServicePrefixIdentityProvider(JupyterHubIdentityProvider):
    """JupyterHub's identity provider with its handlers under the service prefix."""

    def get_handlers(self):
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        return [(url_path_join(prefix, path), *rest) for path, *rest in super().get_handlers()]

    async def get_user(self, handler):
        # only this process names the viewer: a browser's header of that name is dropped
        if not getattr(handler, "_aidc_viewer_set", False):
            handler.request.headers.pop(VIEWER_HEADER, None)
        user = await super().get_user(handler)
        if user is None:
            self._audit_refusal(handler)
        if user is not None and not getattr(handler, "_aidc_viewer_set", False):
            hub_user = user.hub_user
            role = roles.role_of(hub_user.get("groups") or [], bool(hub_user.get("admin")))
            handler.request.headers[VIEWER_HEADER] = json.dumps({
                "name": hub_user["name"], "role": role,
                "groups": list(hub_user.get("groups") or [])})
            handler._aidc_viewer_set = True
        return user

    @staticmethod
    def _audit_refusal(handler) -> None:
        """When the request ends refused (403/404) though the hub knows the caller (JupyterHub's
        provider answers None for them, and the 403 comes later), record who and what."""
        who = getattr(handler, "_cached_hub_user", None)  # HubAuth's lookup of this request
        if not who or getattr(handler, "_aidc_refusal_watched", False):
            return
        handler._aidc_refusal_watched = True
        on_finish = handler.on_finish

        def finished():
            status = handler.get_status()
            if status in (403, 404):
                request = handler.request
                actor = who["name"] if who.get("kind", "user") == "user" else f"{who['kind']}:{who['name']}"
                audit.record("access", actor=actor, action="refused", target=f"{request.method} {request.path}",
                             result="failure", status=status, remote_ip=request.remote_ip,
                             reason=f"{who.get('kind', 'user')} {who['name']} may not use the dashboards")
            on_finish()

        handler.on_finish = finished
