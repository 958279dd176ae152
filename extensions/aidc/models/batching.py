"""Dynamic batching for the model server (:mod:`aidc.models.server`).

Requests are queued by :meth:`Batcher.submit` on the event loop. A batch is formed from
the oldest waiting request and the requests behind it whose inputs have the same names,
dtypes and non-batch dimensions, up to ``max_batch_size`` rows (dim 0). The inputs are
concatenated along dim 0, the model runs once in a worker thread (the event loop stays
free to read and answer other requests), and the outputs are split back by rows.

When a batch is started:

- at once when no batch is running: an idle model never makes a request wait, so a lone
  request pays no delay (all requests that arrived in the same event-loop turn go
  together);
- when ``max_batch_size`` rows are waiting;
- otherwise, while another batch is running and a worker is free (``instances`` > 1),
  after the oldest request has waited ``max_queue_delay`` seconds. With one instance
  (the default) requests simply gather while the model is busy with the previous batch,
  which is where batches come from under load.

A lone one-row request may run on the event loop itself (``inline_max``): when nothing
else is running, queued or being received, and the model's time for one row (measured
at warm-up, then a moving average) is under ``inline_max``, the hop to a worker thread
and back (two thread wake-ups, ~0.1-0.5 ms on a busy machine) would cost more than the
time the loop is blocked. As soon as other requests are arriving, batches go to the
worker threads again so the loop keeps reading requests and batches can form.

A request with more rows than ``max_batch_size``, or whose inputs do not share one dim 0,
runs alone. ``max_batch_size`` 0 or 1 turns batching off (each request runs alone, still
through the same queue and worker threads). If a batch fails, its requests are run again
one by one so that only the request that causes the failure gets the error; if a model's
outputs turn out not to have the batch in dim 0, batching is turned off for good.

Everything here except the work in the worker threads runs on the event loop thread, so
the statistics need no locks.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable

import numpy as np

log = logging.getLogger("aidc.models.server")

#: latency buckets in seconds (request latency, queue delay, compute time)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: batch size buckets in rows
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """A Prometheus-style histogram (cumulative ``le`` buckets, sum, count); one thread."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds=LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[float, int]]:
        """``(upper bound, cumulative count)`` pairs, the last one for +Inf."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out

    def to_dict(self) -> dict:
        return {"count": self.count, "sum": self.sum,
                "buckets": [["+Inf" if b == float("inf") else b, n] for b, n in self.buckets()]}


class Duration:
    """Triton's ``{"count": ..., "ns": ...}`` pair."""

    __slots__ = ("count", "ns")

    def __init__(self):
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class BatchStats:
    """What the batcher measured: per-request queue delay, per-batch sizes and compute times."""

    def __init__(self):
        self.queue = Duration()  # per request: enqueued -> its batch started
        self.compute_input = Duration()  # per request: concatenating the batch's inputs
        self.compute_infer = Duration()  # per request: the model's predict
        self.compute_output = Duration()  # per request: splitting the outputs
        self.queue_delay = Histogram(LATENCY_BUCKETS)
        self.compute_seconds = Histogram(LATENCY_BUCKETS)  # per batch
        self.batch_rows = Histogram(BATCH_BUCKETS)  # per batch: rows
        self.batch_requests = Histogram(BATCH_BUCKETS)  # per batch: requests
        self.inference_count = 0  # rows run
        self.execution_count = 0  # model runs
        self.last_inference = 0  # ms since the epoch
        #: batch size (rows) -> [count, input ns, infer ns, output ns]
        self.by_batch_size: dict[int, list[int]] = {}

    def batch_stats(self) -> list[dict]:
        return [{"batch_size": size,
                 "compute_input": {"count": c, "ns": i},
                 "compute_infer": {"count": c, "ns": n},
                 "compute_output": {"count": c, "ns": o}}
                for size, (c, i, n, o) in sorted(self.by_batch_size.items())]


class _Item:
    __slots__ = ("inputs", "rows", "key", "callback", "enqueued")

    def __init__(self, inputs, rows, key, callback, enqueued):
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.callback = callback
        self.enqueued = enqueued


class _Done:
    """A finished result in the shape of a concurrent future (for inline runs)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _resolve(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class _SplitError(Exception):
    """The model's outputs do not have the batch in dim 0."""


