"""What the benchmarks that run real platforms as root share: their start, clean-up and last lines.

A benchmark platform makes Unix accounts (its users and its initial ``admin``, with a
private prefix) and processes; whatever happens, the run must leave none behind.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil


def remove_stale_accounts(tmp_prefix: str) -> list[str]:
    """Accounts of an interrupted earlier run (their data dir under /tmp/<tmp_prefix>* is gone)."""
    removed = []
    tag = f"aidc {tempfile.gettempdir()}/{tmp_prefix}"
    for pw in pwd.getpwall():
        if pw.pw_gecos.startswith(tag) and not Path(pw.pw_gecos.split(" ", 1)[1]).exists():
            subprocess.run(["pkill", "-KILL", "-u", pw.pw_name], capture_output=True)
            subprocess.run(["userdel", "--remove", pw.pw_name], capture_output=True)
            removed.append(pw.pw_name)
    return removed


def process_tree(platform) -> list[psutil.Process]:
    """The platform's ``aidc up`` process and everything below it (while it runs)."""
    proc = platform.proc
    if proc is None or proc.poll() is not None:
        return []
    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def clean_up(platform, extra: list[psutil.Process] = (), label: str = "") -> list[str]:
    """Stop ``platform`` and remove its accounts; returns what could not be cleaned (and was forced)."""
    said = f"{label}: " if label else ""
    problems = []
    procs = process_tree(platform) + list(extra)
    if platform.proc is not None:
        try:
            platform.stop()
        except Exception as e:  # noqa: BLE001 - report and keep cleaning
            problems.append(f"{said}stopping the platform: {e}")
    try:
        platform.remove_users()  # its users and the initial admin, with their processes
    except Exception as e:  # noqa: BLE001
        problems.append(f"{said}removing users: {e}")
    _, alive = psutil.wait_procs(procs, timeout=30)
    for proc in alive:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                problems.append(f"{said}process {proc.pid} ({' '.join(proc.cmdline())[:80]}) left")
                os.kill(proc.pid, signal.SIGKILL)  # one the platform started, by its id
        except psutil.NoSuchProcess:
            pass
    for pw in pwd.getpwall():
        if pw.pw_name.startswith(platform.prefix):
            problems.append(f"{said}Unix account {pw.pw_name} left; removing it")
            subprocess.run(["pkill", "-KILL", "-u", pw.pw_name], capture_output=True)
            subprocess.run(["userdel", "--remove", pw.pw_name], capture_output=True)
    return problems


def begin(tmp_prefix: str, why_root: str, say: Callable[[str], None]) -> Path | None:
    """What every root benchmark does first: check root, remove stale accounts, make its folder.

    Returns the run's private temporary folder (0711, so the platform's accounts can reach
    their homes below it), or None (after saying why) when not run as root. SIGTERM is
    turned into KeyboardInterrupt from here on, so ``kill`` cleans up like Ctrl-C.
    """
    if os.geteuid() != 0:
        print(f"run as root: {why_root}", file=sys.stderr)
        return None
    stale = remove_stale_accounts(tmp_prefix)
    if stale:
        say(f"removed {len(stale)} accounts left by an interrupted run: {', '.join(stale)}")
    root = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    root.chmod(0o711)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    return root


def report_end(problems: list[str], clean: str, elapsed: float) -> None:
    """The last lines of every root benchmark: what the clean-up left (``clean`` if nothing), and the time."""
    if problems:
        print("clean-up: PROBLEMS")
        for p in problems:
            print(f"  {p}")
    else:
        print(f"clean-up: OK: {clean}")
    print(f"total run time {elapsed:.0f} s")


def wait_for_service(client, path: str, name: str, platform, timeout: float = 120) -> None:
    """Poll ``path`` until the service answers (it starts with the hub, a little after it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.get_json(path, timeout=5)
            return
        except Exception:  # noqa: BLE001 - not up yet: any failure means "try again"
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {name} service did not answer in {timeout:g} s\n"
                                   f"{platform.log()[-4000:]}") from None
            time.sleep(0.3)
