"""Model server: one version of one model over the Open Inference Protocol (KServe v2, REST).

Run as a process per replica::

    python -m aidc.models.server --format torchscript --artifact /path/model.pt \\
        --signature-json '{"inputs": [...], "outputs": [...]}' --name mnist --version 3 \\
        (--unix-socket /path/r0.sock | --port 8101 [--host 127.0.0.1]) \\
        [--max-batch-size 32] [--max-queue-delay-ms 2.0] [--threads N] [--prefix /url/prefix]

The server has no authentication of its own: whoever can connect may call it. The
models service therefore starts its replicas with ``--unix-socket`` only (mode 0600, in a
0700 folder of the model's owner), so that the only way in is the service's
authenticated ``/services/models/v2/...``; a TCP ``--port`` is for running the server by
hand (tests, ``bench``), where anyone on the host can reach it.

``--signature-json`` is the signature's JSON (:meth:`Signature.to_dict`), or ``@FILE``.
The process listens at once, loads the artifact with :func:`aidc.models.formats.load` in a
thread, warms the model up, and only then answers ready (``/v2/health/ready`` is 503 until
then, and again once a shutdown has begun; ``/v2/health/live`` is 200 all along).

Endpoints (KServe v2 / Triton HTTP; ``{name}`` and ``{v}`` must be this server's):

- ``GET /v2/health/live``, ``GET /v2/health/ready``: 200, or 503 while loading or stopping
- ``GET /v2``: server metadata (extensions: ``binary_tensor_data``)
- ``GET /v2/models/{name}[/versions/{v}]``: model metadata (inputs and outputs)
- ``GET /v2/models/{name}[/versions/{v}]/ready``
- ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON tensors and the binary tensor
  data extension (``Inference-Header-Content-Length``, ``binary_data_size``,
  ``binary_data``, ``binary_data_output``), as tritonclient.http sends and reads them
- ``GET /v2/models/{name}[/versions/{v}]/stats``, ``GET /v2/models/stats``: statistics
  shaped like Triton's, plus this server's HTTP metrics under ``"aidc"``
- ``GET /metrics``: the same in Prometheus text format

Errors are ``{"error": message}``: 400 for a malformed request or tensors that do not
match the signature (the message states the expected signature), 404 for another model
or version, 405 for a wrong method, 413 for a body over ``--max-body-size`` (refused from
its Content-Length, before the body is read), 503 before ready, 500 if the model fails.

Concurrent requests are batched (:mod:`aidc.models.batching`); the model runs in worker
threads, so the event loop keeps reading and answering requests meanwhile. SIGTERM (or
SIGINT) stops listening and readiness, lets the requests in progress finish (up to
``--shutdown-timeout``), then exits 0; during loading it exits 0 at once.

Run ``python -m aidc.models.server bench --url http://127.0.0.1:PORT --name NAME`` to
measure requests per second and latency with tritonclient (:mod:`aidc.models.bench`).

This module is the process: its command line, thread sizing, loading and signals. What
the server answers is the data plane (:mod:`aidc.models.dataplane`), the wire format
:mod:`aidc.models.v2`, and the HTTP transport :mod:`aidc.models.rest`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
import traceback

from tornado.netutil import bind_unix_socket

from aidc.errors import AidcError, UsageError
from aidc.models import rest
from aidc.models.dataplane import DEFAULT_MAX_BODY, DataPlane

log = logging.getLogger("aidc.models.server")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_THREADS = 1


def _limit_threads_env(threads: int) -> None:
    """Size the frameworks' thread pools before they are imported (unless already set)."""
    global _THREADS
    _THREADS = threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    # idle OpenMP threads sleep instead of spinning: spinning threads starve the event
    # loop (and everything else on the cores); on 2 busy cores it made requests 30x slower
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _size_framework_threads(threads: int | None = None) -> None:
    """In each worker thread and after loading: the frameworks use ``--threads`` threads
    (``threads``: another count, for the calling thread only; torch's is per thread)."""
    threads = _THREADS if threads is None else threads
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        except Exception:  # pragma: no cover
            pass


def _size_tensorflow_threads() -> None:
    """TensorFlow's pools can only be sized before its runtime starts: before loading."""
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(min(_THREADS, 2))
    except Exception:  # pragma: no cover - no TensorFlow, or already started
        pass


def _time_single_row(runner, runs: int = 5) -> float | None:
    """The model's time for one row (median of a few runs on zeros), or None."""
    try:
        inputs = runner.signature.zeros(1)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            runner.predict(inputs)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]
    except Exception:
        return None


