"""Checking the fields of a request (a JSON body's values, a query string's texts), with
messages that name the field and the rule."""

from __future__ import annotations

import datetime as dt
import json
import math
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


def seconds_text(raw: str, name: str) -> float:
    """A query argument holding a positive number of seconds (``step=60``)."""
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


def time_text(raw: str, name: str) -> float:
    """A query argument holding a moment: epoch seconds or ISO 8601 (UTC unless it says)."""
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"{name} must be epoch seconds or an ISO 8601 time, not {raw!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        value = parsed.timestamp()
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite time, not {raw!r}")
    return value
