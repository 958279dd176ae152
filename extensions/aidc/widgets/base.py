"""What every aidc widget shares: the one client, a message line, actions off the kernel's
thread, the live refresh, and closing.

A widget calls the platform only through :class:`aidc.client.Client` (and the Python API
built on it), as the CLI does. A refusal or failure is shown in the widget itself, as the
text of the :mod:`aidc.errors` exception (written for the user); anything else is shown
as an unexpected error and logged with its traceback. Actions that may take long (a
deploy waits for its replicas, a restart for the new server) run in one worker thread
per widget, with its buttons disabled meanwhile, so the kernel stays free.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import ipywidgets as widgets
import requests

from ..client import Client
from ..errors import AidcError, AuthenticationError, NotFoundError, PermissionDeniedError
from . import markup
from .refresh import Refresher

log = logging.getLogger(__name__)

#: refusals that asking again will not change: the live refresh stops after one of them
FINAL_REFUSALS = (NotFoundError, PermissionDeniedError, AuthenticationError)


def describe(e: BaseException, client: Client | None = None) -> str:
    """The text a widget shows for ``e``."""
    if isinstance(e, (AidcError, TimeoutError)):
        return str(e)
    if isinstance(e, requests.Timeout):
        within = f" within {client.timeout:g} s" if client is not None else ""
        return f"the platform did not answer{within}; it may be busy, try again"
    return f"unexpected error ({type(e).__name__}): {e}"


class PlatformWidget(widgets.VBox):
    """Base of the aidc widgets: ``client`` (default: the environment's, as everywhere in
    aidc), ``refresh_seconds`` (0 or None: no live refresh)."""

    #: the live refresh's interval when none is given; 0 for widgets that do not refresh
    default_refresh_seconds: float = 0

    def __init__(self, client: Client | None = None, refresh_seconds: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.message = widgets.HTML()
        self.message.add_class("aidc-w-message")
        #: the text of the error the widget shows, None when it shows none
        self.error: str | None = None
        self._refresh_failed = False
        self._state_lock = threading.RLock()
        self._actions: ThreadPoolExecutor | None = None
        self._refresher: Refresher | None = None
        self.refresh_seconds = (self.default_refresh_seconds if refresh_seconds is None
                                else refresh_seconds)
        self.buttons: list[widgets.Button] = []
        try:
            self.client: Client | None = client or Client()
        except AidcError as e:  # no platform address or token: say so where the widget is
            self.client = None
            self.show_error(e)

    # -- messages ---------------------------------------------------------------------
    def show_error(self, e: BaseException | str) -> None:
        text = e if isinstance(e, str) else describe(e, self.client)
        if not isinstance(e, (str, AidcError, TimeoutError, requests.Timeout)):
            log.error("aidc widget %s", type(self).__name__, exc_info=e)
        with self._state_lock:
            self.error = text
            self.message.value = markup.error(text)

    def show_info(self, text: str) -> None:
        with self._state_lock:
            self.error = None
            self.message.value = markup.info(text)

    def clear_message(self) -> None:
        with self._state_lock:
            self.error = None
            self.message.value = ""

    # -- calls ------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` here and now; an error is shown and None returned."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.show_error(e)
            return None

    def act(self, fn: Callable[[], Any], busy: str) -> Future:
        """Run ``fn`` in the widget's worker thread, saying ``busy`` and with the buttons
        disabled until it ends; the future gives its result (None after an error)."""
        if self._actions is None:
            self._actions = ThreadPoolExecutor(1, thread_name_prefix=f"aidc-{type(self).__name__}")
        self.show_info(busy)
        self._set_busy(True)

        def run():
            try:
                return fn()
            except Exception as e:
                self.show_error(e)
                return None
            finally:
                self._set_busy(False)

        return self._actions.submit(run)

    def refused(self, message: str) -> Future:
        """An action refused before any call: the message, and a future that is already done."""
        self.show_error(message)
        done: Future = Future()
        done.set_result(None)
        return done

    def _set_busy(self, busy: bool) -> None:
        for b in self.buttons:
            b.disabled = busy

    # -- live refresh -----------------------------------------------------------------
    def refresh(self) -> None:
        """Read the platform and show it (a subclass's job); errors are raised."""

    def start_refresh(self) -> None:
        """Refresh now and then every ``refresh_seconds`` in a background thread, until
        closed or refused for good (:data:`FINAL_REFUSALS`: a job that is not there, a
        revoked token); a platform that does not answer is asked again."""
        if self.client is None or not self.refresh_seconds or self._refresher is not None:
            return
        self._refresher = Refresher(self._tick, self.refresh_seconds,
                                    name=f"aidc-{type(self).__name__}-refresh").start()

    def stop_refresh(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()

    @property
    def refreshing(self) -> bool:
        """Whether the live refresh runs (False once the widget is closed)."""
        return self._refresher is not None and self._refresher.running

    def _tick(self) -> None:
        try:
            self.refresh()
        except Exception as e:
            self._refresh_failed = True
            self.show_error(e)
            if isinstance(e, FINAL_REFUSALS):
                self.stop_refresh()
            return
        if self._refresh_failed:  # the service answers again: its message goes
            self._refresh_failed = False
            self.clear_message()

    def close(self) -> None:
        """Stop refreshing and the worker thread, then close the widget (and its parts)."""
        self.stop_refresh()
        if self._actions is not None:
            self._actions.shutdown(wait=False, cancel_futures=True)
        for child in self.children:
            child.close()
        super().close()
