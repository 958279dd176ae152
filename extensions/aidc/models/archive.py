"""A SavedModel folder travels as one zip (upload, download, export); unpacking stays inside its folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ..errors import UsageError


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder))
    return buf.getvalue()


def unzip_to(data: bytes, target: Path) -> None:
    """Unpack ``data`` into ``target``; refuse members that would land outside it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for member in z.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise UsageError("the zip holds a path outside its folder")
            z.extractall(target)
    except zipfile.BadZipFile:
        raise UsageError("the artifact is not a valid zip archive") from None
