"""CPU and memory of each platform user's processes: their server, its kernels and terminals,
and their jobs' kernels, which all run as the user's Unix account (see :mod:`aidc.accounts`).

Walking every process costs about 0.1 ms each, so the collector does it every
``Collector.user_usage_every`` seconds rather than every sample. CPU is the CPU time the
account's processes used since the previous walk, in percent of one core; a process that
ended in between counts no more.
"""

from __future__ import annotations

import pwd

from ..accounts import DEFAULT_PREFIX
from .attribution import platform_user


class AccountUsage:
    """Per platform user: ``{"cpu_percent", "memory_bytes", "processes"}`` at each :meth:`sample`."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at the previous walk
        self._at: float | None = None

    def sample(self, now: float) -> dict[str, dict]:
        import psutil

        names: dict[int, str | None] = {}
        usage: dict[str, dict] = {}
        cpu_now: dict[int, float] = {}
        for p in psutil.process_iter(["uids", "memory_info", "cpu_times"]):
            info = p.info
            if info["uids"] is None or info["cpu_times"] is None:
                continue  # gone, or not ours to read
            uid = info["uids"].real
            if uid not in names:
                try:
                    names[uid] = platform_user(pwd.getpwuid(uid).pw_name, self.prefix)
                except KeyError:
                    names[uid] = None
            user = names[uid]
            if user is None:
                continue
            seconds = info["cpu_times"].user + info["cpu_times"].system
            cpu_now[p.pid] = seconds
            row = usage.setdefault(user, {"cpu_seconds": 0.0, "memory_bytes": 0.0, "processes": 0})
            # a process new since the last walk started within it: all its CPU time counts
            row["cpu_seconds"] += max(0.0, seconds - self._cpu.get(p.pid, 0.0))
            row["memory_bytes"] += float(info["memory_info"].rss if info["memory_info"] else 0)
            row["processes"] += 1
        elapsed = (now - self._at) if self._at is not None else None
        self._cpu, self._at = cpu_now, now
        return {user: {"cpu_percent": 100.0 * row["cpu_seconds"] / elapsed if elapsed and elapsed > 0 else 0.0,
                       "memory_bytes": row["memory_bytes"], "processes": row["processes"]}
                for user, row in usage.items()}
