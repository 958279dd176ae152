"""Live line charts for the dashboards: bqplot figures updated in place.

A :class:`LiveLines` is made once per chart and kept by its section between refreshes
(``page.memory``); each refresh hands it the new points and bqplot sends only the changed
arrays to the browser, where the chart redraws without the page reloading. The viewer can
zoom and pan the time axis with the mouse (bqplot's ``PanZoom``) and read each line's name
and figure on hover. bqplot's front end comes prebuilt in its wheel (a JupyterLab
federated extension), which Voila loads.

Every figure carries the class ``aidc-live`` and one ``g.curve`` per series (bqplot's
own), so a page shows what it draws.
"""

from __future__ import annotations

# imported with the dashboard's modules, so a preheated kernel has done it before the
# page is requested (about 0.5 s here), not while the viewer waits
import bqplot as bq
import ipywidgets as widgets
import numpy as np  # bqplot's own dependency: its date scale reads datetime64

from .charts import COLOURS, HEIGHT, WIDTH


def _ms(times: list[float]):
    return np.asarray([int(t * 1000) for t in times], dtype="datetime64[ms]")


class LiveLines(widgets.VBox):
    """Lines over time (or over steps: ``x_steps``), one per series, with a legend."""

    def __init__(self, title: str, unit: str = "", top: float | None = None, x_steps: bool = False):
        self.title, self.x_steps = title, x_steps
        self.x_scale = bq.LinearScale() if x_steps else bq.DateScale()
        self.y_scale = bq.LinearScale(min=0.0, max=float(top) if top is not None else None, allow_padding=False)
        y_format = ".2s" if unit == "bytes" else ".3g"
        self.figure = bq.Figure(
            title=title, marks=[],
            axes=[bq.Axis(scale=self.x_scale, label="step" if x_steps else "", num_ticks=5),
                  bq.Axis(scale=self.y_scale, side="left", tick_format=y_format,
                          label="B" if unit == "bytes" else unit, num_ticks=4)],
            interaction=bq.interacts.PanZoom(scales={"x": [self.x_scale]}),
            fig_margin={"top": 40, "bottom": 30, "left": 60, "right": 10}, legend_location="top-left",
            layout=widgets.Layout(width=f"{WIDTH}px", height=f"{HEIGHT + 40}px"))
        self.message = widgets.HTML()
        self._marks: dict[str, object] = {}
        super().__init__([self.message, self.figure])
        self.add_class("aidc-live")

    def show(self, series: dict[str, list[tuple[float, float]]], start: float | None = None,
             end: float | None = None) -> LiveLines:
        """Draw ``series`` (legend name -> ``(x, value)`` points) over ``[start, end]``."""
        series = {name: sorted(pts) for name, pts in series.items() if pts}
        if set(series) != set(self._marks):
            self._marks = {name: bq.Lines(
                x=[], y=[], scales={"x": self.x_scale, "y": self.y_scale}, labels=[name],
                colors=[COLOURS[i % len(COLOURS)]], display_legend=True,
                tooltip=bq.Tooltip(fields=["name", "y"], labels=["", "value"]))
                for i, name in enumerate(sorted(series))}
            self.figure.marks = list(self._marks.values())
        for name, pts in series.items():
            mark = self._marks[name]
            with mark.hold_sync():
                mark.x = [x for x, _ in pts] if self.x_steps else _ms([x for x, _ in pts])
                mark.y = [float(v) for _, v in pts]
        if not self.x_steps and start is not None and end is not None:
            with self.x_scale.hold_sync():
                self.x_scale.min, self.x_scale.max = _ms([start])[0], _ms([end])[0]
        self.message.value = ("" if series else
                              f'<p class="aidc-empty"><b>{self.title}</b>: no data in this range yet</p>')
        self.figure.layout.display = "" if series else "none"
        return self
