"""Counted calls for the audit log: one event per caller, target, result and period.

An inference endpoint answers thousands of calls a second; one audit line each would
drown the log and cost more than the call. Yet who called which model, how often and
with what result is what a security review asks. :class:`CallTally` counts calls in
memory and writes one event per caller, model version and result for each period
(a minute by default), with the count and the period's start, through
:func:`aidc.security.audit.record` like every other event. What a service still holds
when it stops is written then (:meth:`CallTally.flush` with ``everything``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timezone

from traitlets import Integer
from traitlets.config import LoggingConfigurable

from . import audit


class CallTally(LoggingConfigurable):
    """Counts calls per (period, caller, target, result) and writes them as audit events."""

    period = Integer(60, help="""Seconds of inference calls counted in one audit event (per
        caller, model version and result).""").tag(config=True)

    def __init__(self, kind: str = "model", action: str = "infer", **kwargs):
        super().__init__(**kwargs)
        self.kind, self.action = kind, action
        self.counts: Counter[tuple[int, str, str, str]] = Counter()
        self.lock = threading.Lock()

    def count(self, actor: str, target: str, ok: bool, now: float | None = None) -> None:
        start = int((time.time() if now is None else now) // self.period) * self.period
        with self.lock:
            self.counts[(start, actor, target, "success" if ok else "failure")] += 1

    def flush(self, now: float | None = None, everything: bool = False) -> int:
        """Write the events of the periods that have ended (``everything``: all); how many."""
        now = time.time() if now is None else now
        with self.lock:
            due = [k for k in self.counts if everything or k[0] + self.period <= now]
            taken = [(k, self.counts.pop(k)) for k in sorted(due)]
        for (start, actor, target, result), n in taken:
            audit.record(self.kind, actor=actor, action=self.action, target=target, result=result,
                         count=n, period_start=datetime.fromtimestamp(start, timezone.utc).isoformat(),
                         period_seconds=self.period)
        return len(taken)
