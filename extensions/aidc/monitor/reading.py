"""One way for the metrics service to read another process's figures over HTTP: the hub's
Prometheus text, the jobs service's API, the models service's Prometheus text.

Each reader is configured the same way (``url``, ``every``, ``timeout``), authenticates with
the metrics service's own token, keeps one keep-alive session, and turns a failure into an
``OSError`` with a sentence naming who did not answer, which the collector puts in the
snapshot's errors while the other figures go on (:mod:`aidc.monitor.collect`).
"""

from __future__ import annotations

import os

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable


class ServiceReader(LoggingConfigurable):
    """A reader the collector asks every :attr:`every` seconds (subclasses say what to read
    and what it means: :meth:`read`)."""

    #: who answers, for the sentences of errors ("the jobs service")
    source = "the service"

    url = Unicode(help="Where the figures are read (each reader says its default).").tag(config=True)

    every = Float(5.0, min=0.0, help="Seconds between two reads; 0 turns them off.").tag(config=True)

    timeout = Float(5.0, help="Seconds a read may take.").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.url:
            self.url = self.default_url()
        self._token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self._session = None

    def default_url(self) -> str:
        """The URL read when none is configured ('' turns the reader off)."""
        return ""

    @property
    def enabled(self) -> bool:
        return bool(self.every and self.url)

    def refusal_hint(self, status: int) -> str:
        """More words for a refusal (``status``), when the reader knows a likely cause."""
        return ""

    def get(self, url: str, **params):
        """The ``requests`` response of a GET of ``url`` with the metrics service's token;
        ``OSError`` with a sentence when it does not answer or answers other than 200."""
        import requests

        if self._session is None:
            from ..security import internal_tls

            # the hub's API is mutual TLS under internal TLS: the service's certificate
            self._session = internal_tls.mount(requests.Session())
            self._session.headers["Authorization"] = f"token {self._token}"
        try:
            r = self._session.get(url, params=params or None, timeout=self.timeout)
        except requests.RequestException as e:
            raise OSError(f"{self.source} at {self.url} does not answer ({type(e).__name__})") from None
        if r.status_code != 200:
            raise OSError(f"{self.source} answered {r.status_code} for {url}" + self.refusal_hint(r.status_code))
        return r

    def read(self) -> dict:
        raise NotImplementedError