def _single_row_plan(runner, inline_max: float) -> tuple[float | None, int]:
    """The model's time for one row, and how many torch threads run a lone row fastest:
    ``--threads`` or 1, measured here on this model (after warm-up, in the loading thread).

    Why: idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``, above), so each parallel
    region of a run first wakes them. For a small model's one row the wake-ups cost more
    than the work they share: the MNIST CNN takes 0.42 ms for one row on 2 threads and
    0.15 ms on 1 (``benchmarks/README.md``), while a batch of 16 takes 3.3 ms on 2 and
    4.7 on 1. A lone row runs on the event loop's thread (``inline_max``), whose thread
    count is its own (an OpenMP setting per thread), so it can take the single row's
    answer while the worker threads keep ``--threads`` for batches. Switching one
    thread's count back and forth per run was measured too, and costs both sides (0.31
    and 4.1 ms: the kernels are prepared per thread count). Only torch models on the CPU:
    onnxruntime and TensorFlow size their pools once, for the whole process; and only
    models whose row could come under ``inline_max`` (seconds; lone rows of slower ones
    go to the workers anyway), so a big model's start does not pay for the measuring."""
    single = _time_single_row(runner)
    torch = sys.modules.get("torch")
    device = getattr(runner, "device", None)
    if (single is None or torch is None or _THREADS <= 1 or device is None
            or getattr(device, "type", None) != "cpu" or single >= 5 * inline_max):
        return single, _THREADS
    torch.set_num_threads(1)
    try:
        one = _time_single_row(runner, runs=7)  # the first run after the switch prepares
    finally:
        torch.set_num_threads(_THREADS)
    if one is not None and one < single:
        return one, 1
    return single, _THREADS



def _parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aidc.models.server",
                                description="Serve one model version over the KServe v2 protocol.")
    p.add_argument("--format", required=True,
                   help="artifact format as aidc.models.formats names it (torchscript, keras, "
                        "onnx)")
    p.add_argument("--artifact", required=True, help="path of the saved model")
    p.add_argument("--signature-json", required=True,
                   help="the model's signature as JSON, or @FILE to read it from a file")
    p.add_argument("--name", required=True, help="model name in the URLs")
    p.add_argument("--version", required=True, help="model version in the URLs")
    p.add_argument("--port", type=int, default=None,
                   help="listen on this TCP port (unauthenticated: anyone on the host may "
                        "call it; for running the server by hand)")
    p.add_argument("--host", default="127.0.0.1", help="the address of --port")
    p.add_argument("--unix-socket", default=None,
                   help="listen on this Unix socket (mode 0600: only this account and root "
                        "may connect); the models service starts its replicas with this alone")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="most rows per model run; 0 or 1 turns dynamic batching off")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0,
                   help="longest a request waits for batch-mates while a free worker could "
                        "start it")
    p.add_argument("--threads", type=int, default=0,
                   help="compute threads (default: the CPU cores)")
    p.add_argument("--instances", type=int, default=1, help="batches run at the same time")
    p.add_argument("--inline-max-ms", type=float, default=1.0,
                   help="a lone one-row request runs on the event loop, skipping the hop to a "
                        "worker thread, when the model takes less than this for one row "
                        "(0: always use the worker threads)")
    p.add_argument("--prefix", default="", help="URL prefix in front of all paths")
    p.add_argument("--device", default="auto",
                   help="device to load the model on: cpu, cuda, cuda:N, or auto (cuda when this "
                        "process was given GPUs its runtime can use)")
    p.add_argument("--max-body-size", type=_parse_size, default=DEFAULT_MAX_BODY,
                   help="largest request body in bytes (K/M/G suffixes allowed); larger gets 413")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds requests in progress get to finish after SIGTERM")
    p.add_argument("--exit-with", type=int, default=None, metavar="PID",
                   help="stop (as on SIGTERM) when process PID ends: the platform's hub")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.port is None and not args.unix_socket:
        p.error("give --unix-socket PATH, --port PORT, or both")
    return args


def _where(args: argparse.Namespace) -> str:
    """Where the server listens, for its log lines."""
    places = [f"unix:{args.unix_socket}"] if args.unix_socket else []
    if args.port is not None:
        places.append(f"http://{args.host}:{args.port}")
    return " and ".join(places)


