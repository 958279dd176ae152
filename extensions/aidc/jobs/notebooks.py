"""Finding and reading the notebook a user submits, safely.

``path`` is relative to the owner's home: on a root platform the home of the Unix
account ``jupyter-<name>``, in development mode ``<data-dir>/homes/<name>`` (what
the spawner gives each user). The jobs service runs as root, so it never opens that
path by name: :mod:`aidc.security.userfiles` opens it component by component from a
descriptor of the home, refusing ``..`` out of the home and any symbolic link on the
way (so ``../../etc/shadow``, a link to another user's home, or a folder swapped for
such a link while the service reads, all fail), then checks the *opened* file is a
regular file of the owner and reads from that descriptor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..errors import NotFoundError, UsageError
from .. import accounts
from ..security import userfiles

#: a notebook larger than this is refused at submit (it is copied per job)
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024

#: the kernel of a notebook that names none (the jobs service passes its ``JobManager.kernel_name``)
DEFAULT_KERNEL = "python3"


class NotebookError(UsageError):
    """The submitted file is not a notebook aidc can run."""


@dataclass(frozen=True)
class Owner:
    """Where a user's files live and which Unix account their jobs run as."""

    name: str
    home: Path
    unix_name: str | None  # None: jobs run as the service's own account (development mode)
    uid: int | None = None  # the uid the owner's files must belong to (None: development mode)

    @classmethod
    def of(cls, name: str, data_dir: str | os.PathLike) -> Owner:
        if accounts.running_as_root():
            unix = accounts.system_name(name)
            pw = accounts.account(unix)
            if pw is None:
                raise NotFoundError(f"user {name!r} has no Unix account ({unix}) on this platform")
            return cls(name=name, home=Path(pw.pw_dir), unix_name=unix, uid=pw.pw_uid)
        return cls(name=name, home=Path(data_dir) / "homes" / name, unix_name=None)


def resolve(owner: Owner, path: str) -> Path:
    """The file's path inside the owner's home, checked lexically (nothing is opened or followed).

    For showing and for processes that run *as the owner* (a job's kernel); the
    service itself reads only through :func:`read`.
    """
    if not isinstance(path, str) or not path.strip():
        raise NotebookError("path is required: the notebook's path relative to your home")
    try:
        return userfiles.home_path(owner.home, path)
    except userfiles.UserPathError as e:
        raise NotebookError(str(e)) from None


def read(owner: Owner, path: str, kernel_name: str = DEFAULT_KERNEL,
         notes: list[str] | None = None) -> tuple[Path, nbformat.NotebookNode]:
    """Open and parse ``path`` without following links; a precise 4xx-style error for anything else.

    ``kernel_name`` and ``notes``: see :func:`parse`.
    """
    full = resolve(owner, path)
    try:
        raw = userfiles.read_file(owner.home, path, uid=owner.uid, max_bytes=MAX_NOTEBOOK_BYTES)
    except userfiles.FileTooLargeError as e:
        raise NotebookError(f"{path} is {e.size / 2**20:.0f} MiB; notebooks up to "
                            f"{MAX_NOTEBOOK_BYTES // 2**20} MiB can be submitted") from None
    except userfiles.UserPathError as e:
        raise NotebookError(str(e)) from None
    return full, parse(raw, path, kernel_name=kernel_name, notes=notes)


def parse(raw: bytes, path: str = "the notebook", kernel_name: str = DEFAULT_KERNEL,
          notes: list[str] | None = None) -> nbformat.NotebookNode:
    """The notebook in ``raw``, validated, ready for papermill.

    A notebook that names no kernel (what ``nbformat.v4.new_notebook()`` makes) gets
    ``kernel_name``, the platform's Python kernel: what it runs with is appended to
    ``notes`` (for the job's record).
    """
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
    note = default_kernel(nb, kernel_name)
    if note and notes is not None:
        notes.append(note)
    return nb


def default_kernel(nb: nbformat.NotebookNode, kernel_name: str = DEFAULT_KERNEL) -> str | None:
    """Give a notebook that names no kernel ``kernel_name``; return what to tell its owner.

    papermill needs the kernel's name (and language) to read the parameters cell and to
    run the notebook, and refuses a notebook without one ("No kernel name found in
    notebook and no override provided").
    """
    spec = nb.metadata.get("kernelspec")
    if isinstance(spec, dict) and spec.get("name"):
        return None
    language = (nb.metadata.get("language_info") or {}).get("name") or "python"
    nb.metadata["kernelspec"] = nbformat.NotebookNode(
        {**(spec or {}), "name": kernel_name, "display_name": (spec or {}).get("display_name") or kernel_name,
         "language": (spec or {}).get("language") or language})
    return f"the notebook names no kernel; ran it with {kernel_name}"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
