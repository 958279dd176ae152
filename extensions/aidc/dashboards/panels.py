"""The sections of the four dashboards, as functions ``(page, start, end)`` for
:class:`aidc.dashboards.page.Dashboard` returning HTML and live charts (kept in
``page.memory`` and updated in place); the notebooks in ``notebooks/dashboards/`` only
pick and arrange them."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from . import charts
from .live import LiveLines
from .page import Dashboard, points
from ..models.metrics import histogram_quantile as quantile

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


def _by_label(answer: dict, label: str, prefix: str = "") -> dict[str, list]:
    return {f"{prefix}{s['labels'].get(label, '?')}": points(s) for s in answer.get("series", [])}


def _live(page: Dashboard, key: str, title: str, unit: str = "", top: float | None = None,
          x_steps: bool = False) -> LiveLines:
    """The page's live chart ``key``, made on the first refresh and kept for the next."""
    charts_ = page.memory.setdefault("live", {})
    if key not in charts_:
        charts_[key] = LiveLines(title, unit, top=top, x_steps=x_steps)
    return charts_[key]


# -- Cluster ---------------------------------------------------------------------------
def _current(page: Dashboard, end: float) -> dict:
    """The metrics service's latest sample for this refresh (read once for the sections sharing it)."""
    kept = page.memory.get("current")
    if kept is None or kept[0] != end:
        kept = page.memory["current"] = (end, page.sources.current(page.viewer))
    return kept[1]


def gpu_table(page: Dashboard, start: float, end: float) -> str:
    snap = _current(page, end)
    page.simulated = bool(snap.get("simulated"))
    if snap.get("time") is None:
        return charts.empty("GPUs", snap.get("message", "no sample yet"))
    rows = []
    for g in snap.get("gpus", []):
        holders = ", ".join(f"{h['owner']} ({h['holder']})" for h in g.get("holders", []))
        held = holders or ("held by someone else" if g.get("held") else "free")
        rows.append([g["gpu"], g.get("name", ""), f"{g.get('utilization_percent', 0):.0f} %",
                     f"{g.get('memory_used_bytes', 0) / 2**30:.1f} / {g.get('memory_total_bytes', 0) / 2**30:.1f} GiB",
                     held])
    errors = "".join(f"<p class='aidc-meta'>collector: {e}</p>" for e in snap.get("errors", []))
    return "<h3>GPUs now</h3>" + charts.table(["GPU", "model", "utilization", "memory", "held by"],
                                             rows, "no GPUs on this machine") + errors


def gpu_history(page: Dashboard, start: float, end: float) -> str:
    util = page.sources.history("gpu_utilization_percent", start, end)
    mem = page.sources.history("gpu_memory_used_bytes", start, end)
    page.simulated = page.simulated or bool(util.get("simulated"))
    return [_live(page, "gpu-util", "GPU utilization", "%", top=100).show(_by_label(util, "gpu", "GPU "), start, end),
            _live(page, "gpu-mem", "GPU memory used", "bytes").show(_by_label(mem, "gpu", "GPU "), start, end)]


def _increase(pts: list) -> float:
    """How much a counter grew over its points, across restarts (a drop starts it again at 0),
    as Prometheus' ``increase`` counts it."""
    return sum(b - a if b >= a else b for (_t, a), (_u, b) in zip(pts, pts[1:]))


