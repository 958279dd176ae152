"""Model artifacts as local files for the replica processes (fsspec for remote stores)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fsspec


def local_copy(url: str, filename: str) -> Path:
    """The artifact file (or SavedModel folder) on local disk; remote ones are cached once."""
    if "://" not in url or url.startswith("file://"):
        root = Path(url.removeprefix("file://"))
        return root / filename
    cache = Path(os.environ.get("AIDC_DATA_DIR", ".aidc")) / "models" / "cache" / hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache / filename
    if not target.exists():
        fs, path = fsspec.core.url_to_fs(url)
        cache.mkdir(parents=True, exist_ok=True)
        fs.get(path.rstrip("/") + "/", str(cache), recursive=True)
    return target
