"""Prebuilt labextensions' hashed files cached as JupyterLab means them to be, behind the hub.

JupyterLab serves each prebuilt labextension's ``static/`` folder (aidc's included: its
``remoteEntry.<hash>.js`` and chunks) with ``Cache-Control: public, max-age=31536000,
immutable``, since every name there carries its content's hash; a changed extension has
new names, listed in the page config. It marks those folders by their URL, ``/lab/extensions/
<name>/static``, without the server's ``base_url``. A JupyterHub user's server lives under
``/user/NAME/``, so no request path starts with that URL and every such file falls back to
``no-cache``: on each page load the browser revalidates it with a round trip (a ``304``,
one per file: 21 for the extensions installed here, 3 of them aidc's) to a server that is
busy starting Lab at that moment. JupyterLab's own bundle (``static/lab``, whose URL has the
base URL) is not affected.

The server extension adds the same folders' URLs with the base URL to the server's
``static_immutable_cache`` setting, which JupyterLab keeps and extends when it loads after
it (extensions load by name, and ``aidc.lab`` sorts before ``jupyterlab``); it is read on
each request, so the order matters only for what JupyterLab copies, not for correctness.
"""

from __future__ import annotations

from glob import glob
from os.path import relpath

from jupyter_server.utils import url_path_join


def labextension_static_urls(serverapp) -> list[str]:
    """The URLs, with the server's base URL, of every prebuilt labextension's ``static/``.

    Taken from each loaded extension application that serves labextensions (JupyterLab,
    Notebook 7): its search path and URL, the way JupyterLab lists them for itself.
    """
    urls: set[str] = set()
    for extension in serverapp.extension_manager.extensions.values():
        for point in extension.extension_points.values():
            app = point.app
            url = getattr(app, "labextensions_url", None)
            if app is None or not url:
                continue
            roots = list(getattr(app, "extra_labextensions_path", [])) + list(
                getattr(app, "labextensions_path", []))
            for root in roots:
                for static in glob(f"{root}/**/static", recursive=True):
                    urls.add(url_path_join(serverapp.base_url, url, relpath(static, root)) + "/")
    return sorted(urls)


def cache_labextension_assets(serverapp) -> list[str]:
    """Serve the labextensions' hashed files as immutable on this server (see the module).

    Returns the URL prefixes added (none when the server runs at ``/``, where JupyterLab's
    own ones already match).
    """
    if serverapp.base_url in ("", "/"):
        return []
    settings = serverapp.web_app.settings
    present = list(settings.get("static_immutable_cache", []))
    added = [url for url in labextension_static_urls(serverapp) if url not in present]
    settings["static_immutable_cache"] = present + added
    return added
