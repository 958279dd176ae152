"""Datasets: named, versioned sets of files (or one table, or arrays) kept by the platform.

From a notebook::

    import aidc
    v = aidc.data.put("mnist-sample", {"x": x, "y": y}, description="8x8 digits, resized")
    arrays = aidc.data.get("mnist-sample")          # {"x": ..., "y": ...}
    aidc.data.alias("mnist-sample", "train-2026-12", v.version)
    aidc.data.path("mnist-sample", "train-2026-12")  # the local folder of its files

The client side is this package's top level (HTTP only, :mod:`aidc.data.client`). The
service side is :mod:`aidc.data.service` (REST API), :mod:`~aidc.data.store` (the
tables), :mod:`~aidc.data.uploads` (streamed uploads, quota, storage) and
:mod:`~aidc.data.names` (what things may be called).
"""

from .client import DatasetVersion, alias, get, list_datasets, open_file, path, put, show, version_info

list = list_datasets  # noqa: A001  (aidc.data.list(), as the API reads)
open = open_file  # noqa: A001  (aidc.data.open(name, file))
info = show

__all__ = ["DatasetVersion", "alias", "get", "info", "list", "open", "path", "put", "show",
           "version_info"]
