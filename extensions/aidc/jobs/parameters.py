"""Checking a job's parameters against the notebook's ``parameters`` cell, at submit.

papermill injects parameters after the cell tagged ``parameters`` and never checks
them: a typo (``epoch=3`` for ``epochs``) silently runs with the default, and a string
where a number was meant fails an hour into training. aidc refuses both up front,
using papermill's own inspection of that cell (name, inferred type, default, help).
"""

from __future__ import annotations

import ast
import json
from typing import Any

import nbformat
from papermill.inspection import _infer_parameters
from papermill.utils import find_first_tagged_cell_index

from ..errors import UsageError

#: JSON types accepted for each type papermill infers from a default value
ACCEPTS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "tuple": (list,),
    "dict": (dict,),
}

JSON_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list",
              dict: "object", type(None): "null"}


#: how deeply parameter values may nest by default (``JobManager.max_parameter_depth``)
MAX_DEPTH = 32
#: the most bytes of compact JSON a job's parameters may take by default
#: (``JobManager.max_parameter_bytes``; below the service's 1 MiB request limit, so the
#: refusal names parameters rather than the request)
MAX_BYTES = 512 * 1024


class ParameterError(UsageError):
    """A parameter the notebook does not declare, or of the wrong type."""


def depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0); no recursion, so any depth is safe."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        stack.extend((child, level) for child in children)
    return deepest


def check_size(parameters: Any, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> None:
    """Refuse parameters nested deeper than ``max_depth`` or larger than ``max_bytes`` of JSON.

    Checked before anything else looks at the values: parameters nested thousands deep
    break JSON encoding, pickling and papermill's injection further down (a job that
    could never start), and big ones are stored with every job.
    """
    if not isinstance(parameters, dict):
        return  # validate() says what parameters must be
    for name, value in parameters.items():
        levels = depth(value)
        if levels > max_depth:
            raise ParameterError(
                f"parameter {name!r} nests lists or objects {levels} levels deep; "
                f"parameters may nest at most {max_depth} levels")
    try:
        size = len(json.dumps(parameters, separators=(",", ":"), allow_nan=True).encode())
    except (TypeError, ValueError, RecursionError) as e:
        raise ParameterError(f"parameters must be plain JSON values: {e}") from None
    if size > max_bytes:
        raise ParameterError(
            f"the parameters take {_kib(size)} as JSON; at most {_kib(max_bytes)} is accepted "
            "(pass large data in a file and its path as the parameter)")


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


def has_parameters_cell(nb: nbformat.NotebookNode) -> bool:
    return find_first_tagged_cell_index(nb, "parameters") >= 0


def inspect(nb: nbformat.NotebookNode) -> list[dict]:
    """The notebook's parameters: ``name``, ``type``, ``default`` (source text), ``help``."""
    try:
        found = _infer_parameters(nb)
    except Exception as e:  # papermill cannot read the cell (syntax it does not know)
        raise ParameterError(f"the notebook's parameters cell cannot be read: {e}") from None
    return [{"name": p.name, "type": _type_of(p.inferred_type_name, p.default), "default": p.default,
             "help": p.help} for p in found]


def _type_of(annotated: str, default: str) -> str:
    """The declared type: the annotation if any (``epochs: int = 3``), else the default's."""
    if annotated and annotated != "None":
        return annotated.split("[", 1)[0].lower()
    try:
        value = ast.literal_eval(default)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "any"  # an expression (``np.arange(3)``): papermill passes values through
    if value is None:
        return "any"
    return type(value).__name__


def validate(nb: nbformat.NotebookNode, parameters: dict[str, Any], path: str,
             max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Return ``parameters`` if the notebook declares each with a compatible type (and they
    are no deeper than ``max_depth`` nor larger than ``max_bytes``, see :func:`check_size`)."""
    if not isinstance(parameters, dict):
        raise ParameterError("parameters must be a JSON object of name: value")
    if not parameters:
        return {}
    check_size(parameters, max_depth=max_depth, max_bytes=max_bytes)
    if not has_parameters_cell(nb):
        raise ParameterError(
            f"{path} has no cell tagged 'parameters', so it takes no parameters; tag the cell "
            "that sets the defaults with 'parameters' (papermill), or submit without parameters"
        )
    declared = {p["name"]: p for p in inspect(nb)}
    for name, value in parameters.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ParameterError(
                f"unknown parameter {name!r} for {path}; its parameters cell declares: {known}"
            )
        expected = declared[name]["type"]
        accepted = ACCEPTS.get(expected)
        if accepted is None or value is None:
            continue  # no default type to compare with ("None"), or an explicit null
        if isinstance(value, bool) and bool not in accepted:
            ok = False
        else:
            ok = isinstance(value, accepted)
        if not ok:
            raise ParameterError(
                f"parameter {name!r} of {path} expects {type_noun(expected)} (its default is "
                f"{declared[name]['default']}), got {JSON_NAMES.get(type(value), type(value).__name__)} {value!r}"
            )
    return dict(parameters)


def type_noun(type_name: str) -> str:
    """A parameter type as a message says it ("an integer"): the service's refusals and the
    widgets' form (``aidc.widgets.fields``) word a wrong value the same way."""
    return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
            "list": "a list", "tuple": "a list", "dict": "an object"}.get(type_name, type_name)
