"""What a dataset, an alias, a visibility and a file inside a version may be called.

Names end up in URLs and in the storage layout (``<root>/<dataset>/<upload>/<file>``),
so a name with a path in it (``a/b``, ``..``) is refused with a message that says what
is allowed, before anything is stored.
"""

from __future__ import annotations

import re
from typing import Any

from ..catalog import DATASETS, check_visibility  # noqa: F401 (the data package's names)
from ..errors import UsageError

#: characters a file name inside a dataset may not hold (besides "/" between folders)
_BAD_FILE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")

#: a dataset's name and aliases follow the rules every catalog shares (:mod:`aidc.catalog`)
check_name = DATASETS.check_name
check_alias = DATASETS.check_alias


def check_file_name(name: Any) -> str:
    """A file's path inside a version: relative, ``/``-separated, no ``.``/``..`` parts."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or len(name) > 1024 or _BAD_FILE_CHARS.search(name)
            or any(p in ("", ".", "..") or len(p) > 255 or p.endswith(".part") for p in parts)):
        raise UsageError(f"invalid file name {name!r} in a dataset: a relative path such as "
                         "'train/images.npz', without '..', empty parts or control characters")
    return name


def parse_version(ref: Any) -> int | str | None:
    """A version reference as the API takes it: a number, an alias, or None/'latest'."""
    if ref is None or ref == "latest":
        return None
    if isinstance(ref, bool):
        raise UsageError(f"invalid version {ref!r}: use a number or an alias")
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        number = int(ref)
        if number < 1:
            raise UsageError(f"invalid version {ref!r}: versions count from 1")
        return number
    if isinstance(ref, str):
        return check_alias(ref)
    raise UsageError(f"invalid version {ref!r}: use a number or an alias")
