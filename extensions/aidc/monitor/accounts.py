"""CPU and memory of each platform user's processes: their server, its kernels and terminals,
and their jobs' kernels, which all run as the user's Unix account (see :mod:`aidc.accounts`);
and of each of the user's servers, jobs and deployments apart, told by the process (read
once per process): a job's kernel has ``AIDC_JOB_ID`` in its environment, a server and what
it starts the hub's ``JUPYTERHUB_SERVER_NAME``, a model's replica runs ``aidc.models.server
--name MODEL``. Their holders are named as in the GPU ledger (``job:ID``,
``server:USER/NAME``, ``deployment:MODEL``); the user's other processes count for the user only.

Walking every process costs about 0.1 ms each, so the collector does it every
``Collector.user_usage_every`` seconds rather than every sample. CPU is the CPU time the
account's processes used since the previous walk, in percent of one core; a process that
ended in between counts no more.
"""

from __future__ import annotations

import pwd

from ..accounts import DEFAULT_PREFIX
from .attribution import platform_user

#: the module a model's replica runs (:mod:`aidc.models.deployments`), with ``--name MODEL``
REPLICA = "aidc.models.server"


class AccountUsage:
    """Per platform user: ``{"cpu_percent", "memory_bytes", "processes", "holders"}`` at each
    :meth:`sample`, ``holders`` the same three figures per server and job."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at the previous walk
        self._at: float | None = None
        self._holders: dict[tuple[int, float], str | None] = {}  # (pid, start time) -> holder

    def sample(self, now: float) -> dict[str, dict]:
        import psutil

        names: dict[int, str | None] = {}
        usage: dict[str, dict] = {}
        cpu_now: dict[int, float] = {}
        holders_now: dict[tuple[int, float], str | None] = {}
        for p in psutil.process_iter(["uids", "memory_info", "cpu_times", "create_time"]):
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
            key = (p.pid, info["create_time"] or 0.0)
            holder = holders_now[key] = (self._holders[key] if key in self._holders
                                         else holder_of_process(p, user))
            row = usage.setdefault(user, {"cpu_seconds": 0.0, "memory_bytes": 0.0, "processes": 0, "holders": {}})
            rows = [row]
            if holder is not None:
                rows.append(row["holders"].setdefault(
                    holder, {"cpu_seconds": 0.0, "memory_bytes": 0.0, "processes": 0}))
            # a process new since the last walk started within it: all its CPU time counts
            used = max(0.0, seconds - self._cpu.get(p.pid, 0.0))
            rss = float(info["memory_info"].rss if info["memory_info"] else 0)
            for r in rows:
                r["cpu_seconds"] += used
                r["memory_bytes"] += rss
                r["processes"] += 1
        elapsed = (now - self._at) if self._at is not None else None
        self._cpu, self._at, self._holders = cpu_now, now, holders_now

        def figures(row: dict) -> dict:
            return {"cpu_percent": 100.0 * row["cpu_seconds"] / elapsed if elapsed and elapsed > 0 else 0.0,
                    "memory_bytes": row["memory_bytes"], "processes": row["processes"]}

        return {user: {**figures(row), "holders": {h: figures(r) for h, r in row["holders"].items()}}
                for user, row in usage.items()}


def holder_of_process(process, user: str) -> str | None:
    """The server, job or deployment of ``user`` a process belongs to (None: gone,
    unreadable, or none of them)."""
    import psutil

    try:
        env, command = process.environ(), process.cmdline()
    except (psutil.Error, OSError):
        return None
    if env.get("AIDC_JOB_ID"):
        return f"job:{env['AIDC_JOB_ID']}"
    if "JUPYTERHUB_SERVER_NAME" in env and env.get("JUPYTERHUB_USER") == user:
        return f"server:{user}/{env['JUPYTERHUB_SERVER_NAME']}"
    if REPLICA in command and "--name" in command[:-1]:
        return f"deployment:{command[command.index('--name') + 1]}"
    return None