def hub_activity(page: Dashboard, start: float, end: float) -> list:
    """The hub's own figures (JupyterHub's metrics, read by the metrics service): users,
    running servers over the range, and how long servers took to start, since the hub
    started (its buckets) and in the range (the history of its count and sum)."""
    hub = _current(page, end).get("hub") or {}
    running = page.sources.history("hub_running_servers", start, end)
    chart = _live(page, "hub-servers", "Running user servers").show(
        {"servers": [p for s in running.get("series", []) for p in points(s)]}, start, end)
    if not hub:
        return ["<h3>Hub</h3>" + charts.empty("Hub", "the hub's figures are not read yet"), chart]
    spawns = hub.get("spawns", {})
    done = spawns.get("success") or {"count": 0, "sum": 0, "buckets": []}
    buckets = [(float(le), n) for le, n in done["buckets"]]
    failed = sum(r["count"] for status, r in spawns.items() if status != "success")
    active = hub.get("active_users", {})
    mean = done["sum"] / done["count"] if done["count"] else None
    grown = [sum(_increase(points(s)) for s in page.sources.history(m, start, end, status="success").get("series", []))
             for m in ("hub_spawns", "hub_spawn_seconds")]
    return ["<h3>Hub</h3><div class='aidc-hub'>" + charts.table(
        ["users", "active in 24 h", "running servers", "servers started", "spawns failed",
         "spawn median", "spawn 90th percentile", "spawn mean", "started in this range", "their mean"],
        [[f"{hub.get('users', 0):.0f}", f"{active.get('24h', 0):.0f}", f"{hub.get('running_servers', 0):.0f}",
          f"{done['count']:.0f}", f"{failed:.0f}", _seconds(quantile(buckets, 0.5)),
          _seconds(quantile(buckets, 0.9)), _seconds(mean), f"{grown[0]:.0f}",
          _seconds(grown[1] / grown[0] if grown[0] else None)]])
        + "<p class='aidc-meta'>spawns since the hub started, and in the range chosen "
        "(JupyterHub's own figures)</p></div>", chart]


def queue(page: Dashboard, start: float, end: float) -> str:
    s = page.sources.jobs_summary()
    counts = s.get("counts", {})
    waiting = page.sources.gpu_queue(page.viewer)
    rows = [[w["position"], w["kind"], w["count"], w["holder_kind"],
             f"{w['owner']} ({w['holder']})" if w.get("owner") else "someone else",
             _seconds(w.get("waited"))] for w in waiting]
    return ("<h3>Job queue</h3>" + charts.table(
        ["queued", "running", "GPUs held by running jobs"],
        [[s.get("queued", 0), counts.get("running", 0), s.get("running_gpus", 0)]])
        + "<h3>GPU queue</h3><div class='aidc-gpu-queue'>"
        + charts.table(["place", "unit kind", "GPUs", "for a", "who", "waiting for"], rows,
                       "no one waits for a GPU")
        + "</div>")


def host_load(page: Dashboard, start: float, end: float) -> str:
    cpu = page.sources.history("host_cpu_percent", start, end)
    mem = page.sources.history("host_memory_used_bytes", start, end)
    return [_live(page, "host-cpu", "Host CPU", "%", top=100).show(
                {"CPU": [p for s in cpu["series"] for p in points(s)]}, start, end),
            _live(page, "host-mem", "Host memory used", "bytes").show(
                {"memory": [p for s in mem["series"] for p in points(s)]}, start, end)]


# -- Usage and cost --------------------------------------------------------------------
def usage(page: Dashboard, start: float, end: float) -> str:
    u = page.sources.accounting(page.viewer, start, end)
    cur = u.get("currency", "")
    total = u.get("total", {})
    parts = [f"<h3>GPU-hours and cost</h3><p>In all: <b>{total.get('gpu_hours_total', 0):.3f}</b> GPU-hours, "
             f"<b>{total.get('job_hours', 0):.3f}</b> job-hours, cost <b>{total.get('cost', 0):.2f} {cur}</b>"
             + ("" if page.viewer.sees_everyone else " (the rows below are yours and your groups')") + "</p>"]
    for scope in ("users", "groups"):
        rows = u.get(scope, [])
        parts.append(charts.bar_chart(f"GPU-hours by {scope[:-1]}",
                                      [(r["name"], r["gpu_hours_total"]) for r in rows], "h"))
        parts.append(charts.bar_chart(f"Cost by {scope[:-1]} ({cur})", [(r["name"], r["cost"]) for r in rows]))
    # the browser downloads it itself, as the viewer: the metrics service applies its own rule
    links = " ".join(
        f'<a class="aidc-csv" download href="/services/metrics/api/accounting.csv?'
        f'{urlencode({"start": f"{start:.0f}", "end": f"{end:.0f}", "by": by})}">CSV by {by}</a>'
        for by in ("user", "group"))
    return "".join(parts) + f"<p>Download: {links}</p>"


