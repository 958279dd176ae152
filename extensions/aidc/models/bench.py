"""``python -m aidc.models.server bench``: requests per second and latency of a model server.

Calls a running server (``--url``, for example one started by hand with ``--port``)
through tritonclient.http from ``--concurrency`` greenlets, after a one-second warm-up,
and prints throughput and latency percentiles per concurrency level.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> None:
    """Requests/s and latency through tritonclient.http (the MNIST shape by default)."""
    p = argparse.ArgumentParser(prog="python -m aidc.models.server bench",
                                description="Requests/s and latency of a running model server.")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--name", required=True)
    p.add_argument("--input", default="input")
    p.add_argument("--output", default="output")
    p.add_argument("--shape", default="1,1,28,28")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", action="store_true", help="JSON tensors instead of binary")
    a = p.parse_args(argv)

    import gevent
    import tritonclient.http as httpclient

    url = a.url.split("://", 1)[-1]
    shape = [int(x) for x in a.shape.split(",")]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for conc in [int(c) for c in a.concurrency.split(",")]:
        client = httpclient.InferenceServerClient(url, concurrency=conc, connection_timeout=30,
                                                  network_timeout=30)
        latencies: list[float] = []

        def worker(deadline):
            inp = httpclient.InferInput(a.input, shape, "FP32")
            inp.set_data_from_numpy(x, binary_data=not a.json)
            out = [httpclient.InferRequestedOutput(a.output, binary_data=not a.json)]
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                client.infer(a.name, [inp], outputs=out)
                latencies.append(time.perf_counter() - t)

        warm = time.perf_counter() + 1.0
        gevent.joinall([gevent.spawn(worker, warm) for _ in range(conc)])
        latencies.clear()
        t0 = time.perf_counter()
        gevent.joinall([gevent.spawn(worker, t0 + a.seconds) for _ in range(conc)])
        elapsed = time.perf_counter() - t0
        lat = np.array(latencies) * 1000
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        print(f"concurrency {conc:3d}: {len(lat) / elapsed:8.0f} req/s   p50 {p50:.3f} ms   "
              f"p90 {p90:.3f} ms   p99 {p99:.3f} ms", flush=True)
        client.close()


if __name__ == "__main__":
    main()
