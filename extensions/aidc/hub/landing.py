"""Where a signed-in user lands: viewers on the dashboards, everyone else as JupyterHub does.

A viewer may not start a server, so JupyterHub's default after sign-in (start or open
their server) would end on a 403 page. ``c.JupyterHub.default_url`` is this callable:
viewers go to ``/services/dashboards/`` when the dashboards run; for anyone else it
answers nothing and JupyterHub decides.
"""

from __future__ import annotations

from jupyterhub.utils import url_path_join

from .. import roles

DASHBOARDS = "dashboards"


def default_url(handler) -> str:
    user = handler.current_user
    if user is None or DASHBOARDS not in handler.services:
        return ""
    role = roles.role_of([g.name for g in user.groups], bool(user.admin))
    if role == roles.VIEWER:
        return url_path_join(handler.base_url, "services", DASHBOARDS) + "/"
    return ""