# -- Jobs ------------------------------------------------------------------------------
def job_counts(page: Dashboard, start: float, end: float) -> str:
    s = page.sources.jobs_summary()
    counts = s.get("counts", {})
    done = counts.get("completed", 0) + counts.get("failed", 0)
    rate = f"{100 * counts.get('completed', 0) / done:.0f} %" if done else "no finished job yet"
    trend = page.memory.setdefault("job_trend", [])
    trend.append((time.time(), counts))
    del trend[:-720]
    series = {name: [(t, c.get(name, 0)) for t, c in trend] for name in ("queued", "running")}
    return [f"<h3>Jobs</h3><p>Success rate of finished jobs: <b class='aidc-success-rate'>{rate}</b> "
            f"({counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
            f"{counts.get('cancelled', 0)} cancelled)</p>"
            + charts.bar_chart("Jobs by status", [(k, counts.get(k, 0)) for k in JOB_STATUSES]),
            _live(page, "job-trend", "Queued and running while this page is open").show(series)]


def _stats(page: Dashboard, start: float, end: float) -> dict:
    """The jobs service's statistics for this refresh (read once for the sections sharing them)."""
    kept = page.memory.get("job_stats")
    if kept is None or kept[0] != (start, end):
        kept = page.memory["job_stats"] = ((start, end), page.sources.jobs_stats(page.viewer, start, end))
    return kept[1]


def _seconds(value) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def job_times(page: Dashboard, start: float, end: float) -> str:
    st = _stats(page, start, end)
    rows = [[what, sp["count"], _seconds(sp["p50"]), _seconds(sp["p90"]), _seconds(sp["max"])]
            for what, sp in (("run time of completed jobs", st["durations"]),
                             ("queue wait of jobs started", st["queue_waits"]),
                             ("waiting now", st["waiting_now"]))]
    finished = st.get("finished", {})
    return ("<h3>In this range</h3>"
            + charts.table(["", "jobs", "median", "90th percentile", "longest"], rows)
            + charts.bar_chart("Finished jobs by status", [(k, finished.get(k, 0)) for k in JOB_STATUSES[2:]])
            + "<div class='aidc-failures'>"
            + charts.bar_chart("Failures by reason", [(f["reason"], f["count"]) for f in st.get("failures", [])])
            + "</div>")


def queue_waits(page: Dashboard, start: float, end: float) -> str:
    """How long jobs waited for their start in the range, and those waiting now."""
    st = _stats(page, start, end)
    rows = [[what, sp["count"], _seconds(sp["p50"]), _seconds(sp["p90"]), _seconds(sp["max"])]
            for what, sp in (("jobs started", st["queue_waits"]), ("waiting now", st["waiting_now"]))]
    return ("<h3>Queue waits</h3><div class='aidc-queue-waits'>"
            + charts.table(["", "jobs", "median", "90th percentile", "longest"], rows) + "</div>")


def _figures(metrics: dict) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())[:4]]
    return ", ".join(shown) + (" ..." if len(metrics) > 4 else "") if shown else "-"


def recent_jobs(page: Dashboard, start: float, end: float) -> str:
    st = _stats(page, start, end)
    recent = st.get("recent", [])
    rows = [[j["id"], j["owner"], j["notebook"], j["status"], j["gpus"], _seconds(j.get("waited")),
             _seconds(j.get("ran")), j.get("reason") or "-", _figures(j.get("metrics") or {})] for j in recent]
    curves = [_live(page, f"curve-{j['id']}", f"Training curves of {j['id']} ({j['notebook']})", x_steps=True)
              .show({name: [(float(step), float(v)) for step, v in pts
                            if isinstance(v, (int, float)) and not isinstance(v, bool)]
                     for name, pts in sorted(j["series"].items())[:6]})
              for j in recent if j.get("series")][:4]
    for curve in curves:
        curve.add_class("aidc-curve")
    shown = {f"curve-{j['id']}" for j in recent if j.get("series")}
    for key in [k for k in page.memory.get("live", {}) if k.startswith("curve-") and k not in shown]:
        del page.memory["live"][key]  # a job no longer listed: its chart goes
    mine = "" if page.viewer.sees_everyone else " (yours)"
    return [f"<h3>Recent jobs{mine}</h3><div class='aidc-recent-jobs'>"
            + charts.table(["job", "owner", "notebook", "status", "GPUs", "waited", "ran", "reason", "metrics"],
                           rows, "no job in this range") + "</div>", *curves]


