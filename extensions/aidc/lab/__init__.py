"""aidc's Jupyter server extension, loaded by every user's JupyterLab server.

It does three things: a signed-in hub user who reaches *another* user's server gets 404,
not 403, so a server does not reveal that it exists (the rule every aidc API follows), and
the refusal is reported to the hub's audit writer, which checks it before recording an
``access`` event (:class:`aidc.hub.audit_api.ServerRefusalsHandler`); and it serves the routes the Lab panel ("AI Data Center") calls, which relay to the hub
services as the server's owner (:mod:`aidc.lab.relay`); and it has the labextensions'
hashed files served as immutable behind the hub's ``/user/NAME/`` base URL, which
JupyterLab's own marking misses (:mod:`aidc.lab.assets`).
"""

from __future__ import annotations

from tornado.web import HTTPError


def _jupyter_server_extension_points():
    return [{"module": "aidc.lab"}]


def hide_foreign_servers(identity_provider) -> None:
    """Make the JupyterHub identity provider answer 404 to authenticated outsiders.

    JupyterHub's provider answers 403 ("user x is not allowed"); it offers no setting
    for this, so its ``get_user`` is wrapped on this server's single instance. Each such
    refusal is sent (in the background) to the hub with the token the request carried: the
    hub, not this server, says whose it is.
    """
    original = identity_provider.get_user
    hub_auth = identity_provider.hub_auth

    async def get_user(handler):
        user = await original(handler)
        if user is None:
            outsider = await hub_auth.get_user(handler, sync=False)
            if outsider is not None:
                if not getattr(handler, "_aidc_refusal_reported", False):  # once per request
                    handler._aidc_refusal_reported = True
                    report_refusal(hub_auth, handler, 404,
                                   f"{outsider['kind']} {outsider['name']} may not use this server")
                raise HTTPError(404)
        return user

    identity_provider.get_user = get_user


def report_refusal(hub_auth, handler, status: int, reason: str) -> None:
    """Queue an ``access`` event about ``handler``'s request for the hub's audit writer."""
    from ..security.sender import refusal_sender

    request = handler.request
    try:
        refusal_sender(hub_auth.api_url, hub_auth.api_token).send(
            "access", {"target": f"{request.method} {request.path}", "status": status,
                       "reason": reason, "remote_ip": request.remote_ip},
            token=hub_auth.get_token(handler))
    except Exception:  # the audit must never turn a 404 into a 500
        handler.log.exception("aidc: could not report a refused request to the audit log")


def _load_jupyter_server_extension(serverapp):
    from .assets import cache_labextension_assets
    from .relay import setup_handlers

    setup_handlers(serverapp)
    cache_labextension_assets(serverapp)  # the labextensions' hashed files, behind base_url
    try:
        from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
    except ImportError:  # pragma: no cover - jupyterhub is a dependency
        return
    idp = serverapp.identity_provider
    if isinstance(idp, JupyterHubIdentityProvider):
        hide_foreign_servers(idp)
        serverapp.log.info("aidc: other users' requests to this server answer 404")
