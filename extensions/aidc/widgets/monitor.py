"""``JobMonitor``: a job's or a sweep's live progress, with cancel.

For a job: its status, each cell as it starts and ends (the job's events, read from the
last one seen on), its metrics, and a small chart of a recorded series. For a sweep: its
runs side by side, the best one marked. It refreshes every ``refresh_seconds`` until the
job or sweep has ended, then stops on its own.
"""

from __future__ import annotations

from concurrent.futures import Future
from html import escape

import ipywidgets as widgets

from ..display import format_value
from ..jobs.client import API, FINAL, Job, Sweep
from . import markup
from .base import PlatformWidget

#: a cell's state as the widget shows it -> its badge's status colour
CELL_STATES = {"running": "running", "ok": "completed", "error": "failed"}


class JobMonitor(PlatformWidget):
    """``JobMonitor(job)``, ``JobMonitor("job-id")``, ``JobMonitor(sweep)`` or
    ``JobMonitor("sweep-id", kind="sweep")``."""

    default_refresh_seconds = 1.0

    def __init__(self, target: Job | Sweep | str, kind: str = "job", client=None,
                 refresh_seconds: float | None = None, **kwargs):
        if isinstance(target, (Job, Sweep)):
            client = client or target._client
            kind = "sweep" if isinstance(target, Sweep) else "job"
            target = target.id
        if kind not in ("job", "sweep"):
            raise ValueError("kind is 'job' or 'sweep'")
        super().__init__(client, refresh_seconds, **kwargs)
        self.kind, self.id = kind, target
        #: what the service said at the last refresh
        self.data: dict = {}
        #: each cell's state (running, ok, error) by index, from the job's events
        self.cells: dict[int, str] = {}
        self._seq = 0
        self.header = widgets.HTML(f"<b>{kind.title()} {escape(target)}</b>")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="",
                                            layout=widgets.Layout(width="320px"))
        self.progress_text = widgets.HTML()
        self.table = widgets.HTML()
        self.metrics = widgets.HTML()
        self.chart = None
        self.cancel_button = widgets.Button(description="Cancel", button_style="danger",
                                            icon="stop")
        self.cancel_button.on_click(lambda _button: self.cancel())
        self.buttons = [self.cancel_button]
        self.children = [self.header, widgets.HBox([self.progress, self.progress_text]), self.table,
                         self.metrics, self.cancel_button, self.message]
        self.add_class("aidc-w-monitor")
        self.start_refresh()

    @property
    def status(self) -> str | None:
        """The job's status, or for a sweep ``done``/``running``; None before the first read."""
        if not self.data:
            return None
        if self.kind == "sweep":
            return "done" if self.data.get("done") else "running"
        return self.data["status"]

    @property
    def ended(self) -> bool:
        return self.status in (*FINAL, "done")

    def refresh(self) -> None:
        if self.kind == "sweep":
            data = self.client.get_json(f"{API}/sweeps/{self.id}")
            with self._state_lock:
                self._show_sweep(data)
                self.data = data  # last: what status says is on screen
        else:
            data = self.client.get_json(f"{API}/jobs/{self.id}")
            events = self.client.get_json(f"{API}/jobs/{self.id}/events",
                                          params={"after": self._seq})["events"]
            with self._state_lock:
                self._take_events(events)
                self._show_job(data)
                self.data = data  # last: what status says is on screen
        if self.ended:  # nothing more will change
            self.stop_refresh()

    def _take_events(self, events: list[dict]) -> None:
        for e in events:
            self._seq = max(self._seq, e["seq"])
            if e["type"] == "cell_start" and e["cell"] is not None:
                self.cells[e["cell"]] = "running"
            elif e["type"] == "cell_end" and e["cell"] is not None:
                self.cells[e["cell"]] = "error" if e.get("status") == "failed" else "ok"

    def _show_job(self, d: dict) -> None:
        error = f" {escape(d['error'])}" if d.get("error") else ""
        queued = d["status"] == "queued" and d.get("waiting")
        waiting = f" ({escape(d['waiting'])})" if queued else ""
        self.header.value = (f"<b>Job {escape(d['id'])}</b> {escape(d['path'])} "
                             f"{markup.badge(d['status'])}{waiting}{error}")
        cells = (d.get("progress") or {}).get("cells") or 0
        done = sum(1 for state in self.cells.values() if state != "running")
        if d["status"] == "completed":
            done = cells or done
        self.progress.max = max(cells, 1)
        self.progress.value = min(done, self.progress.max)
        self.progress_text.value = f"{done} of {cells} cells" if cells else ""
        self.table.value = markup.table(
            ["cell", "state"], [[str(i + 1), markup.badge(CELL_STATES.get(state, state), state)]
                                for i, state in sorted(self.cells.items())]) if self.cells else ""
        metrics = d.get("metrics") or {}
        self.metrics.value = markup.table(
            ["metric", "value"],
            [[escape(k), escape(format_value(v))] for k, v in sorted(metrics.items())]
        ) if metrics else ""
        if d.get("series"):
            if self.chart is None:
                from .chart import SeriesChart

                self.chart = SeriesChart()
                self.children = [*self.children[:4], self.chart, *self.children[4:]]
            self.chart.show(d["series"])
        self.cancel_button.disabled = d["status"] in FINAL

    def _show_sweep(self, d: dict) -> None:
        runs = d.get("runs") or []
        counts = ", ".join(f"{n} {s}" for s, n in sorted((d.get("counts") or {}).items()))
        self.header.value = f"<b>Sweep {escape(d['id'])}</b> {escape(d['path'])} ({escape(counts)})"
        finished = sum(1 for r in runs if r["status"] in FINAL)
        self.progress.max = max(len(runs), 1)
        self.progress.value = finished
        self.progress_text.value = f"{finished} of {len(runs)} runs ended"
        best = (d.get("best") or {}).get("job")
        metric = d.get("metric")
        rows = []
        for r in runs:
            params = ", ".join(f"{k}={format_value(v)}" for k, v in r["parameters"].items())
            value = format_value(r["metrics"].get(metric)) if metric else ""
            mark = "<b>best</b>" if r["job"] == best else ""
            rows.append([escape(r["job"]), markup.badge(r["status"]), escape(params),
                         escape(value), mark])
        self.table.value = markup.table(["job", "status", "parameters", metric or "", ""], rows)
        self.cancel_button.disabled = bool(d.get("done"))

    def cancel(self) -> Future:
        """Cancel the job, or every run of the sweep that has not ended."""
        if self.client is None:
            return self.refused(self.error or "no platform to call")

        def cancel():
            if self.kind == "job":
                Job({"id": self.id}, self.client).cancel()
            else:
                for r in self.client.get_json(f"{API}/sweeps/{self.id}")["runs"]:
                    if r["status"] not in FINAL:
                        Job({"id": r["job"]}, self.client).cancel()
            self.refresh()
            self.show_info(f"{self.kind} {self.id} cancelled")
        return self.act(cancel, f"cancelling {self.kind} {self.id}")

