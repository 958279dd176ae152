"""How aidc's objects show themselves: small HTML tables in a notebook, aligned text in a terminal.

Jupyter shows an object's ``_repr_html_`` (as it does for pandas and Dask objects); the
classes of the Python API (:class:`aidc.jobs.Job`, :class:`~aidc.jobs.Sweep`,
:class:`aidc.models.ModelVersion`, :class:`~aidc.models.Deployment`,
:class:`aidc.client.GPUInventory`) each call one function of this module. The HTML is a
self-contained fragment: inline styles only, no scripts, every value from the platform
escaped with :func:`html.escape` (a job's error or a parameter is text a user typed), and
links only to the platform's own address.

:func:`text_table` is the CLI's one table layout, and :func:`format_value` is how both
show a number (``0.7048``, not ``0.7047549999999999``).
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

#: status -> colour of its badge (anything else: grey)
STATUS_COLOURS = {"completed": "#2e7d32", "ready": "#2e7d32", "free": "#2e7d32",
                  "running": "#1565c0", "serving": "#1565c0",
                  "failed": "#c62828", "not serving": "#c62828",
                  "queued": "#6d6d6d", "cancelled": "#6d6d6d", "starting": "#6d6d6d"}

_TABLE = "border-collapse:collapse;margin:2px 0;font-size:12px"
_CELL = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top"
_NUMBER = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:right;vertical-align:top"


# -- values ---------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A value as a person reads it: floats to 4 significant digits (integers' digits kept),
    very large or small ones in e-notation, ``-`` for nothing, other values as JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0 or 1e-4 <= abs(value) < 1e4:
            return f"{value:.4g}"
        if 1e4 <= abs(value) < 1e15:
            return f"{value:.0f}"
        return f"{value:.3e}"
    if isinstance(value, (int, str)):
        return str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_table(headers: list[str], rows: list[list[Any]], marks: list[str] | None = None) -> str:
    """Columns aligned to their widest cell: numbers right, text left; ``marks`` (one per
    row, e.g. ``"<- best"``) go after the last column."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
               for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) if n else h.ljust(w)
                       for h, w, n in zip(headers, widths, numeric)).rstrip()]
    for i, row in enumerate(cells):
        line = "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric))
        mark = marks[i] if marks else ""
        lines.append(f"{line}  {mark}".rstrip() if mark else line.rstrip())
    return "\n".join(lines)


# -- HTML pieces ------------------------------------------------------------------------
def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6d6d6d")
    return (f'<span style="background:{colour};color:#fff;border-radius:3px;padding:0 5px">'
            f"{escape(status)}</span>")


def _link(href: str | None, text: str) -> str:
    if not href:
        return escape(text)
    return f'<a href="{escape(href, quote=True)}" target="_blank" rel="noopener">{escape(text)}</a>'


def _cell(value: Any, raw: bool = False) -> str:
    style = _NUMBER if _is_number(value) else _CELL
    return f'<td style="{style}">{value if raw else escape(format_value(value))}</td>'


def _box(title: str, *parts: str) -> str:
    """One object's fragment: its title (HTML this module made) over its tables."""
    return (f'<div class="aidc-repr"><div style="font-weight:600;margin:2px 0">{title}</div>'
            f'{"".join(parts)}</div>')


def _fields(rows: list[tuple[str, Any]], raw: set[str] = frozenset()) -> str:
    """A two-column table (HTML): label, value; values in ``raw`` are HTML this module
    made, every other one is escaped; empty values are left out."""
    body = "".join(
        f'<tr><th style="{_CELL};font-weight:600">{escape(label)}</th>'
        f"{_cell(value, raw=label in raw)}</tr>"
        for label, value in rows if value not in (None, "", {}, []))
    return f'<table style="{_TABLE}">{body}</table>'


def _grid(headers: list[str], rows: list[list[Any]], raw_columns: set[int] = frozenset(),
          bold_rows: set[int] = frozenset()) -> str:
    head = "".join(f'<th style="{_CELL};font-weight:600">{escape(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(_cell(v, raw=j in raw_columns) for j, v in enumerate(row))
        style = ' style="font-weight:600"' if i in bold_rows else ""
        body.append(f"<tr{style}>{cells}</tr>")
    return f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(body)}</table>'


def _metrics(metrics: dict) -> str:
    if not metrics:
        return ""
    return _grid(["metric", "value"], [[k, v] for k, v in sorted(metrics.items())])


def _base(url: str | None) -> str:
    return (url or "").rstrip("/")


# -- the objects -----------------------------------------------------------------------------
def job_html(job) -> str:
    """An :class:`aidc.jobs.Job`: status, notebook, parameters, progress, metrics, links."""
    d = job.data
    api = f"{_base(job.url)}/services/jobs/api/jobs/{d['id']}"
    status = _badge(d["status"]) + (f" {escape(d['error'])}" if d.get("error") else "")
    progress = d.get("progress") or {}
    cells = (f"cell {progress['cell'] + 1 if progress.get('cell') is not None else '-'} "
             f"of {progress['cells']}") if progress.get("cells") else None
    series = {name: f"{len(points)} points, last {format_value(points[-1][1])}"
              for name, points in (d.get("series") or {}).items() if points}
    links = " · ".join([_link(f"{api}/output", "output notebook"), _link(f"{api}/logs", "logs")])
    rows = [("status", status), ("notebook", d.get("path")),
            ("parameters", d.get("parameters") or None), ("waiting", d.get("waiting")),
            ("progress", cells), ("attempt", f"{d['attempt']} of {d['retries'] + 1}"
                                  if d.get("retries") else None),
            ("gpus", d.get("gpus") or None), ("owner", d.get("owner")),
            ("created", d.get("created")), ("started", d.get("started")),
            ("finished", d.get("finished")),
            *[(f"series {name}", text) for name, text in sorted(series.items())],
            ("links", links)]
    return _box(f"Job {escape(d['id'])}", _fields(rows, raw={"status", "links"}),
                _metrics(d.get("metrics") or {}))


