"""A version's artifact as local files, for the replica processes and the export route.

The registry publishes artifacts to the platform's artifact store (:mod:`aidc.artifacts`);
replicas load from local disk, so a version in a remote store is downloaded once into
``<data-dir>/models/cache`` (versions are never written again, so the copy stays true).
An encrypted store's artifacts are never cached as plaintext: a replica gets its own
decrypted copy (:func:`for_replica`, staged by :func:`aidc.models.sandbox.stage`), the
export route a temporary one (:func:`plaintext`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .. import artifacts
from ..paths import data_dir


def local_copy(url: str, filename: str) -> Path:
    """The artifact file (or SavedModel folder) ``filename`` of the version folder ``url``."""
    cache = data_dir().models_cache
    return artifacts.local_copy(url, cache) / filename


def for_replica(url: str, filename: str) -> Path | str:
    """What :func:`aidc.models.sandbox.stage` copies for a replica: the local file, or the
    artifact's URL when its store is encrypted (stage decrypts it into the private copy)."""
    if artifacts.encryption_of(f"{url.rstrip('/')}/{filename}") is not None:
        return f"{url.rstrip('/')}/{filename}"
    return local_copy(url, filename)


@contextlib.contextmanager
def plaintext(url: str, filename: str) -> Iterator[Path]:
    """The artifact as local files for the length of the block (a decrypted copy in a
    private temporary folder, removed after, when the store is encrypted)."""
    target = for_replica(url, filename)
    if isinstance(target, Path):
        yield target
        return
    folder = Path(tempfile.mkdtemp(prefix="aidc-export-"))  # 0700
    try:
        yield artifacts.copy_out(target, folder / filename)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