class Batcher:
    """Queue requests and run them through ``predict`` in batches, in worker threads.

    ``predict`` takes and returns ``dict[str, np.ndarray]`` with the batch in dim 0.
    ``batchable`` False (the model has a fixed dim 0) turns batching off.
    ``thread_init`` runs once in each worker thread (e.g. to size a framework's threads).
    """

    def __init__(self, predict: Callable[[dict], dict], *, max_batch_size: int = 32,
                 max_queue_delay: float = 0.002, instances: int = 1, batchable: bool = True,
                 thread_init: Callable[[], None] | None = None, inline_max: float = 0.0,
                 inline_estimate: float | None = None,
                 quiet: Callable[[], bool] | None = None):
        self._predict = predict
        self.max_batch_size = max(int(max_batch_size), 0)
        self.max_queue_delay = max(float(max_queue_delay), 0.0)
        self.instances = max(int(instances), 1)
        self.enabled = batchable and self.max_batch_size > 1
        #: a lone single-row request runs on the event loop itself when the model's
        #: single-row time (a moving average, first measured at warm-up) is below this
        self.inline_max = max(float(inline_max), 0.0)
        self.inline_estimate = inline_estimate if inline_estimate is not None else float("inf")
        #: whether no other request is on its way in (then running inline delays nobody)
        self._quiet = quiet or (lambda: True)
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=self.instances,
                                            thread_name_prefix="aidc-predict",
                                            initializer=thread_init)
        self._queue: collections.deque[_Item] = collections.deque()
        self._in_flight = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None

    # -- event loop side -----------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._in_flight

    def submit(self, inputs: dict[str, np.ndarray],
               callback: Callable[[dict | BaseException], None] | None = None):
        """Queue one request. ``callback`` is called on the event loop with its outputs,
        or with the exception the model raised; without one, a future is returned."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = None
        if callback is None:
            future = loop.create_future()
            callback = partial(_resolve, future)
        rows, key = self._shape_key(inputs)
        self._queue.append(_Item(inputs, rows, key, callback, time.perf_counter()))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return future

    def _shape_key(self, inputs: dict[str, np.ndarray]) -> tuple[int, tuple | None]:
        """Rows of the request, and what a batch-mate must match (None: runs alone)."""
        rows = None
        parts = []
        for name, array in inputs.items():
            if array.ndim == 0:
                return 1, None
            n = array.shape[0]
            if rows is None:
                rows = n
            elif n != rows:
                return max(rows, n), None
            parts.append((name, array.dtype.str, array.shape[1:]))
        if rows is None:
            return 1, None
        if not self.enabled or rows == 0 or rows > self.max_batch_size:
            return rows, None
        if len(parts) > 1:
            parts.sort()
        return rows, tuple(parts)

    def _dispatch(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue = self._queue
        while queue and self._in_flight < self.instances:
            first = queue[0]
            key = first.key
            if key is None or not self.enabled:
                batch = [queue.popleft()]
            else:
                batch, rest, rows, full = [], [], 0, False
                limit = self.max_batch_size
                for item in queue:
                    if not full and item.key == key:
                        if rows + item.rows <= limit:
                            batch.append(item)
                            rows += item.rows
                            continue
                        full = True
                    rest.append(item)
                if rows < limit and not full and self._in_flight > 0:
                    # another batch is running and a worker is free: wait a little for more
                    wait = first.enqueued + self.max_queue_delay - time.perf_counter()
                    if wait > 0:
                        self._timer = self._loop.call_later(wait, self._dispatch)
                        return
                if rest:
                    self._queue = queue = collections.deque(rest)
                else:
                    queue.clear()
            self._launch(batch)
            queue = self._queue
        if not queue and self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    def _launch(self, batch: list[_Item]) -> None:
        self._in_flight += 1
        now = time.perf_counter()
        stats = self.stats
        for item in batch:
            delay = now - item.enqueued
            stats.queue.add(delay)
            stats.queue_delay.observe(delay)
        loop = self._loop
        done = self._done
        if (len(batch) == 1 and self._in_flight == 1 and batch[0].rows <= 1
                and self.inline_estimate < self.inline_max and not self._queue and self._quiet()):
            # a fast model, nothing else running, queued or arriving: hopping to a worker
            # thread and back would cost more than the predict blocks the loop (under load
            # requests go to the workers, so that the loop reads the next ones meanwhile
            # and they form batches)
            self._done(batch, _Done(self._run(batch)), redispatch=False)
            return
        cf = self._executor.submit(self._run, batch)
        cf.add_done_callback(lambda f: loop.call_soon_threadsafe(done, batch, f))

    def _done(self, batch: list[_Item], cf, redispatch: bool = True) -> None:
        self._in_flight -= 1
        try:
            results, timings, split_failed = cf.result()
        except BaseException as e:  # the worker itself failed (not the model)
            results, timings, split_failed = [e] * len(batch), None, False
        if split_failed and self.enabled:
            self.enabled = False
            log.warning("the model's outputs do not have the batch in dim 0: "
                        "dynamic batching is off for this model")
        for item, result in zip(batch, results):
            try:
                item.callback(result)
            except Exception:
                log.exception("error in a request's completion")
        if timings is not None:
            self._record(batch, timings)
        if not redispatch:
            return
        if self._queue:
            self._dispatch()
        elif self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    def _record(self, batch: list[_Item], timings: tuple[float, float, float]) -> None:
        t_in, t_infer, t_out = timings
        stats = self.stats
        rows = sum(item.rows for item in batch)
        n = len(batch)
        # per request, like Triton: each request of the batch is charged the batch's time
        stats.compute_input.add(t_in * n, n)
        stats.compute_infer.add(t_infer * n, n)
        stats.compute_output.add(t_out * n, n)
        total = t_in + t_infer + t_out
        stats.compute_seconds.observe(total)
        if rows == 1 and n == 1:
            self.inline_estimate += 0.2 * (total - self.inline_estimate)
        stats.batch_rows.observe(rows)
        stats.batch_requests.observe(n)
        stats.inference_count += rows
        stats.execution_count += 1
        stats.last_inference = int(time.time() * 1000)
        entry = stats.by_batch_size.get(rows)
        if entry is None:
            entry = stats.by_batch_size[rows] = [0, 0, 0, 0]
        entry[0] += 1
        entry[1] += int(t_in * 1e9)
        entry[2] += int(t_infer * 1e9)
        entry[3] += int(t_out * 1e9)

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        while self._queue or self._in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()
            self._idle = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- worker thread side ----------------------------------------------------------------
    def _run(self, batch: list[_Item]):
        """Run one batch; returns (per-request outputs or exceptions, timings, split failed)."""
        t0 = time.perf_counter()
        if len(batch) == 1:
            try:
                outputs = self._predict(batch[0].inputs)
            except Exception as e:
                return [e], None, False
            t1 = time.perf_counter()
            return [outputs], (0.0, t1 - t0, 0.0), False
        first = batch[0].inputs
        try:
            inputs = {name: np.concatenate([item.inputs[name] for item in batch])
                      for name in first}
        except Exception:  # cannot happen for equal keys; be safe
            return self._run_each(batch), None, False
        t1 = time.perf_counter()
        try:
            outputs = self._predict(inputs)
        except Exception:
            # one request may poison the batch: run them alone so only it fails
            return self._run_each(batch), None, False
        t2 = time.perf_counter()
        try:
            results = self._split(batch, outputs)
        except _SplitError:
            return self._run_each(batch), None, True
        t3 = time.perf_counter()
        return results, (t1 - t0, t2 - t1, t3 - t2), False

    def _run_each(self, batch: list[_Item]) -> list:
        results = []
        for item in batch:
            try:
                results.append(self._predict(item.inputs))
            except Exception as e:
                results.append(e)
        return results

    @staticmethod
    def _split(batch: list[_Item], outputs: dict) -> list[dict]:
        total = sum(item.rows for item in batch)
        arrays = {}
        for name, value in outputs.items():
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if array.ndim == 0 or array.shape[0] != total:
                raise _SplitError(name)
            arrays[name] = array
        results = []
        start = 0
        for item in batch:
            end = start + item.rows
            results.append({name: array[start:end] for name, array in arrays.items()})
            start = end
        return results
