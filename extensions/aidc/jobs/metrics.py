"""``aidc.record``: attach a metric to the job a notebook runs in.

Inside a job the value travels as a display output of its own MIME type
(:data:`MIME`) on the kernel's normal output channel; the job runner picks it out of
the cell's outputs as they arrive, so metrics need no network access or credentials
from the kernel and they stay in the output notebook too. Outside a job, ``record``
keeps the values in :data:`recorded` and shows them, so a notebook runs the same
interactively and as a job.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

MIME = "application/vnd.aidc.metric+json"
#: a dataset version the notebook read (:mod:`aidc.data.client` displays it; the job
#: records it, and a model registered from the job names it in its lineage)
DATASET_MIME = "application/vnd.aidc.dataset+json"

#: values recorded in this process (interactive use)
recorded: dict[str, Any] = {}


def record(name: str, value: float | int | str | bool, step: int | None = None) -> None:
    """Record ``value`` under ``name`` for the current job (``step`` makes a series, e.g. per epoch)."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError("a metric name is a non-empty string of at most 200 characters")
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        value = float(value) if not isinstance(value, numbers.Integral) else int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {name!r} must be a finite number, not {value}")
    elif not isinstance(value, (str, bool)):
        raise TypeError(f"metric {name!r} must be a number, string or bool, not {type(value).__name__}")
    if step is not None and not isinstance(step, numbers.Integral):
        raise TypeError("step must be an integer (for example the epoch)")
    payload = {"name": name, "value": value, "step": None if step is None else int(step)}
    recorded[name] = value
    label = f"{name} = {value}" + (f" (step {step})" if step is not None else "")
    try:
        from IPython.display import display
    except ImportError:  # plain Python: nothing to attach to
        print(label)
        return
    if os.environ.get("AIDC_JOB_ID"):
        display({MIME: payload, "text/plain": label}, raw=True)
    else:
        display({"text/plain": label}, raw=True)
