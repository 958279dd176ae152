"""What the jobs API answers: the one place a job, a sweep, a schedule or an event is
turned into the JSON a client reads (the service's handlers, the CLI, the widgets and the
Lab panel all read these shapes).

Pure functions of stored rows, so a field is added or renamed in one place; what needs the
manager's live state (a queued job's place and what it waits for) is passed in.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics

from ..db import iso
from .store import COMPLETED, FAILED, FINAL, STATUSES


def job_view(job: dict, *, position: int | None, datasets: list[dict], waiting: str | None,
             notices: list[str]) -> dict:
    return {
        "id": job["id"], "owner": job["owner"], "path": job["path"],
        "parameters": job["parameters"], "gpus": job["gpus"], "priority": job["priority"],
        "timeout": job["timeout"], "cell_timeout": job["cell_timeout"],
        "retries": job["retries"], "attempt": job["attempt"], "status": job["status"],
        "error": job["error"], "created": iso(job["created"]), "started": iso(job["started"]),
        "finished": iso(job["finished"]), "units": job["units"],
        "visible_devices": job["visible_devices"], "group": job["group_id"],
        "schedule": job["schedule_id"],
        "progress": {"cell": job["cell"], "cells": job["cells"]},
        "metrics": job["metrics"], "series": job["series"], "queue_position": position,
        "datasets": datasets,
        "waiting": waiting,
        "notices": notices,
        "cancel_requested": bool(job["cancel_requested"]),
        "secrets": list(job.get("secrets") or []),  # names: a value never leaves the service
    }


def sweep_view(sweep: dict, jobs: list[dict]) -> dict:
    """A sweep with its runs (``jobs``, the sweep's jobs) side by side and the best one."""
    runs = []
    for job in sorted(jobs, key=lambda j: (j["created"], j["id"])):
        runs.append({"job": job["id"], "status": job["status"], "parameters": job["parameters"],
                     "metrics": job["metrics"], "error": job["error"]})
    best = None
    metric = sweep["metric"]
    if metric:
        scored = [r for r in runs if r["status"] == COMPLETED
                  and isinstance(r["metrics"].get(metric), (int, float))]
        if scored:
            pick = max if sweep["mode"] == "max" else min
            best = pick(scored, key=lambda r: r["metrics"][metric])
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"id": sweep["id"], "owner": sweep["owner"], "path": sweep["path"], "metric": metric,
            "mode": sweep["mode"], "grid": sweep["grid"], "created": iso(sweep["created"]),
            "counts": counts, "done": all(r["status"] in FINAL for r in runs),
            "runs": runs, "best": best}


def schedule_view(s: dict) -> dict:
    return {"id": s["id"], "owner": s["owner"], "cron": s["cron"], "timezone": s["timezone"],
            "paused": bool(s["paused"]), "next_run": iso(s["next_run"]) if not s["paused"] else None,
            "last_job": s["last_job"], "last_error": s["last_error"], "created": iso(s["created"]),
            **{k: s["spec"].get(k) for k in ("path", "parameters", "gpus")},
            "secrets": list(s["spec"].get("secrets") or [])}


def event_view(e: dict) -> dict:
    return {"seq": e["seq"], "time": iso(e["time"]), "type": e["type"], "cell": e["cell"],
            "name": e["name"], "text": e["text"], "value": e["value"], "status": e["status"]}


#: how a failure's message begins -> its reason, in the words the dashboards show; the rest
#: of a message (an exception's text, a path) is the owner's and stays out of statistics
_REASONS = [
    (re.compile(r"cell \d+ raised (\w[\w.]*)"), r"raised \1"),
    (re.compile(r"ran longer than the cell time limit"), "cell time limit"),
    (re.compile(r"ran longer than its time limit"), "job time limit"),
    (re.compile(r"the kernel died"), "kernel died"),
    (re.compile(r"the worker running the job died"), "worker died"),
    (re.compile(r"could not be (started|followed)"), "could not start"),
    (re.compile(r"input snapshot is missing"), "input missing"),
    (re.compile(r"GPU|quota", re.I), "GPUs not available"),
]


def failure_reason(error: str | None) -> str:
    """A failed job's reason as a short category (``raised ValueError``, ``job time limit``)."""
    for pattern, reason in _REASONS:
        found = pattern.search(error or "")
        if found:
            return found.expand(reason)
    return "other"


def _epoch(value: dt.datetime | None) -> float | None:
    return value.replace(tzinfo=dt.UTC).timestamp() if value else None


def _spread(values: list[float], count: int | None = None) -> dict:
    """Count, median, 90th percentile and maximum (seconds), or only the count when none;
    ``count``: how many there are in all when ``values`` are a bounded window of them."""
    if not values:
        return {"count": count or 0, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)
    return {"count": len(ordered) if count is None else count, "p50": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max": ordered[-1]}


def stats_view(agg: dict, start: float, end: float, now: float) -> dict:
    """What the jobs of ``[start, end)`` (epoch seconds) did, for dashboards and viewers,
    from :meth:`aidc.jobs.store.JobStore.stats_between`'s aggregates: jobs finished in the
    range by status, durations of completed runs, queue waits of runs started in the range
    and of jobs queued now, failures by reason, and the recent jobs (those the caller may
    list) with their recorded metrics and series. Counts are exact; the percentiles are of
    the newest runs and starts and the oldest queued jobs the store hands over. No notebook
    contents: a job is its notebook's file name, its figures and its reason, not its
    parameters or error text."""
    finished = {s: int(agg["finished"].get(s, 0)) for s in STATUSES if s in FINAL}
    reasons: dict[str, int] = {}
    for error, n in agg["errors"]:
        reason = failure_reason(error)
        reasons[reason] = reasons.get(reason, 0) + int(n)
    durations = [_epoch(ended) - _epoch(started) for started, ended in agg["runs"]]
    waits = [max(0.0, _epoch(started) - _epoch(created)) for created, started in agg["starts"]]
    waiting = [max(0.0, now - _epoch(created)) for created in agg["queued"]]
    counts = agg["counts"]
    return {
        "start": iso(dt.datetime.fromtimestamp(start, dt.UTC).replace(tzinfo=None)),
        "end": iso(dt.datetime.fromtimestamp(end, dt.UTC).replace(tzinfo=None)),
        "finished": finished,
        "running": agg["running"],
        "durations": _spread(durations, counts["runs"]),
        "queue_waits": _spread(waits, counts["starts"]),
        "waiting_now": _spread(waiting, counts["queued"]),
        "failures": [{"reason": r, "count": n} for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))],
        "recent": [job_stat_view(j, now) for j in agg["recent"]],
    }


def job_stat_view(job: dict, now: float) -> dict:
    """A job as statistics show it (see :func:`stats_view`)."""
    created, started, ended = _epoch(job["created"]), _epoch(job["started"]), _epoch(job["finished"])
    return {
        "id": job["id"], "owner": job["owner"], "notebook": job["path"].rsplit("/", 1)[-1],
        "status": job["status"], "gpus": job["gpus"], "created": iso(job["created"]),
        "waited": (started - created if started is not None
                   else now - created if ended is None else None),  # None: ended while queued
        "ran": ((ended or now) - started) if started is not None else None,
        "reason": failure_reason(job["error"]) if job["status"] == FAILED else None,
        "metrics": job["metrics"], "series": job["series"],
    }
