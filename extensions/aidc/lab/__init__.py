"""aidc's Jupyter server extension, loaded by every user's JupyterLab server.

It does two things: a signed-in hub user who reaches *another* user's server gets 404,
not 403, so a server does not reveal that it exists (the rule every aidc API follows);
and it serves the routes the Lab panel ("AI Data Center") calls, which relay to the hub
services as the server's owner (:mod:`aidc.lab.relay`).
"""

from __future__ import annotations

from tornado.web import HTTPError


def _jupyter_server_extension_points():
    return [{"module": "aidc.lab"}]


def hide_foreign_servers(identity_provider) -> None:
    """Make the JupyterHub identity provider answer 404 to authenticated outsiders.

    JupyterHub's provider answers 403 ("user x is not allowed"); it offers no setting
    for this, so its ``get_user`` is wrapped on this server's single instance.
    """
    original = identity_provider.get_user
    hub_auth = identity_provider.hub_auth

    async def get_user(handler):
        user = await original(handler)
        if user is None and await hub_auth.get_user(handler, sync=False) is not None:
            raise HTTPError(404)
        return user

    identity_provider.get_user = get_user


def _load_jupyter_server_extension(serverapp):
    from .relay import setup_handlers

    setup_handlers(serverapp)
    try:
        from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
    except ImportError:  # pragma: no cover - jupyterhub is a dependency
        return
    idp = serverapp.identity_provider
    if isinstance(idp, JupyterHubIdentityProvider):
        hide_foreign_servers(idp)
        serverapp.log.info("aidc: other users' requests to this server answer 404")
