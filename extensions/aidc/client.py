"""The one client behind the Python API, the CLI and the widgets.

It finds the platform and the caller's token the way a user expects:

* explicit arguments, else
* ``AIDC_URL`` and ``AIDC_TOKEN`` (anywhere), else
* inside a user's JupyterLab server, the environment JupyterHub provides
  (``JUPYTERHUB_API_TOKEN``, with ``AIDC_URL`` set by the platform's spawner).

Every service API (jobs, models, resources) is reached through :meth:`Client.request`,
which turns HTTP failures into :mod:`aidc.errors` exceptions with the server's message.
"""

from __future__ import annotations

import os
import time
from typing import Any

import requests

from .errors import (
    AuthenticationError,
    ConflictError,
    PlatformError,
    UsageError,
    error_for_status,
)
from . import roles

BAD_TOKEN = (
    "the hub did not accept your token: it is malformed, expired or revoked. "
    "Ask for a new one (`aidc token NAME`, or the hub's Token page) and set AIDC_TOKEN."
)


class Client:
    """An authenticated connection to one aidc platform."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60):
        url = url or os.environ.get("AIDC_URL")
        token = token or os.environ.get("AIDC_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
        if not url:
            raise UsageError(
                "no platform address: set AIDC_URL (for example http://127.0.0.1:8000)"
            )
        if not token:
            raise UsageError("no API token: set AIDC_TOKEN (create one with `aidc token NAME`)")
        self.url = platform_url(url)
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def request(self, method: str, path: str, **kw) -> requests.Response:
        """Call ``path`` (relative to the platform URL); raise an AidcError on failure."""
        kw.setdefault("timeout", self.timeout)
        try:
            r = self.session.request(method, f"{self.url}/{path.lstrip('/')}", **kw)
        except requests.exceptions.SSLError as e:
            raise PlatformError(
                f"the platform at {self.url} answered over HTTPS with a certificate this machine does "
                f"not trust ({e.__context__ or e}); on the platform's host set "
                "REQUESTS_CA_BUNDLE to the bundle `aidc up` printed") from None
        except requests.ConnectionError:
            raise PlatformError(f"cannot reach the platform at {self.url}; is it running?") from None
        if r.status_code < 400:
            return r
        if r.status_code != 401 and not _is_json(r):
            raise PlatformError(_not_the_api(r))
        if r.status_code in (401, 403) and _is_bad_credentials(r, _body_message(r)):
            raise AuthenticationError(BAD_TOKEN)
        error = error_for_status(r.status_code)(_message(r))
        error.status = r.status_code  # the refusal's own status (a relay answers with it)
        raise error

    def get_json(self, path: str, **kw) -> Any:
        return self.json(self.request("GET", path, **kw))

    @staticmethod
    def json(r: requests.Response) -> Any:
        """The body of an API response; a page that is not the API's JSON is a PlatformError
        that says what was reached instead (a wrong AIDC_URL, a proxy's page)."""
        try:
            return r.json()
        except ValueError:
            raise PlatformError(_not_the_api(r)) from None

    # -- resources -------------------------------------------------------------------
    def profiles(self) -> list[dict]:
        """The resource profiles this platform offers."""
        return self.get_json("services/resources/api/profiles")["profiles"]

    def gpus(self) -> GPUInventory:
        """GPU units, their holders (as far as you may see them) and free counts."""
        return GPUInventory(self.get_json("services/resources/api/gpus"))

    def start_server(self, profile: str | None = None, wait: bool = True,
                     timeout: float = 900) -> dict:
        """Start your server with a profile; with ``wait``, return once it is ready."""
        if profile:
            offered = [p["id"] for p in self.profiles()]
            if profile not in offered:
                raise UsageError(f"no profile {profile!r}: this platform offers "
                                 f"{', '.join(offered) or 'none'} (see `aidc profiles`)")
        name = self.whoami()["name"]
        body = {"profile": profile} if profile else {}
        try:
            self.request("POST", f"hub/api/users/{name}/server", json=body, timeout=timeout)
        except UsageError as e:
            # JupyterHub answers 400 "NAME is already running" (or "... pending spawn"): a
            # refusal of the action, not bad input
            if str(e).endswith(" is already running") or " is pending " in str(e):
                raise ConflictError(f"{e}; stop it first (`aidc server stop`) to start it "
                                    "with another profile") from None
            raise
        deadline = time.monotonic() + timeout
        while True:
            model = self.get_json(f"hub/api/users/{name}")
            server = (model.get("servers") or {}).get("")
            if server is None:
                raise PlatformError("the server stopped while starting; see the hub's spawn page")
            if server.get("ready") or not wait:
                return server
            if time.monotonic() > deadline:
                raise PlatformError(f"the server was not ready within {timeout:.0f} s")
            time.sleep(1)

    def stop_server(self) -> None:
        name = self.whoami()["name"]
        self.request("DELETE", f"hub/api/users/{name}/server")

    def whoami(self) -> dict:
        """Who the token belongs to: ``name``, ``kind``, ``role``, ``groups``, ``scopes``."""
        model = self.get_json("hub/api/user")
        model["role"] = roles.role_of(model.get("groups") or [], model.get("admin", False))
        return model


class GPUInventory(dict):
    """What ``aidc.gpus()`` returns: the resources service's answer (``units``, ``free`` per
    kind, ``mine``, ``simulated``) as a dict, which a notebook shows as a table."""

    def __repr__(self) -> str:
        free = ", ".join(f"{n} {kind}" for kind, n in sorted((self.get("free") or {}).items()))
        return f"<GPUs: {len(self.get('units') or [])} units, free: {free or 'none'}>"

    def _repr_html_(self) -> str:
        from .display import gpus_html
        return gpus_html(self)


def gpus(client: Client | None = None) -> GPUInventory:
    """``aidc.gpus()``: the platform's GPUs, who holds them (as far as you may see) and what is free."""
    return (client or Client()).gpus()


def platform_url(url: str) -> str:
    """The platform's address from what a user may set as AIDC_URL: the hub's own URL
    (``http://host:8000/hub``, ``.../hub/``) is accepted for the platform's
    (``http://host:8000``), and trailing slashes are dropped."""
    url = url.strip().rstrip("/")
    if url.endswith("/hub"):
        url = url[: -len("/hub")]
    return url.rstrip("/")


def _is_json(r: requests.Response) -> bool:
    try:
        r.json()
    except ValueError:
        return False
    return True


def _not_the_api(r: requests.Response) -> str:
    kind = r.headers.get("Content-Type", "").split(";")[0].strip()
    text = r.text.lstrip()[:200].lower()
    if "html" in kind or text.startswith(("<!doctype html", "<html")):
        what = "an HTML page"
    elif not r.content:
        what = "an empty body"
    else:
        what = f"{kind or 'a body'} that is not JSON"
    hint = ("is the service behind it running? (`aidc up` logs why not)" if r.status_code >= 500
            else "is AIDC_URL the platform's address (http://host:8000)?")
    return f"{r.url} answered {r.status_code} with {what}, not the aidc API: {hint}"


def _body_message(r: requests.Response) -> str:
    """The error's text, whichever of the platform's shapes the body has: the services'
    and JupyterHub's ``{"status": N, "message": "..."}`` or KServe v2's ``{"error": "..."}``
    (the models service's v2 routes); empty when the body has none."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:500]
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            value = body.get(key)
            if value:
                return value if isinstance(value, str) else str(value)
        # JupyterHub refuses a bad token with {"status": 403, "message": null}: nothing said
        extra = {k: v for k, v in body.items() if k != "status" and v not in (None, "")}
        return str(extra) if extra else ""
    return str(body) if body else ""


def _message(r: requests.Response) -> str:
    """:func:`_body_message`, or what answered with which status when the body says nothing."""
    return _body_message(r) or f"{r.url} answered {r.status_code} {r.reason or ''}".strip()


def _is_bad_credentials(r: requests.Response, message: str) -> bool:
    # JupyterHub answers an unknown, expired or revoked token with a bare 403; a token
    # that is valid but lacks a scope gets a 403 that names the missing scopes
    if r.status_code == 401:
        return True
    text = message.lower()
    return not text or "credentials" in text or "not authenticated" in text
