"""A version's artifact as local files, for the replica processes and the export route.

The registry publishes artifacts to the platform's artifact store (:mod:`aidc.artifacts`);
replicas load from local disk, so a version in a remote store is downloaded once into
``<data-dir>/models/cache`` (versions are never written again, so the copy stays true).
"""

from __future__ import annotations

from pathlib import Path

from .. import artifacts
from ..paths import data_dir


def local_copy(url: str, filename: str) -> Path:
    """The artifact file (or SavedModel folder) ``filename`` of the version folder ``url``."""
    cache = data_dir().models_cache
    return artifacts.local_copy(url, cache) / filename
