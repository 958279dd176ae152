"""Helpers for the jobs tests: notebooks in a user's home, the jobs API, waiting."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from platform_helpers import Platform, User, unix_name

FINAL = ("completed", "failed", "cancelled")


def notebook(*cells: str, parameters: str | None = None) -> nbformat.NotebookNode:
    """A notebook of code cells; ``parameters`` becomes the cell tagged 'parameters'."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    nb.cells.append(new_markdown_cell("# test notebook"))
    if parameters is not None:
        cell = new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(new_code_cell(src) for src in cells)
    return nb


def home(platform: Platform, user: User) -> Path:
    return Path(pwd.getpwnam(unix_name(user.name, platform.prefix)).pw_dir)


def put(platform: Platform, user: User, rel: str, content: nbformat.NotebookNode | str | bytes) -> Path:
    """Write a file into the user's home, owned by the user (as their own editor would)."""
    pw = pwd.getpwnam(unix_name(user.name, platform.prefix))
    path = Path(pw.pw_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, nbformat.NotebookNode):
        content = nbformat.writes(content)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    for p in [path, *path.relative_to(pw.pw_dir).parents]:
        os.chown(Path(pw.pw_dir) / p, pw.pw_uid, pw.pw_gid)
    return path


def jobs_api(platform: Platform, token: str, method: str, path: str, **kw):
    kw.setdefault("timeout", 60)
    return platform.api(token).request(method, f"{platform.url}/services/jobs/api{path}", **kw)


def submit(platform: Platform, user: User, path: str, **body) -> dict:
    r = jobs_api(platform, user.token, "POST", "/jobs", json={"path": path, **body})
    assert r.status_code == 201, (r.status_code, r.text, platform.log()[-6000:])
    return r.json()


def wait(platform: Platform, user: User, job_id: str, timeout: float = 180,
         until=lambda job: job["status"] in FINAL) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = jobs_api(platform, user.token, "GET", f"/jobs/{job_id}")
        if r.status_code == 200 and until(r.json()):
            return r.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not done in {timeout}s: {r.status_code} {r.text}\n"
                                 f"{platform.log()[-4000:]}")
        time.sleep(0.3)


def wait_service(platform: Platform, token: str, timeout: float = 120) -> None:
    """The jobs service answers (it starts with the hub, and again after a crash)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = jobs_api(platform, token, "GET", "/summary", timeout=5)
            if r.status_code == 200:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"jobs service not up in {timeout}s\n{platform.log()[-4000:]}")


def write_tls_files(folder: Path) -> dict:
    """A CA-signed key pair for a TLS Dask cluster, as an admin would put in files (0600)."""
    from distributed.security import Security

    temporary = Security.temporary()
    files = {"ca": temporary.tls_ca_file, "cert": temporary.tls_client_cert,
             "key": temporary.tls_client_key}
    paths = {}
    for name, pem in files.items():
        path = folder / f"dask-{name}.pem"
        path.write_text(pem)
        path.chmod(0o600)
        paths[name] = str(path)
    return paths
