"""The HTML the widgets show: messages, status badges, the *simulated* label.

Every value from the platform is escaped (a job's error or a parameter is text a user
typed); colours are those of :mod:`aidc.display`, so a job's status looks the same in
its table and in its widget.
"""

from __future__ import annotations

from html import escape

from ..display import STATUS_COLOURS

STYLE = ("<style>.aidc-w-error{background:#f8d7da;color:#58151c;border:1px solid #f1aeb5;"
         "border-radius:4px;padding:4px 8px;margin:2px 0}"
         ".aidc-w-info{color:#1f3b57;padding:2px 0}"
         ".aidc-w-simulated{background:#fff3cd;color:#664d03;border:1px solid #ffe69c;"
         "border-radius:4px;padding:0 6px;font-weight:600;margin-left:6px}"
         ".aidc-w-table{border-collapse:collapse;font-size:12px}"
         ".aidc-w-table td,.aidc-w-table th{border-bottom:1px solid #ddd;padding:2px 8px;"
         "text-align:left}"
         "</style>")


def error(message: str) -> str:
    """A refusal or failure, as the widget shows it in place (``role=alert``)."""
    return f'{STYLE}<div class="aidc-w-error" role="alert">{escape(message)}</div>'


def info(message: str) -> str:
    return f'{STYLE}<div class="aidc-w-info">{escape(message)}</div>'


def badge(status: str, label: str | None = None) -> str:
    """``label`` (default: the status) on the colour of ``status``."""
    colour = STATUS_COLOURS.get(status, "#6d6d6d")
    return (f'<span class="aidc-w-status" style="background:{colour};color:#fff;'
            f'border-radius:3px;padding:0 5px">{escape(label or status)}</span>')


def simulated() -> str:
    return ('<span class="aidc-w-simulated" title="no real GPU behind it: the inventory is '
            'simulated">simulated</span>')


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A small table of cells that are already HTML (escape values before)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'{STYLE}<table class="aidc-w-table"><tr>{head}</tr>{body}</table>'
