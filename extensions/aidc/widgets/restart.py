"""Restarting my server on another resource profile, also from a kernel of that server.

A kernel cannot stop its own server and then start it: it is stopped with the server,
and so is the server's token (JupyterHub revokes it when the server stops). So from
inside the server, :func:`restart_detached` asks the hub for a short-lived token of the
same user that may only stop, start and read their servers, and hands it to a process of
its own session (``python -m aidc.widgets.restart PROFILE``), which outlives the server:
it stops the server, waits until it is gone, and starts it with the new profile
(:func:`restart_server`, which a script outside the server calls directly). What it does
is written to ``~/.aidc/server-restart.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..client import Client
from ..errors import AidcError, PlatformError

#: what the restart's token may do: stop, start and read the user's own servers, and read
#: the profiles offered (the resources service), which ``Client.start_server`` checks
RESTART_SCOPES = ["servers!user", "read:users!user", "access:services!service=resources"]
#: the restart's token lives this long (a spawn may wait in the GPU queue for 600 s)
TOKEN_SECONDS = 1800
#: seconds the detached restart waits before stopping the server, so that the cell which
#: asked for it ends and the widget's "restarting" message reaches the page first
GRACE_SECONDS = 1.0


def log_path() -> Path:
    return Path.home() / ".aidc" / "server-restart.log"


def server_model(client: Client, name: str) -> dict | None:
    """The hub's model of ``name``'s default server, None while there is none."""
    return (client.get_json(f"hub/api/users/{name}").get("servers") or {}).get("")


def restart_server(client: Client, profile: str, timeout: float = 900,
                   on_step: Callable[[str], None] = lambda text: None) -> dict:
    """Stop the caller's server, wait until it is gone, start it with ``profile``; return
    the hub's model of the new server once it is ready."""
    name = client.whoami()["name"]
    if server_model(client, name) is not None:
        on_step("stopping your server")
        client.stop_server()
        deadline = time.monotonic() + timeout
        while server_model(client, name) is not None:
            if time.monotonic() > deadline:
                raise PlatformError(f"your server did not stop within {timeout:.0f} s")
            time.sleep(0.5)
    on_step(f"starting your server on profile {profile}")
    return client.start_server(profile, wait=True, timeout=timeout)


def restart_detached(client: Client, profile: str) -> subprocess.Popen:
    """Start the restart in a process that outlives this server (see the module's doc)."""
    name = client.whoami()["name"]
    r = client.request("POST", f"hub/api/users/{name}/tokens", json={
        "expires_in": TOKEN_SECONDS, "scopes": RESTART_SCOPES,
        "note": f"aidc: restart of the server on profile {profile}"})
    token = client.json(r)["token"]
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_API_TOKEN"}
    env.update(AIDC_URL=client.url, AIDC_TOKEN=token)
    path = log_path()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    with open(path, "a") as log:
        return subprocess.Popen([sys.executable, "-m", "aidc.widgets.restart", profile], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(Path.home()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m aidc.widgets.restart PROFILE", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)

    time.sleep(GRACE_SECONDS)
    try:
        server = restart_server(Client(), args[0], on_step=say)
    except AidcError as e:
        say(f"error: {e}")
        return 1
    say(f"your server is ready at {server.get('url')} on profile {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
