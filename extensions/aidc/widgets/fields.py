"""The typed inputs of a notebook's parameters, as the jobs service inspects them
(``GET services/jobs/api/parameters``: papermill's reading of the ``parameters`` cell).

Numbers and booleans get number boxes and a checkbox; strings a text box; lists, tuples,
dicts and expressions a text box read as a Python literal and checked against the same
accepted types the service checks submissions with (:data:`aidc.jobs.parameters.ACCEPTS`).
A value equal to the notebook's default is not sent: papermill keeps the default, and an
expression default (``np.arange(3)``) stays an expression.
"""

from __future__ import annotations

import ast
from html import escape
from typing import Any

import ipywidgets as widgets

#: a problem's marker beside its input
PROBLEM = '<span class="aidc-w-problem" style="color:#c62828">{}</span>'


def _literal(text: str) -> Any:
    return ast.literal_eval(text.strip())


class ParameterField:
    """One parameter: its input (``widget``), its problem beside it, and :meth:`read`."""

    def __init__(self, spec: dict):
        self.name: str = spec["name"]
        self.type: str = spec.get("type") or "any"
        self.default_text: str = spec.get("default") or ""
        try:
            self.default = _literal(self.default_text)
            self.has_literal_default = True
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            self.default, self.has_literal_default = None, False
        style = {"description_width": "initial"}
        kind = self.type if self.has_literal_default else "any"
        if kind == "bool" and isinstance(self.default, bool):
            self.input = widgets.Checkbox(value=self.default, description=self.name, indent=False)
        elif kind == "int" and type(self.default) is int:
            self.input = widgets.IntText(value=self.default, description=self.name, style=style)
        elif kind == "float" and type(self.default) in (int, float):
            self.input = widgets.FloatText(value=float(self.default), description=self.name,
                                           style=style)
        elif kind == "str" and isinstance(self.default, str):
            self.input = widgets.Text(value=self.default, description=self.name, style=style)
        else:  # lists, dicts, tuples, expressions: a Python literal
            self.input = widgets.Text(value=self.default_text, description=self.name, style=style,
                                      placeholder="a Python value, e.g. [1, 2] or {'a': 1}")
        self.literal = isinstance(self.input, widgets.Text) and not (kind == "str")
        self.input.tooltip = spec.get("help") or f"{self.name}: {self.type}"
        self.problem = widgets.HTML()
        self.widget = widgets.HBox([self.input, self.problem])

    def read(self) -> tuple[bool, Any, str | None]:
        """``(send, value, problem)``: whether the value differs from the default (and so is
        sent), the value, and what is wrong with it (None when nothing is); the problem is
        marked beside the input."""
        send, value, problem = self._read()
        self.problem.value = PROBLEM.format(escape(problem)) if problem else ""
        return send, value, problem

    def _read(self) -> tuple[bool, Any, str | None]:
        raw = self.input.value
        if not self.literal:
            return raw != self.default, raw, None
        if raw.strip() == self.default_text.strip():
            return False, self.default, None
        try:
            value = _literal(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return True, raw, (f"not a Python value: {raw!r} (quote text: 'like this')"
                               if raw.strip() else "empty: give a value, or the default back")
        from ..jobs.parameters import ACCEPTS, type_noun  # papermill: imported at the first check only

        if isinstance(value, tuple):
            value = list(value)
        accepted = ACCEPTS.get(self.type)
        if accepted is not None and value is not None:
            wrong_bool = isinstance(value, bool) and bool not in accepted
            if wrong_bool or not isinstance(value, accepted):
                return True, value, f"expects {type_noun(self.type)} (default {self.default_text})"
        return True, value, None
