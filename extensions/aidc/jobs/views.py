"""What the jobs API answers: the one place a job, a sweep, a schedule or an event is
turned into the JSON a client reads (the service's handlers, the CLI, the widgets and the
Lab panel all read these shapes).

Pure functions of stored rows, so a field is added or renamed in one place; what needs the
manager's live state (a queued job's place and what it waits for) is passed in.
"""

from __future__ import annotations

from ..db import iso
from .store import COMPLETED, FINAL


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
            **{k: s["spec"].get(k) for k in ("path", "parameters", "gpus")}}


def event_view(e: dict) -> dict:
    return {"seq": e["seq"], "time": iso(e["time"]), "type": e["type"], "cell": e["cell"],
            "name": e["name"], "text": e["text"], "value": e["value"], "status": e["status"]}
