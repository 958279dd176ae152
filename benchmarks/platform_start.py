"""Start, stop and CLI: `aidc up` vs stock JupyterHub on the same proxy, and the `aidc` command.

Goals (issue 11): the login page answers within 3 s of `aidc up`; a stop (SIGTERM) takes
under 5 s, idle or with a user server running; `aidc --help` under 0.3 s, `aidc user list`
and `aidc jobs list` under 0.6 s.

How
---
Each round starts, in turn, a real `aidc up` (the platform as `make up` runs it: hub, the
same configurable-http-proxy, the managed services, as root) and a stock `jupyterhub` with
a minimal configuration (PAM sign-in, `LocalProcessSpawner`, the same proxy command, its own
SQLite database), each in a fresh data directory on free ports. For each it measures:

- **login**: from starting the process to the first ``200`` of ``GET /hub/login`` through
  the proxy (polled every 20 ms);
- **services** (aidc only): to the line ``aidc: all N services are up``;
- **stop idle**: SIGTERM to process exit, right after start;
- **stop with a server** (aidc only; the stock hub has no user to start one for): a second
  platform start with one scientist whose JupyterLab server runs, SIGTERM to exit.

The CLI is timed with the platform running: ``aidc --help``, ``aidc user list``, and
``aidc jobs list`` (as the scientist, with ``AIDC_URL``/``AIDC_TOKEN``), each run several
times, median reported.

The start ratio aidc / stock is printed; aidc does more than stock JupyterHub (it prepares
its data directory, the GPU ledger, the initial admin and its services) so the goal is the
absolute 3 s, with stock as the floor on the same machine.

    .venv/bin/python benchmarks/platform_start.py [--rounds 5]     (as root)
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import requests  # noqa: E402
from bench_platforms import begin, clean_up, report_end  # noqa: E402
from platform_helpers import AIDC, SERVICES_UP, Platform, free_port, new_prefix  # noqa: E402

TMP_PREFIX = "aidc-bench-start-"
POLL_S = 0.02

STOCK_CONFIG = """\
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.ConfigurableHTTPProxy.command = ["{proxy}"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.pid_file = "{root}/proxy.pid"
c.ConfigurableHTTPProxy.auth_token = "bench-proxy-token"
"""


def wait_login(url: str, proc: subprocess.Popen, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering")
        try:
            if requests.get(url + "/hub/login", timeout=2).status_code == 200:
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f"{url}/hub/login did not answer in {timeout:g} s")


def stop(proc: subprocess.Popen) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    return time.monotonic() - t0


def stock_round(root: Path) -> tuple[float, float]:
    """(login, stop) of one stock JupyterHub start."""
    d = Path(tempfile.mkdtemp(dir=root, prefix="stock-"))
    port, hub_port, api_port = free_port(), free_port(), free_port()
    config = d / "jupyterhub_config.py"
    config.write_text(STOCK_CONFIG.format(port=port, hub_port=hub_port, api_port=api_port, root=d,
                                          proxy=ROOT / "node_modules" / ".bin" / "configurable-http-proxy"))
    t0 = time.monotonic()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("jupyterhub")), "-f", str(config)],
                            cwd=d, stdout=open(d / "log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        login = wait_login(f"http://127.0.0.1:{port}", proc) - t0
        return login, stop(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def aidc_round(root: Path, with_server: bool, cli: dict[str, list[float]] | None) -> dict:
    """One `aidc up`: login, services, (CLI), stop; with_server: a scientist's server runs."""
    p = Platform(Path(tempfile.mkdtemp(dir=root, prefix="aidc-")) / "data", prefix=new_prefix())
    p.data_dir.mkdir(parents=True)
    out: dict = {}
    t0 = time.monotonic()
    p.proc = subprocess.Popen(
        [AIDC, "up", "--data-dir", str(p.data_dir), "--port", str(p.port), "--hub-port", str(p.hub_port),
         "--proxy-api-port", str(p.proxy_api_port)],
        stdout=open(p.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "AIDC_UNIX_USER_PREFIX": p.prefix})
    try:
        out["login"] = wait_login(p.url, p.proc) - t0
        while not SERVICES_UP.search(p.log()):
            if time.monotonic() - t0 > 120:
                raise RuntimeError("the services did not come up in 120 s")
            time.sleep(POLL_S)
        out["services"] = time.monotonic() - t0
        if with_server or cli is not None:
            user = p.new_user("scientist")
            if with_server:
                p.start_server(user)
            if cli is not None:
                env = {**os.environ, "AIDC_UNIX_USER_PREFIX": p.prefix, "AIDC_URL": p.url,
                       "AIDC_TOKEN": user.token}
                commands = {"aidc --help": [AIDC, "--help"],
                            "aidc user list": [AIDC, "user", "list", "--data-dir", str(p.data_dir)],
                            "aidc jobs list": [AIDC, "jobs", "list"]}
                for name, cmd in commands.items():
                    t = time.monotonic()
                    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if r.returncode != 0:
                        raise RuntimeError(f"{name} failed: {r.stderr}")
                    cli.setdefault(name, []).append(time.monotonic() - t)
        out["stop"] = stop(p.proc)
        return out
    finally:
        problems = clean_up(p)
        if problems:
            out["problems"] = problems


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s" if values else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    root = begin(TMP_PREFIX, "aidc up makes Unix accounts", lambda m: print(m, file=sys.stderr))
    if root is None:
        return 2
    started = time.monotonic()
    load0 = os.getloadavg()[0]
    stock = {"login": [], "stop": []}
    aidc = {"login": [], "services": [], "stop idle": [], "stop with a server": []}
    cli: dict[str, list[float]] = {}
    problems: list[str] = []
    try:
        for r in range(args.rounds):
            login, stopped = stock_round(root)
            stock["login"].append(login)
            stock["stop"].append(stopped)
            a = aidc_round(root, with_server=False, cli=cli)
            b = aidc_round(root, with_server=True, cli=None)
            problems += a.get("problems", []) + b.get("problems", [])
            aidc["login"] += [a["login"], b["login"]]
            aidc["services"] += [a["services"], b["services"]]
            aidc["stop idle"].append(a["stop"])
            aidc["stop with a server"].append(b["stop"])
            print(f"round {r + 1}: stock login {login:.2f} s stop {stopped:.2f} s | aidc login "
                  f"{a['login']:.2f}/{b['login']:.2f} s, services {a['services']:.2f} s, stop idle "
                  f"{a['stop']:.2f} s, with a server {b['stop']:.2f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    print()
    print(f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; {args.rounds} rounds")
    print(f"login page: aidc median {med(aidc['login'])} vs stock JupyterHub {med(stock['login'])}"
          + (f" ({statistics.median(aidc['login']) / statistics.median(stock['login']):.2f}x)"
             if stock["login"] and aidc["login"] else "") + "   goal: aidc < 3 s")
    print(f"all services up (aidc): median {med(aidc['services'])}")
    print(f"stop: aidc idle {med(aidc['stop idle'])}, aidc with a server "
          f"{med(aidc['stop with a server'])}, stock idle {med(stock['stop'])}   goal: aidc < 5 s")
    for name, times in cli.items():
        print(f"{name}: median {med(times)} over {len(times)} runs")
    report_end(problems, "no account or process left", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
