"""The user server's command, ``python -m aidc.hub.singleuser``: no Node.js at start.

JupyterLab runs ``node yarn.js config --json`` when ``jupyterlab.labapp`` is imported; aidc's
server command answers that probe with yarn's defaults. A ``node`` on PATH that leaves a mark
when run shows whether the probe ran: with the stock import it does (so the check can fail),
after :func:`aidc.hub.singleuser.skip_yarn_probe` it does not, and JupyterLab still gets
yarn's default registry. (That the hub starts servers with this command is checked by
``tests/test_shutdown.py``, which finds it among a running platform's processes.)
"""

import os
import subprocess
import sys


def _import_labapp(tmp_path, skip: bool) -> tuple[bool, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mark = tmp_path / "node-ran"
    mark.unlink(missing_ok=True)
    node = bin_dir / "node"
    node.write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
    node.chmod(0o755)
    code = (
        ("from aidc.hub.singleuser import skip_yarn_probe; assert skip_yarn_probe()\n" if skip else "")
        + "import jupyterlab.labapp\n"
        "from jupyterlab.commands import AppOptions\n"
        "print(AppOptions().registry)\n"
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return mark.exists(), out.stdout.strip()


def test_user_server_command_does_not_run_node_at_start(tmp_path):
    ran, _ = _import_labapp(tmp_path, skip=False)
    assert ran, "stock JupyterLab no longer probes yarn at import: aidc.hub.singleuser can go"
    ran, registry = _import_labapp(tmp_path, skip=True)
    assert not ran
    assert registry == "https://registry.yarnpkg.com"

