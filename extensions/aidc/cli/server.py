"""``aidc profiles``, ``aidc gpus``, ``aidc server start|stop``: resources from the terminal.

These go through :class:`aidc.client.Client` (``AIDC_URL``/``AIDC_TOKEN``), like the
Python API and the widgets; the platform validates everything the same way as for the
spawn form.
"""

from __future__ import annotations

import json

from ..client import Client
from .parsing import CommandGroup


def add_parser(sub, common) -> None:
    pr = sub.add_parser("profiles", help="list the resource profiles you can start a server with")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(handler=profiles)

    g = sub.add_parser("gpus", help="show GPUs, who holds them (as far as you may see) and what is free")
    g.add_argument("--json", action="store_true")
    g.set_defaults(handler=gpus)

    action = CommandGroup(sub, "server", "start or stop your JupyterLab server", None).action
    st = action("start", "start your server (waits until it is ready)", start)
    st.add_argument("--profile", help="resource profile id (see `aidc profiles`)")
    st.add_argument("--no-wait", action="store_true", help="return once the request is accepted")
    action("stop", "stop your server (its GPUs are released)", stop)


def profiles(args) -> int:
    items = Client().profiles()
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for p in items:
        gpus = f"{p['gpus']} {p['gpu_kind']}" if p["gpus"] else "no GPU"
        mark = " (default)" if p.get("default") else ""
        print(f"{p['id']:<10} {gpus:<10} {p['cpu_cores']:>4} cores {p['memory_gb']:>5} GB  {p['display_name']}{mark}")
    return 0


def gpus(args) -> int:
    data = Client().gpus()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    label = " (SIMULATED)" if data["simulated"] else ""
    print(f"GPUs{label}: " + ", ".join(f"{n} {k} free" for k, n in sorted(data["free"].items())))
    for u in data["units"]:
        print(f"  {u['id']:<24} {u['name']:<28} {'free' if u['free'] else (u['holder'] or 'in use')}")
    return 0


def start(args) -> int:
    client = Client()
    server = client.start_server(args.profile, wait=not args.no_wait)
    url = server.get("url") or ""
    if url.startswith("/"):  # the hub gives a path; print where to open it
        url = client.url + url
    print(f"server {'ready' if server.get('ready') else 'starting'}: {url}")
    return 0


def stop(args) -> int:
    Client().stop_server()
    print("server stopping; its GPUs are released")
    return 0
