"""Small SVG bar charts and tables for the dashboards, drawn in the kernel and shown in
ipywidgets (lines over time are live bqplot charts: :mod:`.live`).

A bar chart is SVG drawn here: it renders the same in every browser, needs no front end of
its own, and the page updates it in place (the widget's value) on every refresh. Every
chart is an ``<svg class="aidc-chart">`` with one ``<rect class="bar">`` per bar and a
``<title>`` per bar for the exact figure on hover.
"""

from __future__ import annotations

import html
import math

WIDTH, HEIGHT = 560, 180
RIGHT, TOP = 12, 24
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
