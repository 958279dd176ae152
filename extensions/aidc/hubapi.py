"""The one client of the hub's REST API, synchronous and asynchronous.

The CLI's user directory (:mod:`aidc.hub.directory`) changes users of a running hub, the
jobs service mints and revokes its jobs' tokens (:mod:`aidc.jobs.tokens`), and the GPU
culler stops servers and asks them for their kernels (:mod:`aidc.gpu.culler`). They all
call the hub (or, through the proxy, a server the hub started) with a token, and need
the same answers to the same failures, so they all use :class:`HubAPI`: :meth:`~HubAPI.request`
over ``requests`` in plain code, :meth:`~HubAPI.fetch` over Tornado's client on an event loop.

What it does about failures, as JupyterHub's own clients do (``HubAuth._api_request``,
``jupyterhub-idle-culler``): a request times out after ``JUPYTERHUB_REQUEST_TIMEOUT``
seconds (60 by default); a hub that does not answer, or a proxy answering 502/503/504
while the hub restarts, is tried again with exponential backoff for idempotent methods
(GET, PUT, DELETE; never a POST, which could make a second token or user); and a refusal
becomes an :mod:`aidc.errors` exception: 404 and 409 (about the thing named, the
caller's business) through the one status table :func:`aidc.errors.error_for_status`,
anything else a :class:`~aidc.errors.PlatformError` that says what the hub answered.

Under internal TLS (``aidc up --internal-ssl``) the hub's API asks every client for a
certificate signed by the platform's internal authorities: :class:`HubAPI` presents the
process's own (JupyterHub's ``JUPYTERHUB_SSL_*`` variables, or ``tls_files``) and trusts
those authorities besides the usual ones (:mod:`aidc.security.internal_tls`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import requests
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .errors import AidcError, ConflictError, NotFoundError, PlatformError, error_for_status
from .security import internal_tls

log = logging.getLogger("aidc.hubapi")

#: methods asked again after a failure that may be the hub restarting
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: a proxy's answers while the hub behind it is (re)starting
UNAVAILABLE = frozenset({502, 503, 504})
#: errors about the thing named in the path, which the caller handles
CALLERS_ERRORS = (NotFoundError, ConflictError)


def request_timeout() -> float:
    """Seconds a hub request may take: ``JUPYTERHUB_REQUEST_TIMEOUT``, 60 by default."""
    try:
        return float(os.environ.get("JUPYTERHUB_REQUEST_TIMEOUT") or 60)
    except ValueError:
        return 60.0


class HubAPI:
    """Calls ``api_url`` (the hub's ``.../hub/api``, or the proxy's public URL for a user's
    server) with ``token``; answers are JSON (``None`` for an empty body).

    ``retries`` is how many more times an idempotent request is tried after the hub did
    not answer (waiting 0.5 s, 1 s, 2 s, ...).
    """

    def __init__(self, api_url: str, token: str, timeout: float | None = None, retries: int = 3,
                 tls_files: internal_tls.InternalFiles | None = None):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = request_timeout() if timeout is None else timeout
        self.retries = retries
        #: internal TLS: the certificate to present (default: this process's, if any)
        self.tls_files = tls_files or internal_tls.files_from_env()
        self._session: requests.Session | None = None
        self._ssl = None

    # -- synchronous (requests) ------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = internal_tls.mount(requests.Session(), self.tls_files)
            if self.token:
                self._session.headers["Authorization"] = f"token {self.token}"
        return self._session

    def request(self, method: str, path: str, json_body: Any = None) -> Any:
        """``method`` ``path`` (below ``api_url``) with an optional JSON body; the answer's JSON."""
        for attempt in self._attempts(method):
            try:
                r = self.session.request(method, self.api_url + path, timeout=self.timeout,
                                         json=json_body)
            except requests.RequestException as e:
                failure: Exception | int = e
            else:
                if r.status_code not in UNAVAILABLE:
                    return self._answer(method, path, r.status_code, r.content)
                failure = r.status_code
            if not attempt.again(failure):
                raise self._unreachable(failure)
            time.sleep(attempt.wait)

    def answers(self) -> bool:
        """Whether anything answers HTTP at ``api_url`` (any status), asked once: is the hub up?"""
        try:
            self.session.get(self.api_url + "/", timeout=self.timeout)
        except requests.RequestException:
            return False
        return True

    # -- asynchronous (Tornado) ------------------------------------------------------------
    async def fetch(self, method: str, path: str, json_body: Any = None) -> Any:
        """:meth:`request` on the running event loop."""
        headers = {"Authorization": f"token {self.token}"} if self.token else {}
        body = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(json_body)
        if self._ssl is None and self.tls_files is not None:
            self._ssl = internal_tls.client_context(self.tls_files)
        for attempt in self._attempts(method):
            req = HTTPRequest(self.api_url + path, method=method, headers=headers, body=body,
                              request_timeout=self.timeout, ssl_options=self._ssl,
                              allow_nonstandard_methods=True)  # a POST without a body
            try:
                r = await AsyncHTTPClient().fetch(req, raise_error=False)
            except (OSError, HTTPClientError) as e:
                failure: Exception | int = e
            else:
                if r.code == 599:  # Tornado's "no HTTP answer" (refused, timed out)
                    failure = r.error or r.code
                elif r.code not in UNAVAILABLE:
                    return self._answer(method, path, r.code, r.body)
                else:
                    failure = r.code
            if not attempt.again(failure):
                raise self._unreachable(failure)
            await asyncio.sleep(attempt.wait)

    # -- shared ----------------------------------------------------------------------------
    def _attempts(self, method: str):
        return _Attempts(self.retries if method.upper() in IDEMPOTENT else 0, self, method)

    def _answer(self, method: str, path: str, status: int, body: bytes | None) -> Any:
        if status >= 400:
            raise self._refusal(method, path, status, body)
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise PlatformError(f"the hub answered {method} {path} with something that is not JSON "
                                f"({status}); is {self.api_url} the hub's API?") from None

    def _refusal(self, method: str, path: str, status: int, body: bytes | None) -> AidcError:
        message = _message(body)
        error = error_for_status(status)
        if issubclass(error, CALLERS_ERRORS):
            return error(message)
        return PlatformError(f"the hub refused {method} {path}: {status} {message}".rstrip())

    def _unreachable(self, failure: Exception | int) -> PlatformError:
        if isinstance(failure, int):
            return PlatformError(f"the hub at {self.api_url} is not available ({failure})")
        return PlatformError(f"the hub at {self.api_url} stopped answering: {failure}")


class _Attempts:
    """The tries of one request: the first, then ``retries`` more with growing waits."""

    def __init__(self, retries: int, api: HubAPI, method: str):
        self.retries, self.api, self.method = retries, api, method
        self.wait = 0.25

    def __iter__(self):
        for n in range(self.retries + 1):
            self.left = self.retries - n
            yield self

    def again(self, failure: Exception | int) -> bool:
        if self.left <= 0:
            return False
        self.wait *= 2
        log.info("the hub at %s did not answer %s (%s); trying again in %.1f s",
                 self.api.api_url, self.method, failure, self.wait)
        return True


def _message(body: bytes | str | None) -> str:
    """The hub's ``{"status": N, "message": "..."}`` message, or the body's text."""
    if not body:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        model = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(model, dict):
        return str(model.get("message") or model.get("error") or "")
    return text.strip()[:500]
