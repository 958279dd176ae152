"""What every aidc service process is built on: hub auth, JSON errors, one way to run.

A service is a Tornado application behind the hub's proxy at ``/services/<name>/``.
It authenticates browsers with hub OAuth and API callers with hub tokens (both through
:class:`jupyterhub.services.auth.HubOAuth`, configured from the environment JupyterHub
gives a managed service), checks the caller's scopes, and answers errors as JSON
``{"status": N, "message": "..."}``; only :class:`~aidc.errors.AidcError` messages reach
the caller, anything else is logged and answered with a generic 500.

A browser (no ``Authorization`` header) is sent to the hub's OAuth sign-in, on an
``/api/`` URL too when it accepts HTML; API clients get a JSON 401. Cookie-authenticated
writes need the XSRF token (JupyterHub's HubOAuth check). A service without a route for
its root gets :class:`RootHandler`'s page (its module docstring's first paragraph, and a
link to ``api/openapi.json`` where it serves one); JupyterHub's minutely health check of
that URL is answered 200 and logged at debug. :func:`run_service` logs to standard
output and to ``<data-dir>/logs/<service>.log`` (0600, rotated).

Example (see ``tests/services/echo.py``)::

    class Hello(ServiceHandler):
        @signed_in
        def get(self):
            self.write_json({"hello": self.current_user["name"]})

    run_service([(r"/api/hello", Hello)])
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.escape import xhtml_escape
from tornado.log import app_log
from traitlets.config import Application, PyFileConfigLoader

from ..errors import AidcError, PermissionDeniedError, UsageError, status_for
from ..security import audit, internal_tls
from .. import roles
from ..paths import PrivateFileHandler, log_rotation, platform_data_dir
from .http import NoDelayHTTPServer
from .visibility import Caller

def signed_in(method):
    """Declares a handler verb open to every signed-in user who may use the service (the
    hub's ``access:services`` scope, given by :class:`ManagedService` ``roles``).

    A caller without credentials is sent to sign in (a browser) or answered 401; one the
    hub knows but does not let use the service gets 403 (:meth:`ServiceHandler.get_current_user`).
    """
    return web.authenticated(method)


#: tornado's name for :func:`signed_in`, for drop-in services written against it
#: (``tests/services/echo.py``)
authenticated = signed_in


def needs_role(*allowed: str, refused: str | None = None):
    """Declares the aidc roles that may call a handler verb (any one of ``allowed``; admins
    hold the scientist role too, see :func:`aidc.roles.holds`), as JupyterHub's
    ``@needs_scope`` declares a scope.

    A signed-in caller without one gets 403 with ``refused`` (the service says what the
    role is needed for and what they may do instead); the check runs before the verb,
    so nothing is looked up for them. Which things they then see is
    :mod:`aidc.services.visibility`'s rule (404 for what is out of their sight)::

        class JobsCollection(ServiceHandler):
            @needs_role(roles.SCIENTIST, refused="running jobs needs the scientist role")
            def post(self): ...
    """
    message = refused or f"this needs the {' or '.join(allowed)} role"

    def declare(method):
        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            if not any(roles.holds(self.role, role) for role in allowed):
                raise PermissionDeniedError(message)
            return method(self, *args, **kwargs)

        checked.needs_roles = allowed
        return signed_in(checked)

    return declare


class AppHubAuth:
    """Handlers take the application's HubOAuth (``make_app``), with the platform's cache time.

    JupyterHub's mixin would otherwise take ``HubOAuth.instance()``, a second object
    with the default five-minute cache, and ignore the application's: revoked tokens
    then kept working for minutes. Every handler of a service (the OAuth callback
    included, which must read the state cookie the login redirect set) uses this one.
    """

    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]

    @hub_auth.setter
    def hub_auth(self, auth) -> None:  # JupyterHub's mixin may assign it
        self.settings["hub_auth"] = auth


class OAuthCallbackHandler(AppHubAuth, HubOAuthCallbackHandler):
    """JupyterHub's OAuth callback, on the application's HubOAuth."""


class ServiceHandler(AppHubAuth, HubOAuthenticated, web.RequestHandler):
    """Base handler: hub-authenticated, JSON in and out, user-safe errors."""

    #: a request body larger than this is refused with 413 before any handler runs
    max_body_bytes: int | None = None


    async def prepare(self):
        limit = self.max_body_bytes
        if limit is not None:
            length = int(self.request.headers.get("Content-Length") or 0)
            if length > limit or len(self.request.body or b"") > limit:
                size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 1024} KiB"
                raise web.HTTPError(413, f"request body too large: at most {size}")
        await self._identify_caller()

    async def _identify_caller(self) -> None:
        """Look the caller up on the event loop, once per request.

        ``HubAuthenticated.get_current_user`` is synchronous: JupyterHub runs the lookup
        on a second event loop in a thread and blocks this one until it answers, even
        for a cached token. Under load (model inference) that serialised every request
        behind a thread hand-off; awaiting the same lookup here and filling the
        handler's cache keeps the loop free. The checks are JupyterHub's own.
        """
        if hasattr(self, "_hub_auth_user_cache"):
            return
        try:
            model = await self.hub_auth.get_user(self, sync=False)
        except web.HTTPError:
            return  # the hub did not answer: the synchronous path reports it as before
        if not model:
            self._hub_auth_user_cache = None
            return
        try:
            self._hub_auth_user_cache = self.check_hub_user(model)
        except UserNotAllowed:
            return  # get_current_user's refusal path tells them why (403)
        self.hub_auth._persist_url_token_if_set(self)  # ?token= in a browser URL, as JupyterHub does

    @property
    def caller(self) -> Caller:
        """The signed-in caller, for :mod:`aidc.services.visibility`'s checks."""
        return Caller.of(self.current_user)

    @property
    def role(self) -> str | None:
        """The caller's aidc role (admin, scientist, viewer), from their hub groups."""
        user = self.current_user
        if user.get("kind") == "service" and user["name"] in roles.VIEWING_SERVICES:
            return roles.VIEWER
        return roles.role_of(user.get("groups") or [], user.get("admin", False))

    @property
    def is_admin(self) -> bool:
        return self.role == roles.ADMIN

    @property
    def groups(self) -> list[str]:
        return list(self.current_user.get("groups") or [])

    def get_current_user(self):
        user = super().get_current_user()
        if user is None and not getattr(self, "_refusing", False):
            model = self.hub_auth.get_user(self)  # cached by HubAuth for this request
            if model:
                # signed in, but without access to this service: say so, do not ask to log in
                self._refusing = True
                self._refused_model = model
                raise web.HTTPError(
                    403, f"{model['kind']} {model['name']} may not use this service"
                )
        return user

    def accepts_html(self) -> bool:
        return "text/html" in self.request.headers.get("Accept", "")

    def is_browser(self) -> bool:
        """Who is sent to sign in: no Authorization header, and a page (not ``/api/``)
        or an ``/api/`` URL opened in a browser (which accepts HTML)."""
        if "Authorization" in self.request.headers:
            return False
        return "/api/" not in self.request.path or self.accepts_html()

    def get_login_url(self):
        # API clients (a token, or JSON accepted) get a 401; a browser, whatever the path,
        # is sent to the hub's OAuth sign-in and comes back with the service's cookie
        if not self.is_browser():
            raise web.HTTPError(401, "Authentication required: send a hub API token")
        return super().get_login_url()

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def nesting_hint(self) -> str:
        """What a service adds to the "nested too deeply" message (its own limit, say)."""
        return ""

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise UsageError(f"the request body is not valid JSON: {e}") from None
        except RecursionError:  # json.loads of lists nested thousands deep
            raise UsageError("the request body nests lists or objects too deeply to be read"
                             + self.nesting_hint()) from None
        if not isinstance(body, dict):
            raise UsageError("the request body must be a JSON object")
        return body

    @property
    def user_name(self) -> str:
        return self.current_user["name"]

    def _handle_request_exception(self, e):
        if isinstance(e, AidcError):
            self.send_error(status_for(e), reason_message=str(e))
            return
        super()._handle_request_exception(e)

    def _signed_in_model(self) -> dict | None:
        """The hub's model of the caller as far as this request already looked it up (no new
        lookup): the service's user, or someone signed in but refused the service."""
        return getattr(self, "_current_user", None) or getattr(self, "_refused_model", None)

    def audit(self, kind: str, action: str, target: str, result: str = "success", **extra: Any) -> None:
        """Report what the caller did to the audit log (through the hub's writer)."""
        who = self._signed_in_model()
        audit.record(kind, actor=who["name"] if isinstance(who, dict) else "anonymous", action=action,
                     target=target, result=result, remote_ip=self.request.remote_ip, **extra)

    def audit_refusal(self, status_code: int, message: str) -> None:
        """A 403/404 to a signed-in caller (someone else's thing, or a role that may not) is
        an ``access`` event; every error page of a service goes through here."""
        if status_code in (403, 404) and self._signed_in_model():
            self.audit("access", "refused", f"{self.request.method} {self.request.path}", result="failure",
                       status=status_code, reason=message[:500])

    def write_error(self, status_code: int, **kwargs) -> None:
        message = kwargs.get("reason_message")
        exc_info = kwargs.get("exc_info")
        if message is None and exc_info:
            exc = exc_info[1]
            if isinstance(exc, web.HTTPError) and exc.log_message:
                # with no args tornado keeps the message with each % doubled: undo it
                message = exc.log_message % exc.args
        if message is None:
            message = self._reason if status_code < 500 else "Internal error; see the service log."
        self.audit_refusal(status_code, message)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


class HealthHandler(web.RequestHandler):
    """Unauthenticated liveness probe (answered at debug level in the log)."""

    quiet_log = True

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": "ok"}))


class OpenAPIHandler(ServiceHandler):
    """A service's API document, ``openapi.yaml`` beside its module, as YAML or JSON.

    Route it as ``(r"/api/openapi\.(json|yaml)", OpenAPIHandler, {"document": OPENAPI})``;
    it is public (the API's shape is no secret), and the service's root page links to it.
    """

    def initialize(self, document: Path) -> None:
        self.document = Path(document)

    def get(self, ext):
        import yaml

        text = self.document.read_text()
        if ext == "yaml":
            self.set_header("Content-Type", "application/yaml")
            self.finish(text)
        else:
            self.write_json(yaml.safe_load(text))


class UnknownPathHandler(ServiceHandler):
    """A URL none of the service's routes matches: a JSON 404 like every other refusal
    (tornado's own is an HTML page, which API clients and the Lab panel's relay take for
    a wrong platform address)."""

    async def prepare(self):
        await super().prepare()
        raise web.HTTPError(404, f"the {service_name()} service has no {self.request.path}")


ROOT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>{title}</h1>
<p>{about}</p>
{api}
<p>Signed in as {user}. <a href="{hub}">Back to the hub</a></p>
</body></html>
"""


class RootHandler(ServiceHandler):
    """``/services/<name>/``: what the service is, and where its API is described.

    A browser signs in through the hub's OAuth and gets a small HTML page. A caller
    without credentials that does not ask for HTML (JupyterHub's service health check
    polls this URL every minute) gets a one-line JSON answer, logged at debug.
    """

    def get(self):
        if self.current_user is None and not self.accepts_html() \
                and "Authorization" not in self.request.headers:
            self.quiet_log = True
            self.write_json({"service": service_name(), "status": "ok"})
            return
        self._page()

    @signed_in
    def _page(self):
        about = self.settings.get("service_about") or f"The aidc {service_name()} service."
        doc = self.settings.get("service_api_doc")
        api = (f'<p>API: <a href="{xhtml_escape(doc)}">{xhtml_escape(doc)}</a> '
               "(send a hub API token as <code>Authorization: token ...</code>).</p>"
               if doc else "")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(ROOT_PAGE.format(
            title=xhtml_escape(f"aidc {service_name()}"), about=xhtml_escape(about), api=api,
            user=xhtml_escape(self.user_name), hub=xhtml_escape(self.hub_auth.hub_prefix)))


def service_name() -> str:
    return os.environ.get("JUPYTERHUB_SERVICE_NAME", "service")


def _about_from_main() -> str:
    """The first paragraph of the service module's docstring, on one line."""
    main = sys.modules.get("__main__")
    doc = (getattr(main, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].replace("``", "").split())


def auth_cache_seconds() -> int:
    """How long a hub answer about a token or session is trusted (``AIDC_AUTH_CACHE_SECONDS``,
    set by the hub from ``c.HubAuth.cache_max_age``; see ``aidc.hub.config``)."""
    try:
        return max(0, int(os.environ.get("AIDC_AUTH_CACHE_SECONDS", "5")))
    except ValueError:
        return 5


def service_prefix() -> str:
    return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")


def make_app(routes: list[tuple], **settings) -> web.Application:
    """Mount ``routes`` under the service prefix, with OAuth callback and health check."""
    prefix = service_prefix()
    hub_auth = HubOAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"],
                        cache_max_age=auth_cache_seconds())
    handlers = [
        (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
        (url_path_join(prefix, "health"), HealthHandler),
    ]
    handlers += [(url_path_join(prefix, pattern), *rest) for pattern, *rest in routes]
    if not any(pattern in ("/", r"/?", "") for pattern, *_ in routes):
        handlers.append((prefix, RootHandler))  # a service's own root page wins
        for pattern, *_ in routes:
            if "openapi" in pattern:  # the API document, relative to the root page
                settings.setdefault("service_api_doc",
                                    pattern.lstrip("/").replace(r"\.", ".").replace("(json|yaml)", "json"))
                break
        settings.setdefault("service_about", _about_from_main())
    settings.setdefault("log_function", log_request)
    settings.setdefault("default_handler_class", UnknownPathHandler)
    return web.Application(
        handlers, hub_auth=hub_auth, cookie_secret=os.urandom(32), **settings
    )


def log_request(handler: web.RequestHandler) -> None:
    """Tornado's access log, with answered high-rate calls (a handler's ``quiet_log``) at debug.

    A model endpoint answers thousands of inference requests a second; one INFO line
    each cost more than the routing and filled the log. Their counts and latencies are
    in the service's metrics; errors are still logged.
    """
    status = handler.get_status()
    if status < 400:
        level = logging.DEBUG if getattr(handler, "quiet_log", False) else logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    access = logging.getLogger("tornado.access")
    if not access.isEnabledFor(level):
        return
    request = handler.request
    access.log(
        level, "%d %s %.2fms", status, handler._request_summary(), 1000.0 * request.request_time())


LOG_FORMAT = "[%(levelname)s %(asctime)s %(name)s] %(message)s"


def configure_logging() -> Path | None:
    """Standard output, and ``<data-dir>/logs/<service>.log`` (0600, rotated; see aidc.paths).

    Returns the log file's path (None when the service runs without a data directory).
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    data_dir = platform_data_dir()
    if data_dir is None:
        return None
    path = data_dir.service_log(service_name())
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = PrivateFileHandler(str(path), **log_rotation())
    except OSError as e:
        app_log.warning("cannot write the service log %s: %s", path, e)
        return None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    return path


class ServiceApp(Application):
    """A service's traitlets configuration: the platform's drop-ins, ``<data-dir>/config.d/*.py``.

    The same files configure the hub, so a service reads the settings of its own classes
    (``c.JobManager...``, ``c.GPULedger...``) from where an admin already writes them;
    subclasses list those classes in ``classes``.
    """

    #: the platform's data directory (a string), set by :meth:`for_platform`
    data_dir: str = ""

    @classmethod
    def for_platform(cls) -> ServiceApp:
        """The service's configuration on the platform this process belongs to.

        Every service begins the same way: find its platform's data directory
        (:func:`aidc.paths.data_dir`, which ``aidc up`` passes down to every service), then
        read the drop-ins there; ``app.data_dir`` is that folder.
        """
        from ..paths import data_dir

        app = cls()
        app.data_dir = str(data_dir().root)
        app.load_drop_ins(app.data_dir)
        return app

    def load_drop_ins(self, data_dir: str) -> None:
        for path in sorted(Path(data_dir, "config.d").glob("*.py")):
            try:
                loader = PyFileConfigLoader(path.name, path=str(path.parent), log=self.log)
                self.update_config(loader.load_config())
            except Exception as e:  # a hub-only drop-in must not stop the service
                self.log.warning("aidc %s: skipped config %s: %s", self.name, path, e)


def run_service(routes: list[tuple], on_start=None, on_stop=None, **settings) -> None:
    """Serve ``routes`` on the address JupyterHub assigned; stop cleanly on SIGTERM/SIGINT.

    ``on_start`` and ``on_stop`` are coroutine functions run in the service's event loop
    before it answers and after it stops (a service's own engines: a Dask client, a queue).

    The port is bound before ``on_start``: what ``on_start`` starts (a Dask cluster, whose
    connections take ephemeral ports) could otherwise take the port JupyterHub picked for
    the service, and the service would fail to start, again at each restart.
    """
    from tornado.netutil import bind_sockets

    configure_logging()
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    sockets = bind_sockets(url.port, address=url.hostname or "127.0.0.1")

    async def main():
        if on_start is not None:
            await on_start()
        app = make_app(routes, **settings)
        # internal TLS: serve HTTPS and ask the hub and the proxy for their certificates,
        # as JupyterHub's single-user server does (aidc.security.internal_tls)
        tls = internal_tls.server_context() if url.scheme == "https" else None
        if url.scheme == "https" and tls is None:
            raise SystemExit(f"{url.geturl()} is HTTPS but the hub gave this service no "
                             f"{internal_tls.ENV_CERT} and {internal_tls.ENV_KEY}")
        server = NoDelayHTTPServer(app, xheaders=True, ssl_options=tls)
        server.add_sockets(sockets)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        app_log.info("service %s listening on %s", os.environ.get("JUPYTERHUB_SERVICE_NAME"), url.geturl())
        await stop.wait()
        server.stop()
        await server.close_all_connections()
        if on_stop is not None:
            await on_stop()
        close_hub_auth(app.settings["hub_auth"])

    asyncio.run(main())


def close_hub_auth(hub_auth: HubOAuth) -> None:
    """Close the event loop JupyterHub's ``HubAuth`` keeps in a thread for its synchronous
    lookups (a refused request takes that path) and stop the thread.

    JupyterHub never closes that loop. Left to the interpreter's exit, the loop and its
    self-pipe socket are finalized in no set order, and when the socket goes first the loop's
    ``__del__`` prints a ``ValueError: Invalid file descriptor: -1`` traceback into the
    platform's log at every stop.
    """
    loop = getattr(hub_auth, "_thread_loop", None)
    if loop is None:  # no synchronous lookup happened: no thread, no loop
        return
    pool = hub_auth._pool  # the thread that made the loop (it exists once the loop does)
    pool.submit(loop.close).result()
    pool.shutdown(wait=True)
