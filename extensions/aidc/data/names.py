"""What a dataset, an alias, a visibility and a file inside a version may be called.

Names end up in URLs and in the storage layout (``<root>/<dataset>/<upload>/<file>``),
so a name with a path in it (``a/b``, ``..``) is refused with a message that says what
is allowed, before anything is stored.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError
from ..services.visibility import VISIBILITIES

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
#: characters a file name inside a dataset may not hold (besides "/" between folders)
_BAD_FILE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_name(name: Any) -> str:
    """``name`` if it is a valid dataset name: no path components, nothing hidden."""
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise UsageError(f"invalid dataset name {name!r}: use 1-128 lowercase letters, digits, "
                         "'-', '_' or '.', starting with a letter or digit (no '/' or '..')")
    return name


def check_alias(alias: Any) -> str:
    if not isinstance(alias, str) or not ALIAS.match(alias) or alias == "latest" or ".." in alias:
        raise UsageError(f"invalid alias {alias!r}: use a lowercase word such as 'train-2026-12' "
                         "('latest' is reserved: it always means the newest version)")
    return alias


def check_visibility(visibility: Any) -> str:
    if visibility not in VISIBILITIES:
        raise UsageError(f"invalid visibility {visibility!r}: use one of {', '.join(VISIBILITIES)} "
                         "(private: you and admins; group: also your groups; public: everyone "
                         "signed in)")
    return visibility


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
