"""Login throttling: slow down password guessing at the hub's login page.

Failures are counted per user name and per client address within a sliding window;
past the limit, further attempts are refused (HTTP 429) until the lockout ends,
*whatever the password*, so a guesser learns nothing from them. The counters live in
the hub process: a restart forgives, which is acceptable for throttling (the audit log
keeps every attempt).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

from traitlets import Integer
from traitlets.config import LoggingConfigurable


class LoginThrottle(LoggingConfigurable):
    """Sliding-window failure counter with a lockout."""

    max_failures_per_user = Integer(
        5,
        help="""Failed sign-ins for one user name, within `window_seconds`,
        after which that name is locked out for `lockout_seconds`.""",
    ).tag(config=True)

    max_failures_per_ip = Integer(
        20,
        help="""Failed sign-ins from one client address, within `window_seconds`,
        after which that address is locked out (stops guessing across many names).""",
    ).tag(config=True)

    window_seconds = Integer(300, help="Length of the window in which failures count.").tag(
        config=True
    )

    lockout_seconds = Integer(
        60, help="How long a locked-out user name or address must wait."
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._locked_until: dict[str, float] = {}

    def _keys(self, username: str, ip: str | None) -> list[tuple[str, int]]:
        # OAuth callbacks carry no user name: only the address counts then
        keys = [(f"user:{username}", self.max_failures_per_user)] if username else []
        if ip:
            keys.append((f"ip:{ip}", self.max_failures_per_ip))
        return keys

    def retry_after(self, username: str, ip: str | None, now: float | None = None) -> int:
        """Seconds until this user name/address may try again; 0 when not locked."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key, _ in self._keys(username, ip):
            until = self._locked_until.get(key, 0.0)
            if until > now:
                wait = max(wait, until - now)
        return int(wait + 0.999)

    def failure(self, username: str, ip: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key, limit in self._keys(username, ip):
            q = self._failures[key]
            q.append(now)
            while q and q[0] < now - self.window_seconds:
                q.popleft()
            if len(q) >= limit:
                self._locked_until[key] = now + self.lockout_seconds
                q.clear()
                self.log.warning("aidc: too many failed sign-ins for %s; locked out", key)

    def success(self, username: str, ip: str | None) -> None:
        self._failures.pop(f"user:{username}", None)
