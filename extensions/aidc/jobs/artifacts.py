"""Where a job's input snapshot and output notebook are kept: any fsspec URL.

A local folder (``<data-dir>/jobs/artifacts``) by default; ``s3://``, ``gs://``,
``abfs://`` or any other fsspec protocol when workers run on other machines (they
need the matching fsspec backend installed and credentials in their environment).
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable


class ArtifactStore(LoggingConfigurable):
    """Reads and writes job artifacts under one fsspec root URL."""

    url = Unicode(
        help="""fsspec URL of the folder holding job artifacts (input snapshots, output
        notebooks). Default: `<data-dir>/jobs/artifacts` on local disk.""",
    ).tag(config=True)

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get("AIDC_JOBS_ARTIFACTS") or str(
            Path(os.environ.get("AIDC_DATA_DIR", ".aidc")).resolve() / "jobs" / "artifacts")

    def job_url(self, job_id: str, name: str) -> str:
        return f"{self.url.rstrip('/')}/{job_id}/{name}"

    def write_bytes(self, url: str, data: bytes) -> None:
        write_bytes(url, data)

    def read_bytes(self, url: str) -> bytes | None:
        return read_bytes(url)


def local_path(url: str) -> str | None:
    """The local file behind ``url``, or None for a remote store."""
    if "://" not in url:
        return url
    if url.startswith("file://"):
        return url[len("file://"):]
    return None


def write_bytes(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def read_bytes(url: str) -> bytes | None:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
