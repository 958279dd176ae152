"""A small live line chart of a recorded series (``aidc.record(name, value, step=...)``).

bqplot: its front end comes prebuilt in its wheel (a JupyterLab federated extension,
which Voila loads too), it draws SVG, and a new point changes two arrays of one mark
instead of redrawing a figure.
"""

from __future__ import annotations

import ipywidgets as widgets


class SeriesChart(widgets.VBox):
    """A chart of one series at a time, with a chooser when there are several."""

    def __init__(self, height: str = "180px", width: str = "420px"):
        import bqplot as bq  # its import is not free: only widgets that chart pay it

        self.x_scale, self.y_scale = bq.LinearScale(), bq.LinearScale()
        self.line = bq.Lines(x=[], y=[], scales={"x": self.x_scale, "y": self.y_scale},
                             marker="circle", marker_size=16)
        self.figure = bq.Figure(
            marks=[self.line],
            axes=[bq.Axis(scale=self.x_scale, label="step", num_ticks=5),
                  bq.Axis(scale=self.y_scale, side="left", num_ticks=4)],
            fig_margin={"top": 10, "bottom": 35, "left": 50, "right": 10},
            layout=widgets.Layout(height=height, width=width))
        self.choice = widgets.Dropdown(description="Series", options=[])
        self.series: dict[str, list] = {}
        self.choice.observe(lambda _change: self._draw(), names="value")
        super().__init__([self.choice, self.figure])
        self.add_class("aidc-w-chart")
        self.layout.display = "none"  # until there is a series

    def show(self, series: dict[str, list]) -> None:
        """Draw ``series`` (name -> ``[[step, value], ...]``), keeping the chosen one."""
        series = {k: v for k, v in (series or {}).items() if v}
        if series == self.series:
            return
        self.series = series
        names = sorted(series)
        if list(self.choice.options) != names:
            chosen = self.choice.value
            self.choice.options = names
            self.choice.value = chosen if chosen in names else (names[0] if names else None)
        self.layout.display = "" if names else "none"
        self._draw()

    def _draw(self) -> None:
        points = self.series.get(self.choice.value) or []
        numeric = [(float(s), float(v)) for s, v in points
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        with self.line.hold_sync():
            self.line.x = [s for s, _ in numeric]
            self.line.y = [v for _, v in numeric]
            self.line.labels = [self.choice.value or ""]