def sweep_html(sweep) -> str:
    """An :class:`aidc.jobs.Sweep`: its runs side by side, the best one in bold."""
    d = sweep.data
    base = f"{_base(sweep.url)}/services/jobs/api/jobs"
    columns = sweep.columns()[2:]  # after job and status: the parameters, then the metrics
    best = (d.get("best") or {}).get("job")
    rows, bold = [], set()
    for i, r in enumerate(d["runs"]):
        if r["job"] == best:
            bold.add(i)
        values = {**r["parameters"], **r["metrics"]}
        rows.append([_link(f"{base}/{r['job']}/output", r["job"]), _badge(r["status"]),
                     *(values.get(k) for k in columns)])
    counts = ", ".join(f"{n} {status}" for status, n in sorted((d.get("counts") or {}).items()))
    metric = f"{d['metric']} ({d.get('mode', 'max')})" if d.get("metric") else None
    summary = _fields([("notebook", d.get("path")), ("runs", counts), ("metric", metric),
                       ("best", f"{best} (in bold)" if best else sweep.no_best_reason())])
    return _box(f"Sweep {escape(d['id'])}", summary,
                _grid(["job", "status", *columns], rows, raw_columns={0, 1}, bold_rows=bold))


def model_version_html(version) -> str:
    """An :class:`aidc.models.ModelVersion`: format, signature, metrics, where it came from."""
    d = version.data
    base = _base(version.url)
    lineage = d.get("lineage") or {}
    made_by = None
    if lineage.get("job"):
        output = lineage.get("output_notebook")
        notebook = escape(str(lineage.get("notebook") or ""))
        made_by = (f"job {escape(str(lineage['job']))} ({notebook})"
                   + (" · " + _link(f"{base}/{output}", "output notebook") if output else ""))
    rows = [("format", d.get("format")), ("created", d.get("created")), ("by", d.get("created_by")),
            ("size", f"{d['size']:,} bytes" if d.get("size") else None), ("tags", d.get("tags")),
            ("made by", made_by),
            ("endpoint", _link(f"{base}/services/models/v2/models/{d['name']}"
                               f"/versions/{d['version']}", "v2 metadata"))]
    signature = d.get("signature") or {}
    tensors = [[kind, t.get("name"), t.get("datatype"), json.dumps(t.get("shape"))]
               for kind in ("inputs", "outputs") for t in signature.get(kind, [])]
    return _box(f"Model {escape(d['name'])} v{escape(str(d['version']))}",
                _fields(rows, raw={"made by", "endpoint"}),
                _grid(["", "name", "datatype", "shape"], tensors) if tensors else "",
                _metrics(d.get("metrics") or {}))


def deployment_html(deployment) -> str:
    """An :class:`aidc.models.Deployment`: what is served, how many replicas are ready, and
    the endpoint."""
    d = deployment
    ready = "ready" if d.get("ready") else ("serving" if d.get("ready_replicas") else "not serving")
    status = f"{_badge(ready)} {escape(deployment.summary())}"
    endpoint = deployment.endpoint
    stats = d.get("stats") or {}
    rows = []
    for v in d.get("versions") or []:
        s = stats.get(str(v["version"])) or {}
        up = sum(1 for r in v["replicas"] if r["ready"])
        rows.append([f"v{v['version']}", f"{v['weight']:.0%}", f"{up}/{len(v['replicas'])}",
                     sum(r["restarts"] for r in v["replicas"]), v.get("ready_seconds"),
                     s.get("requests", 0), s.get("errors", 0), s.get("mean_latency_ms")])
    fields = [("status", status), ("endpoint", _link(endpoint, endpoint)),
              ("infer", f"POST {endpoint}/infer"), ("gpus", d.get("gpus") or None),
              ("batching", (f"up to {d['max_batch_size']}, waiting "
                            f"{format_value(d['max_queue_delay_ms'])} ms")
               if d.get("max_batch_size") else None),
              ("previous", f"v{d['previous_version']}" if d.get("previous_version") else None),
              ("updated", d.get("updated"))]
    return _box(f"Deployment {escape(deployment.name)}",
                _fields(fields, raw={"status", "endpoint"}),
                _grid(["version", "traffic", "ready", "restarts", "ready in (s)", "requests",
                       "errors", "mean latency (ms)"], rows))


def gpus_html(inventory) -> str:
    """:func:`aidc.gpus`: free counts per kind, every unit and who holds it (as far as you
    may see)."""
    d = inventory
    free = ", ".join(f"{n} {kind}" for kind, n in sorted((d.get("free") or {}).items())) or "none"
    title = "GPUs" + (" (simulated)" if d.get("simulated") else "")
    mine = ", ".join(f"{m['holder']}: {', '.join(m['units'])}" for m in d.get("mine") or [])
    rows = []
    for u in d.get("units") or []:
        state = _badge("free") if u.get("free") else escape(u.get("holder") or "in use")
        memory = f"{u['memory_mb'] / 1024:.0f} GiB" if u.get("memory_mb") else None
        rows.append([escape(u["id"]), escape(u.get("name") or ""), escape(u.get("kind") or ""),
                     escape(format_value(memory)), state])
    return _box(title, _fields([("free", free), ("yours", mine or None)]),
                _grid(["unit", "name", "kind", "memory", "holder"], rows,
                      raw_columns={0, 1, 2, 3, 4}))
