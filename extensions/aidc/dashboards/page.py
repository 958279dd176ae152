"""The frame every dashboard notebook shares: title, the *simulated* label, a time-range
selector, live refresh, and a message in place of a section whose service is down.

A dashboard notebook is a few lines: sections are functions ``(page, start, end)``
returning HTML, a widget (a live chart, :mod:`.live`) or a list of both, and
:meth:`Dashboard.show` draws them, then redraws them every ``refresh_seconds`` from a
timer in the kernel (the page is not reloaded; the widgets' values change) and whenever
the range changes. A section that raises :class:`~aidc.dashboards.sources.SourceDown`
shows that message; the others draw as usual.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from typing import Callable

import ipywidgets as widgets
from IPython.display import display

from .sources import SourceDown, Sources, Viewer

log = logging.getLogger(__name__)

RANGES = [("Last 5 minutes", 300), ("Last 15 minutes", 900), ("Last hour", 3600), ("Last 6 hours", 6 * 3600),
          ("Last 24 hours", 86400), ("Last 7 days", 7 * 86400), ("Last 30 days", 30 * 86400)]

STYLE = """<style>
.aidc-dash h2 { margin: 0.2em 0; }
.aidc-simulated { background: #fff3cd; color: #664d03; border: 1px solid #ffe69c;
  border-radius: 4px; padding: 2px 8px; font-weight: bold; margin-left: 1em; }
.aidc-down { background: #f8d7da; color: #58151c; border: 1px solid #f1aeb5;
  border-radius: 4px; padding: 6px 10px; }
.aidc-table { border-collapse: collapse; } .aidc-table td, .aidc-table th { border: 1px solid #ddd; padding: 2px 8px; }
.aidc-meta { color: #666; font-size: 12px; }
</style>"""

Section = Callable[["Dashboard", float, float], "str | widgets.Widget | list"]


class Dashboard:
    """One dashboard page: ``Dashboard("Cluster", [gpus, queue, host]).show()``."""

    def __init__(self, title: str, sections: list[Section], default_range: int = 3600,
                 refresh_seconds: float = 5.0, sources: Sources | None = None):
        self.title = title
        self.sections = sections
        self.refresh_seconds = refresh_seconds
        self.viewer = Viewer.current()
        self.sources = sources or Sources()
        self.simulated = False
        #: what sections keep between refreshes (e.g. the previous counter reading)
        self.memory: dict = {}
        self.header = widgets.HTML()
        self.meta = widgets.HTML()
        self.range = widgets.Dropdown(options=RANGES, value=default_range, description="Range")
        self.parts = [widgets.VBox() for _ in sections]
        self._html: list[list[widgets.HTML]] = [[] for _ in sections]  # reused between refreshes
        self.range.observe(lambda _change: self.refresh(), names="value")
        self._timer = None

    def show(self) -> None:
        display(widgets.VBox([self.header, widgets.HBox([self.range, self.meta]), *self.parts],
                             layout=widgets.Layout(width="100%")))
        self.refresh()
        self._schedule()

    def refresh(self) -> None:
        end = time.time()
        start = end - self.range.value
        for i, section in enumerate(self.sections):
            try:
                drawn = section(self, start, end)
            except SourceDown as e:
                drawn = down(str(e))
            except Exception as e:  # one broken section must not take the page with it
                log.exception("dashboard section %s", getattr(section, "__name__", section))
                drawn = down(f"this part could not be drawn: {type(e).__name__}: {e}")
            self._place(i, drawn)
        label = ('<span class="aidc-simulated" title="no real GPU: the inventory is simulated">'
                 'simulated figures</span>' if self.simulated else "")
        self.header.value = (f'{STYLE}<div class="aidc-dash"><h2>{html.escape(self.title)}{label}</h2>'
                             f'<a href="./">all dashboards</a></div>')
        who = f"{self.viewer.name} ({self.viewer.role})" if self.viewer.name else "unknown viewer"
        self.meta.value = (f'<span class="aidc-meta">updated <span class="aidc-updated">'
                           f'{time.strftime("%H:%M:%S")}</span>, every {self.refresh_seconds:g} s; '
                           f'seen as {html.escape(who)}</span>')

    def _place(self, i: int, drawn) -> None:
        """Show a section's HTML and widgets in its part, changing only what changed (the
        same widgets stay: a live chart is updated, not replaced)."""
        children, used = [], 0
        for item in drawn if isinstance(drawn, list) else [drawn]:
            if isinstance(item, str):
                if used == len(self._html[i]):
                    self._html[i].append(widgets.HTML())
                shown = self._html[i][used]
                used += 1
                if shown.value != item:
                    shown.value = item
                item = shown
            children.append(item)
        if tuple(children) != tuple(self.parts[i].children):
            self.parts[i].children = children

    def html_of(self, i: int) -> str:
        """The HTML part ``i`` shows now (its widgets left out)."""
        return "".join(c.value for c in self.parts[i].children if isinstance(c, widgets.HTML))

    def _schedule(self) -> None:
        loop = asyncio.get_event_loop()

        def tick():
            try:
                self.refresh()
            finally:
                self._timer = loop.call_later(self.refresh_seconds, tick)

        self._timer = loop.call_later(self.refresh_seconds, tick)


def down(message: str) -> str:
    return f'<div class="aidc-down" role="alert">{html.escape(message)}</div>'


def points(series: dict) -> list[tuple[float, float]]:
    return [(float(t), float(v)) for t, v in series.get("points", [])]
