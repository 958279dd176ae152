"""``GPUGauge``: live utilization and memory of my GPUs.

It reads the metrics service's latest sample (``services/metrics/api/current``, one NVML
reading a second for the whole platform; a scientist is shown their own holders only)
and keeps the GPUs held by this server (in a user's server: holder
``server:USER/SERVER``, as the spawner claims them), or, outside a server, every GPU I
hold (my server's and my jobs'). A GPU without a real device behind it carries the
*simulated* label.
"""

from __future__ import annotations

import os
from html import escape

import ipywidgets as widgets

from . import markup
from .base import PlatformWidget

CURRENT = "services/metrics/api/current"
GIB = 1024 ** 3


def this_server_holder() -> str | None:
    """The ledger holder of the server this kernel runs in; None outside a user's server."""
    user = os.environ.get("JUPYTERHUB_USER")
    if not user or "JUPYTERHUB_API_TOKEN" not in os.environ:
        return None
    return f"server:{user}/{os.environ.get('JUPYTERHUB_SERVER_NAME', '')}"


class GPURow(widgets.VBox):
    """One GPU: its name and UUID, a utilization bar and a memory bar."""

    def __init__(self):
        self.title = widgets.HTML()
        bar = widgets.Layout(width="260px")
        self.utilization = widgets.FloatProgress(min=0, max=100, description="Utilization",
                                                 layout=bar, style={"description_width": "80px"})
        self.utilization_text = widgets.HTML()
        self.memory = widgets.FloatProgress(min=0, max=1, description="Memory", layout=bar,
                                            style={"description_width": "80px"})
        self.memory_text = widgets.HTML()
        super().__init__([self.title, widgets.HBox([self.utilization, self.utilization_text]),
                          widgets.HBox([self.memory, self.memory_text])])
        self.add_class("aidc-w-gpu")

    def show(self, g: dict, simulated: bool) -> None:
        label = markup.simulated() if simulated or g.get("simulated") else ""
        held = ", ".join(h["holder"] for h in g.get("holders") or [])
        self.title.value = (f"<b>GPU {escape(g['gpu'])}</b> {escape(g.get('name') or '')}{label}"
                            f"<br><code>{escape(g['uuid'])}</code>"
                            + (f" <small>held by {escape(held)}</small>" if held else ""))
        self.utilization.value = g.get("utilization_percent") or 0.0
        self.utilization_text.value = f"{self.utilization.value:.0f} %"
        total = g.get("memory_total_bytes") or 0.0
        used = g.get("memory_used_bytes") or 0.0
        self.memory.max = max(total, 1.0)
        self.memory.value = min(used, self.memory.max)
        self.memory_text.value = f"{used / GIB:.1f} of {total / GIB:.1f} GiB"
        for bar in (self.utilization, self.memory):
            self.bar_style(bar)

    @staticmethod
    def bar_style(bar: widgets.FloatProgress) -> None:
        share = bar.value / bar.max if bar.max else 0
        bar.bar_style = "danger" if share > 0.9 else ("warning" if share > 0.7 else "success")


class GPUGauge(PlatformWidget):
    """``GPUGauge()``: my GPUs' utilization and memory, refreshed every ``refresh_seconds``.

    ``holder``: whose GPUs (a ledger holder such as ``server:ann/``); by default this
    server's, or outside a server every GPU I hold."""

    default_refresh_seconds = 2.0

    def __init__(self, client=None, refresh_seconds: float | None = None, holder: str | None = None,
                 **kwargs):
        super().__init__(client, refresh_seconds, **kwargs)
        self.holder = holder or this_server_holder()
        #: the samples of the GPUs shown, as the metrics service gave them
        self.gpus: list[dict] = []
        self.simulated = False
        self.header = widgets.HTML("<b>My GPUs</b>")
        self.note = widgets.HTML()
        self.rows: dict[str, GPURow] = {}
        self.gpu_list = widgets.VBox()
        self.children = [self.header, self.note, self.gpu_list, self.message]
        self.add_class("aidc-w-gauge")
        self.start_refresh()

    def mine(self, g: dict) -> bool:
        holders = [h["holder"] for h in g.get("holders") or []]
        return self.holder in holders if self.holder else bool(holders)

    def refresh(self) -> None:
        snap = self.client.get_json(CURRENT)
        with self._state_lock:
            self._show(snap)

    def _show(self, snap: dict) -> None:
        self.simulated = bool(snap.get("simulated"))
        self.gpus = [g for g in snap.get("gpus") or [] if self.mine(g)]
        whose = "this server" if self.holder and self.holder.startswith("server:") else "you"
        self.header.value = "<b>My GPUs</b>" + (markup.simulated() if self.simulated else "")
        if snap.get("time") is None:
            self.note.value = markup.info(snap.get("message") or "no GPU sample yet")
        elif not self.gpus:
            none = " (its profile has none)." if whose == "this server" else "."
            self.note.value = markup.info(f"No GPU is held by {whose}{none}")
        else:
            self.note.value = ""
        uuids = [g["uuid"] for g in self.gpus]
        if list(self.rows) != uuids:
            for uuid in set(self.rows) - set(uuids):
                self.rows.pop(uuid).close()
            self.rows = {uuid: self.rows.get(uuid) or GPURow() for uuid in uuids}
            self.gpu_list.children = list(self.rows.values())
        for g in self.gpus:
            self.rows[g["uuid"]].show(g, self.simulated)
