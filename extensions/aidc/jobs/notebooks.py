"""Finding and reading the notebook a user submits, safely.

``path`` is relative to the owner's home: on a root platform the home of the Unix
account ``jupyter-<name>``, in development mode ``<data-dir>/homes/<name>`` (what
the spawner gives each user). The resolved file must stay inside that home even
through symlinks, so ``../../etc/shadow`` or a link to another user's home is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..errors import NotFoundError, UsageError
from ..hub import system_users

#: a notebook larger than this is refused at submit (it is copied per job)
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024


class NotebookError(UsageError):
    """The submitted file is not a notebook aidc can run."""


@dataclass(frozen=True)
class Owner:
    """Where a user's files live and which Unix account their jobs run as."""

    name: str
    home: Path
    unix_name: str | None  # None: jobs run as the service's own account (development mode)

    @classmethod
    def of(cls, name: str, data_dir: str | os.PathLike) -> Owner:
        if system_users.running_as_root():
            unix = system_users.system_name(name)
            pw = system_users.account(unix)
            if pw is None:
                raise NotFoundError(f"user {name!r} has no Unix account ({unix}) on this platform")
            return cls(name=name, home=Path(pw.pw_dir), unix_name=unix)
        return cls(name=name, home=Path(data_dir) / "homes" / name, unix_name=None)


def resolve(owner: Owner, path: str) -> Path:
    """The absolute file for ``path``; refuses anything outside the owner's home."""
    if not isinstance(path, str) or not path.strip():
        raise NotebookError("path is required: the notebook's path relative to your home")
    if "\0" in path:
        raise NotebookError("path contains a NUL byte")
    home = owner.home.resolve()
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else home / candidate)
    resolved = full.resolve()
    if resolved != home and home not in resolved.parents:
        raise NotebookError(f"{path} is outside your home directory; give a path inside it")
    if not resolved.exists():
        raise NotFoundError(f"{path} does not exist in your home directory")
    if not resolved.is_file():
        raise NotebookError(f"{path} is not a file")
    if owner.unix_name and resolved.stat().st_uid != _uid(owner.unix_name):
        # the service reads as root: only files the owner owns, never one planted for them
        raise NotebookError(f"{path} does not belong to you")
    return resolved


def _uid(unix_name: str) -> int:
    pw = system_users.account(unix_name)
    return pw.pw_uid if pw else -1


def read(owner: Owner, path: str) -> tuple[Path, nbformat.NotebookNode]:
    """Resolve and parse ``path``; a precise 4xx-style error for anything that is not a notebook."""
    full = resolve(owner, path)
    size = full.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(f"{path} is {size / 2**20:.0f} MiB; notebooks up to "
                            f"{MAX_NOTEBOOK_BYTES // 2**20} MiB can be submitted")
    return full, parse(full.read_bytes(), path)


def parse(raw: bytes, path: str = "the notebook") -> nbformat.NotebookNode:
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    except UnicodeDecodeError:
        raise NotebookError(f"{path} is not a notebook: it is not UTF-8 text") from None
    except Exception as e:  # nbformat raises NotJSONError, ValueError, KeyError ...
        raise NotebookError(f"{path} is not a valid notebook (.ipynb JSON): {_first_line(e)}") from None
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise NotebookError(f"{path} is not a valid notebook: {_first_line(e)}") from None
    if not any(c.cell_type == "code" for c in nb.cells):
        raise NotebookError(f"{path} has no code cells to run")
    for cell in nb.cells:  # papermill reads every cell's tags (its own loader does this too)
        cell.metadata.setdefault("tags", [])
    return nb


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
