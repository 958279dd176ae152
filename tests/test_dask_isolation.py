"""The jobs service's embedded Dask cluster, attacked from another scientist's kernel.

Dask runs code for whoever connects (``Client.run``, ``run_on_scheduler``), and the
embedded scheduler and workers run as root. The attacker here is a second scientist's
real notebook kernel (her own Unix account) that knows every port the jobs service's
process tree listens on, as any account can learn from ``/proc/net/tcp``: it tries the
Dask protocol over plain TCP and over TLS with a certificate of its own, and the HTTP
endpoints distributed serves. Nothing may answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from jobs_helpers import notebook, put, submit, wait, wait_service
from platform_helpers import Platform, execute

#: runs in the attacker's kernel; PORTS is filled in
ATTACK = r"""
import asyncio, json, os, urllib.error, urllib.request
from distributed import Client
from distributed.security import Security

PORTS = {ports!r}
found = {{"uid": os.getuid(), "dask": {{}}, "http": {{}}}}

async def try_dask(address, security):
    async def attempt():
        async with Client(address, asynchronous=True, set_as_default=False, timeout=3,
                          security=security) as c:
            return "ran as uid %s" % await c.run_on_scheduler(os.getuid)
    try:  # an HTTP server may swallow the handshake without answering: bounded
        return await asyncio.wait_for(attempt(), 8)
    except Exception as e:
        return "refused: " + type(e).__name__

def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:
        return type(e).__name__

async def main():  # every attempt at once: each may take its full time-out
    attempts = {{f"{{scheme}}:{{port}}": try_dask(f"{{scheme}}://127.0.0.1:{{port}}",
                                                  Security.temporary() if scheme == "tls" else None)
                for port in PORTS for scheme in ("tcp", "tls")}}
    results = await asyncio.gather(*attempts.values())
    found["dask"] = dict(zip(attempts, results))
    urls = {{f"{{port}}{{path}}": f"http://127.0.0.1:{{port}}{{path}}" for port in PORTS
            for path in ("/info/main/workers.html", "/metrics", "/json/identity.json", "/health")}}
    codes = await asyncio.gather(*(asyncio.to_thread(http_get, u) for u in urls.values()))
    found["http"] = dict(zip(urls, codes))

await main()  # the kernel runs an event loop already (top-level await)
print("RESULT" + json.dumps(found))
"""


def jobs_service_tree(platform: Platform) -> list[psutil.Process]:
    """The jobs service and its descendants (the embedded scheduler's nannies, workers)."""
    hub = psutil.Process(platform.proc.pid)
    service = next(p for p in hub.children(recursive=True)
                   if "aidc.jobs.service" in " ".join(p.cmdline()))
    return [service, *service.children(recursive=True)]


def _open_files(proc: psutil.Process) -> list:
    try:
        return proc.open_files()
    except psutil.NoSuchProcess:
        return []


def jobs_service_ports(platform: Platform) -> list[int]:
    """Every TCP port on which the jobs service or one of its descendants listens."""
    ports = set()
    for proc in jobs_service_tree(platform):
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    ports.add(conn.laddr.port)
        except psutil.NoSuchProcess:
            pass
    return sorted(ports)


def test_another_scientists_kernel_cannot_reach_the_embedded_cluster(
        platform, scientist, other_scientist):
    wait_service(platform, scientist.token)
    # a job starts the embedded cluster (scheduler, nannies, workers)
    put(platform, scientist, "dask-iso/ok.ipynb", notebook("print('fine')"))
    job = submit(platform, scientist, "dask-iso/ok.ipynb")
    assert wait(platform, scientist, job["id"])["status"] == "completed"

    ports = jobs_service_ports(platform)
    # the service's own HTTP port, the scheduler, at least one nanny and worker, and
    # the HTTP servers distributed starts in the scheduler and each worker
    assert len(ports) >= 5, ports

    platform.start_server(other_scientist)
    out = execute(platform, other_scientist, ATTACK.format(ports=ports), timeout=240)
    assert "RESULT" in out, out
    result = json.loads(out.split("RESULT", 1)[1])
    assert result["uid"] != 0  # the attack really ran as the other scientist

    ran = {k: v for k, v in result["dask"].items() if not v.startswith("refused")}
    assert not ran, f"the attacker ran code in the cluster: {ran}"
    # no HTTP endpoint of the cluster answers anything but 404 (the jobs service's own
    # port answers 404 or a login redirect for these paths, never data)
    answered = {k: v for k, v in result["http"].items() if v == 200}
    assert not answered, f"the cluster's HTTP servers answered: {answered}"

    # and jobs still run on that cluster afterwards
    again = submit(platform, scientist, "dask-iso/ok.ipynb")
    assert wait(platform, scientist, again["id"])["status"] == "completed"

    # the workers (root) keep their scratch in the private data directory, not in Dask's
    # shared /tmp/dask-scratch-space that any account could have created first: each
    # holds its folder's lock file open there
    scratch = platform.data_dir / "jobs" / "scratch"
    locks = [f.path for proc in jobs_service_tree(platform) for f in _open_files(proc)
             if f.path.endswith(".dirlock")]
    assert len(locks) >= 1
    assert all(Path(path).is_relative_to(scratch) for path in locks), locks
    info = scratch.stat()
    assert info.st_uid == 0 and info.st_mode & 0o777 == 0o700
