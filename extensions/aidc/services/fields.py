"""Checking the fields of a JSON request, with messages that name the field and the rule."""

from __future__ import annotations

import json
from typing import Any

from ..errors import UsageError


def integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, not {json.dumps(value)}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be at most {maximum}, not {value}")
    return value


def seconds(value: Any, name: str) -> float | None:
    """A positive number of seconds, or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{name} must be a number of seconds, not {json.dumps(value)}")
    if value <= 0:
        raise UsageError(f"{name} must be a positive number of seconds, not {value}")
    return float(value)