# -- Models ----------------------------------------------------------------------------
def endpoints(page: Dashboard, start: float, end: float) -> str:
    figures = page.sources.endpoint_metrics()
    per: dict[tuple[str, str], dict] = {}
    for (name, labels), value in figures.items():
        lb = dict(labels)
        if "model" not in lb:
            continue
        e = per.setdefault((lb["model"], lb.get("version", "")),
                           {"requests": 0.0, "errors": 0.0, "buckets": [], "batches": {}})
        if "replica" in lb:  # what each replica did: batch sizes, summed over the replicas
            if name == "aidc_model_batch_size_bucket":
                le = float(lb["le"])
                e["batches"][le] = e["batches"].get(le, 0.0) + value
            continue
        if name == "aidc_endpoint_requests_total":
            e["requests"] += value
        elif name == "aidc_endpoint_request_errors_total":
            e["errors"] += value
        elif name == "aidc_endpoint_request_duration_seconds_bucket":
            e["buckets"].append((float(lb["le"]), value))
    now = time.time()
    before = page.memory.get("endpoint_counts")
    page.memory["endpoint_counts"] = (now, {k: e["requests"] for k, e in per.items()})
    rows = []
    for (model, version), e in sorted(per.items()):
        rps = "-"
        if before and now > before[0] and (model, version) in before[1]:
            rps = f"{(e['requests'] - before[1][(model, version)]) / (now - before[0]):.2f}"
        p50, p99 = quantile(e["buckets"], 0.5), quantile(e["buckets"], 0.99)
        batch = quantile(list(e["batches"].items()), 0.5)
        rows.append([model, version, f"{e['requests']:.0f}", rps, f"{e['errors']:.0f}",
                     "-" if p50 is None else f"{p50 * 1000:.1f} ms", "-" if p99 is None else f"{p99 * 1000:.1f} ms",
                     "-" if batch is None else f"{batch:.1f}"])
    served = sorted((k, e) for k, e in per.items() if e["requests"] or e["buckets"])
    return ["<h3>Endpoints</h3>"
            + charts.bar_chart("Requests by endpoint", [(f"{m} v{v}", e["requests"]) for (m, v), e in served])
            + charts.table(["model", "version", "requests", "requests/s", "errors", "p50", "p99", "batch size p50"],
                           rows, "no inference request yet"),
            *endpoint_history(page, start, end)]


def _rate(pts: list) -> list[tuple[float, float]]:
    """A counter's points as its rate per second between each two (a drop is a restart:
    the counter starts again at 0, as Prometheus' ``rate`` takes it)."""
    return [(u, (b - a if b >= a else b) / (u - t)) for (t, a), (u, b) in zip(pts, pts[1:]) if u > t]


def _by_endpoint(answer: dict, change=None) -> dict[str, list]:
    return {f"{s['labels'].get('model', '?')} v{s['labels'].get('version', '?')}":
            (change or (lambda pts: pts))(points(s)) for s in answer.get("series", [])}


def endpoint_history(page: Dashboard, start: float, end: float) -> list:
    """Each endpoint over the range, from the metrics service's history of the models
    service's figures (:mod:`aidc.monitor.endpoints`): requests per second (a canary's split
    is its versions side by side) and the 99th percentile of latency."""
    requests = page.sources.history("endpoint_requests", start, end)
    p99 = page.sources.history("endpoint_latency_p99_seconds", start, end)
    return [_live(page, "endpoint-rate", "Requests per second by endpoint", "req/s").show(
                _by_endpoint(requests, _rate), start, end),
            _live(page, "endpoint-p99", "Latency p99 by endpoint", "s").show(_by_endpoint(p99), start, end)]


def model_versions(page: Dashboard, start: float, end: float) -> str:
    rows = []
    for m in page.sources.models():
        dep = m.get("deployment") or {}
        found = m.get("aliases") or {}
        pairs = found.items() if isinstance(found, dict) else [(a.get("alias"), a.get("version")) for a in found]
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(pairs, key=str))
        canary = (f"v{dep['canary_version']} at {dep['canary_weight']} %" if dep.get("canary_version") else "-")
        rows.append([m["name"], ", ".join(str(v["version"]) for v in m.get("versions", [])), aliases or "-",
                     f"v{dep['version']}" if dep else "not deployed", canary])
    return "<h3>Models</h3>" + charts.table(["model", "versions", "aliases", "serving", "canary"], rows,
                                            "no model visible to the dashboards")
