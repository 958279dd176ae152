"""Small SVG charts for the dashboards, drawn in the kernel and shown in ipywidgets.

SVG drawn here rather than a plotting widget library: it needs no front-end extension
in Voila, renders the same in every browser, and the page updates it in place (the
widget's value) on every refresh. Every chart is an ``<svg class="aidc-chart">`` with
one ``<path class="series">`` per line or ``<rect class="bar">`` per bar, and a
``<title>`` per point or bar for the exact figure on hover.
"""

from __future__ import annotations

import html
import math
import time

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 24, 28
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _nice_max(value: float) -> float:
    """The round figure (1, 2, 2.5 or 5 times a power of ten) at or above ``value``."""
    if value <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(value))
    return next(step * scale for step in (1, 2, 2.5, 5, 10) if value <= step * scale * (1 + 1e-12))


def _label(value: float, unit: str) -> str:
    if unit == "bytes":
        for name, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} B"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text}{unit}" if unit in ("%", "s", "ms") else f"{text} {unit}".rstrip()


def empty(title: str, message: str) -> str:
    """A chart's frame with a message in it (no data in the range)."""
    return (f'<svg class="aidc-chart aidc-chart-empty" width="{WIDTH}" height="{HEIGHT}" role="img">'
            f'<text x="8" y="16" font-weight="bold">{html.escape(title)}</text>'
            f'<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" fill="#777">'
            f'{html.escape(message)}</text></svg>')


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], unit: str = "",
               start: float | None = None, end: float | None = None, top: float | None = None,
               x_steps: bool = False) -> str:
    """Lines over time: ``series`` maps a legend name to ``(epoch seconds, value)`` points;
    with ``x_steps`` the x values are steps (a training curve's epochs), not times."""
    points = [p for ps in series.values() for p in ps]
    if not points:
        return empty(title, "no data in this range yet")
    t0 = start if start is not None else min(t for t, _ in points)
    t1 = end if end is not None else max(t for t, _ in points)
    t1 = t1 if t1 > t0 else t0 + 1
    vmax = top if top is not None else _nice_max(max(v for _, v in points))
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t): return LEFT + (t - t0) / (t1 - t0) * w

    def y(v): return TOP + h - min(max(v, 0), vmax) / vmax * h

    out = [f'<svg class="aidc-chart" width="{WIDTH}" height="{HEIGHT}" role="img">',
           f'<text x="8" y="16" font-weight="bold">{html.escape(title)}</text>']
    for frac in (0, 0.5, 1):
        yy = TOP + h - frac * h
        out.append(f'<line x1="{LEFT}" x2="{LEFT + w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
                   f'<text x="{LEFT - 4}" y="{yy + 4:.1f}" text-anchor="end" font-size="10">'
                   f'{html.escape(_label(vmax * frac, unit))}</text>')
    for t, anchor in ((t0, "start"), (t1, "end")):
        text = (f"step {t:g}" if x_steps else
                time.strftime("%H:%M:%S" if t1 - t0 < 86400 else "%m-%d %H:%M", time.localtime(t)))
        out.append(f'<text x="{x(t):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}" font-size="10">'
                   f'{html.escape(text)}</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted(pts)
        if pts:
            d = " ".join(f"{'M' if j == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for j, (t, v) in enumerate(pts))
            out.append(f'<path class="series" d="{d}" fill="none" stroke="{colour}" stroke-width="1.5">'
                       f'<title>{html.escape(name)}: last {html.escape(_label(pts[-1][1], unit))}</title></path>')
        out.append(f'<text x="{LEFT + 8 + 110 * i}" y="{TOP - 2}" font-size="10" fill="{colour}">'
                   f'{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(title: str, bars: list[tuple[str, float]], unit: str = "") -> str:
    """Horizontal bars, one per ``(label, value)``."""
    if not bars:
        return empty(title, "nothing to show in this range")
    row = 20
    height = TOP + row * len(bars) + 8
    vmax = _nice_max(max(v for _, v in bars))
    w = WIDTH - 160 - RIGHT - 80
    out = [f'<svg class="aidc-chart" width="{WIDTH}" height="{height}" role="img">',
           f'<text x="8" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(bars):
        yy = TOP + i * row
        length = max(value, 0) / vmax * w
        out.append(f'<text x="152" y="{yy + 13}" text-anchor="end" font-size="11">{html.escape(label)}</text>'
                   f'<rect class="bar" x="160" y="{yy + 2}" width="{length:.1f}" height="{row - 6}" '
                   f'fill="{COLOURS[i % len(COLOURS)]}"><title>{html.escape(label)}: '
                   f'{html.escape(_label(value, unit))}</title></rect>'
                   f'<text x="{164 + length:.1f}" y="{yy + 13}" font-size="11">{html.escape(_label(value, unit))}</text>')
    out.append("</svg>")
    return "".join(out)


def table(headers: list[str], rows: list[list], empty_text: str = "nothing yet") -> str:
    """A plain HTML table (``class="aidc-table"``)."""
    if not rows:
        return f'<p class="aidc-empty">{html.escape(empty_text)}</p>'
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="aidc-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