def _read_signature(text: str):
    import json

    from aidc.models.signature import Signature

    if text.startswith("@"):
        try:
            with open(text[1:]) as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read the signature file {text[1:]}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--signature-json is not valid JSON: {e}") from None
    try:
        return Signature.from_dict(data)
    except AidcError:
        raise
    except Exception as e:
        raise UsageError(f"--signature-json is not a model signature: {type(e).__name__}: {e}"
                         ) from None


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def serve(args: argparse.Namespace, signature) -> int:
    loop = asyncio.get_running_loop()
    model = DataPlane(name=args.name, version=args.version, format=args.format,
                      signature=signature, max_body_size=args.max_body_size,
                      max_batch_size=args.max_batch_size,
                      max_queue_delay=args.max_queue_delay_ms / 1000.0,
                      instances=args.instances, inline_max=args.inline_max_ms / 1000.0,
                      thread_init=_size_framework_threads)
    http = rest.http_server(model, args.prefix)
    try:
        if args.unix_socket:
            await http.add_unix_socket(bind_unix_socket(args.unix_socket, mode=0o600, backlog=1024))
        if args.port is not None:
            await http.listen(args.port, args.host, backlog=1024)
    except OSError as e:
        log.error("cannot listen on %s: %s", _where(args), e.strerror or e)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_with is not None:
        # the replica outlives the models service (its successor adopts it), not the
        # platform; a pidfd becomes readable when that process ends, whoever's it is
        try:
            lifeline = os.pidfd_open(args.exit_with)
        except ProcessLookupError:
            log.info("process %d has ended: stopping", args.exit_with)
            return 0
        loop.add_reader(lifeline, stop.set)

    loaded: asyncio.Future = loop.create_future()

    def load() -> None:
        t0 = time.perf_counter()
        try:
            from aidc.models import formats

            if args.format == "keras":
                _size_tensorflow_threads()
            device = formats.auto_device(args.format) if args.device == "auto" else args.device
            log.info("model %s version %s runs on %s (CUDA_VISIBLE_DEVICES=%r)", args.name, args.version,
                     device, os.environ.get("CUDA_VISIBLE_DEVICES", ""))
            runner = formats.load(args.format, args.artifact, signature, device=device,
                                  threads=_THREADS)
            _size_framework_threads()
            runner.warmup()
            seconds = time.perf_counter() - t0
            single_row, row_threads = _single_row_plan(runner, args.inline_max_ms / 1000.0)
            result = (runner, seconds, single_row, row_threads, None)
        except BaseException as e:  # noqa: BLE001 - reported on the loop
            result = (None, 0.0, None, _THREADS, e)
        loop.call_soon_threadsafe(lambda: loaded.done() or loaded.set_result(result))

    log.info("loading %s model %s version %s from %s (listening on %s)", args.format,
             args.name, args.version, args.artifact, _where(args))
    threading.Thread(target=load, name="aidc-load", daemon=True).start()
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loaded, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not loaded.done():
        log.info("stopped while loading the model")
        http.stop()
        _exit_now(0)
    runner, seconds, single_row, row_threads, error = loaded.result()
    if error is not None:
        if isinstance(error, AidcError):
            log.error("cannot load the model: %s", error)
        else:
            log.error("cannot load the model:\n%s",
                      "".join(traceback.format_exception(type(error), error, error.__traceback__)))
        http.stop()
        return 1
    _size_framework_threads(row_threads)  # the event loop's thread: lone rows run there
    model.loaded(runner, single_row)
    log.info("ready: model %s version %s (%s) on %s, at %s/v2 (loaded and warm in %.2f s, "
             "%s per row on %d thread%s; batching %s, max batch %d, %d threads)", args.name,
             args.version, args.format, _where(args), args.prefix.rstrip("/"), seconds,
             f"{single_row * 1000:.2f} ms" if single_row is not None else "? ms", row_threads,
             "" if row_threads == 1 else "s", "on" if model.batcher.enabled else "off",
             args.max_batch_size, _THREADS)
    await stopping
    log.info("stopping: not ready, no new connections; finishing %d requests in progress",
             model.inflight)
    model.begin_drain()
    http.stop()
    if not await model.wait_idle(args.shutdown_timeout):
        log.warning("%d requests still in progress after %.0f s; stopping anyway",
                    model.inflight, args.shutdown_timeout)
    else:
        await model.batcher.drain()
    try:
        await asyncio.wait_for(http.close_all_connections(), 5)
    except asyncio.TimeoutError:
        pass
    model.batcher.close()
    log.info("stopped")
    return 0


def main(argv=None) -> None:
    # until the event loop takes over, SIGTERM ends the process quietly
    signal.signal(signal.SIGTERM, lambda *_: _exit_now(0))
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from aidc.models import bench
        return bench.main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s aidc.models.server[{args.name}:{args.version}] "
               "%(message)s")
    logging.getLogger("tornado").setLevel(logging.WARNING)
    _limit_threads_env(args.threads if args.threads > 0 else _cpu_count())
    try:
        signature = _read_signature(args.signature_json)
    except AidcError as e:
        log.error("%s", e)
        sys.exit(2)
    try:
        code = asyncio.run(serve(args, signature))
    except KeyboardInterrupt:
        code = 0
    _exit_now(code)


if __name__ == "__main__":
    main()
