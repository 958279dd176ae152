"""What goes with a user the hub removes: their secrets for jobs.

A secret belongs to a user *name* (``<data-dir>/jobs/secrets/<owner>/``, rows of
``aidc_job_secrets``): left behind, it would be handed to the next user given the same name.
JupyterHub calls :meth:`Authenticator.delete_user` for every removal of a user, whether from
its admin page, its REST API (``DELETE /hub/api/users/NAME``) or ``aidc user remove`` on a
running platform (which uses that API), before it forgets the user; aidc's authenticators
(:mod:`aidc.hub.auth`) take :class:`RemovedUserMixin`, which asks the jobs service, the
secrets' one keeper, to remove them (``DELETE /services/jobs/api/users/NAME/secrets``, with
the jobs service's own token, which only the hub and that service hold). The service removes
rows and values and audits each one, with the person who removed the user as the actor:
JupyterHub does not pass them to ``delete_user``, so :func:`name_the_remover` wraps its
``DELETE /hub/api/users/NAME`` handler to note the caller for the request (a context
variable, private to that request's task).

If the jobs service cannot be reached the removal of the user is refused (503, saying why)
rather than leaving their secrets for a successor: the admin tries again when it answers.
A platform without the jobs service has no secrets to remove.
"""

from __future__ import annotations

import contextvars
import functools
import json
import ssl
from urllib.parse import quote, urlencode

from jupyterhub.utils import make_ssl_context, url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets.config import LoggingConfigurable

from ..security import audit

#: the service that keeps users' secrets
SECRETS_SERVICE = "jobs"
#: who is removing a user in this request (``hub`` when JupyterHub removes one on its own)
REMOVER: contextvars.ContextVar[str] = contextvars.ContextVar("aidc_remover", default="hub")


def name_the_remover() -> None:
    """Have JupyterHub's ``DELETE /hub/api/users/NAME`` (its REST API and admin page) note
    its caller in :data:`REMOVER` for :func:`remove_secrets`; once per process."""
    from jupyterhub.apihandlers.users import UserAPIHandler

    from .audit_requests import caller_of

    original = UserAPIHandler.delete
    if getattr(original, "_aidc_names_remover", False):
        return

    @functools.wraps(original)
    async def delete(self, user_name):
        REMOVER.set(caller_of(self) or "hub")
        return await original(self, user_name)

    delete._aidc_names_remover = True
    UserAPIHandler.delete = delete


async def remove_secrets(app, name: str) -> list[str] | None:
    """Have the jobs service remove ``name``'s secrets; their names (None: no jobs service).

    Raises ``HTTPError(503)`` when the service does not remove them.
    """
    service = getattr(app, "_service_map", {}).get(SECRETS_SERVICE)
    if service is None or not service.url or not service.api_token:
        return None
    actor = REMOVER.get()
    url = url_path_join(service.url, service.prefix, "api/users", quote(name, safe=""), "secrets")
    url += "?" + urlencode({"by": actor})
    options = {}
    if url.startswith("https:"):  # internal TLS: the hub's client certificate, as for servers
        options["ssl_options"] = make_ssl_context(app.internal_ssl_key, app.internal_ssl_cert,
                                                  cafile=app.internal_ssl_ca,
                                                  purpose=ssl.Purpose.SERVER_AUTH)
    try:
        r = await AsyncHTTPClient().fetch(url, method="DELETE", request_timeout=30, **options,
                                          headers={"Authorization": f"token {service.api_token}"})
        return list(json.loads(r.body)["removed"])
    except (HTTPClientError, OSError, ValueError, KeyError) as e:
        answered = isinstance(e, HTTPClientError) and e.code != 599  # 599: curl's "no answer"
        why = f"the {SECRETS_SERVICE} service answered {e}" if answered \
            else f"the {SECRETS_SERVICE} service did not answer ({e})"
        audit.record("secret", actor=actor, action="delete", target=f"{name}/*", result="failure",
                     reason=f"the user {name} was being removed; {why}")
        raise web.HTTPError(503, f"the user {name!r} was not removed: their secrets for jobs could "
                                 f"not be removed ({why}); try again when it answers") from None


class RemovedUserMixin(LoggingConfigurable):
    """An authenticator whose :meth:`delete_user` removes the user's secrets first."""

    async def delete_user(self, user):
        removed = await remove_secrets(self.parent, user.name)
        if removed:
            self.log.info("aidc: removed %d secret(s) of the removed user %s", len(removed), user.name)
        result = super().delete_user(user)
        if hasattr(result, "__await__"):
            await result
