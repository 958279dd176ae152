"""What a stored file holds, for the formats ``aidc.data.get`` reads: NumPy ``.npz``
archives (arrays: dtype and shape), Parquet and CSV tables (columns).

The data service describes each file once it is complete (:func:`describe`), before the
version exists: a file of one of these formats that does not read as one (a ``.npz`` that
is not a NumPy archive, or holds pickles) is refused with a message for the uploader, and
the description of one that does is kept with the version (``files[i]["schema"]``), so
``aidc data show`` tells what a dataset holds without downloading it.
"""

from __future__ import annotations

import csv
import io
import zipfile

from .. import artifacts
from ..errors import UsageError

#: bytes of a CSV file read for its header
CSV_HEADER_BYTES = 64 * 1024


def describe(url: str) -> dict | None:
    """The schema of the file at ``url`` by its suffix; None for other files.
    :class:`UsageError` when it does not read as its suffix says."""
    name = url.rsplit("/", 1)[-1]
    if name.endswith(".npz"):
        return _npz(url, name)
    if name.endswith(".parquet"):
        return _parquet(url, name)
    if name.endswith(".csv"):
        return _csv(url, name)
    return None


def _npz(url: str, name: str) -> dict:
    """The arrays of a NumPy archive, read without pickles (as :func:`aidc.data.get` does)."""
    import numpy as np

    arrays: dict[str, dict] = {}
    try:
        with artifacts.open_read(url, seekable=True) as raw, zipfile.ZipFile(raw) as archive:
            members = archive.namelist()
            if not members:
                raise ValueError("the archive holds no arrays")
            for member in members:
                if not member.endswith(".npy"):
                    raise ValueError(f"{member} is not a .npy array")
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                if dtype.hasobject:
                    raise ValueError(f"{member} holds Python objects (pickles)")
                arrays[member[: -len(".npy")]] = {"dtype": dtype.str, "shape": list(shape)}
            bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"{bad} is damaged (CRC mismatch)")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise UsageError(f"{name} is not a NumPy .npz archive: {e}") from None
    return {"format": "npz", "arrays": arrays}


def _parquet(url: str, name: str) -> dict:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # the service cannot check it; readers with pyarrow can still read it
        return {"format": "parquet"}
    try:
        with artifacts.open_read(url, seekable=True) as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError) for a file that is not one
        raise UsageError(f"{name} is not a Parquet file: {e}") from None
    return {"format": "parquet", "rows": meta.num_rows,
            "columns": {field.name: str(field.type) for field in schema}}


def _csv(url: str, name: str) -> dict:
    with artifacts.open_read(url) as f:
        head = f.read(CSV_HEADER_BYTES)
    line = head.decode("utf-8", errors="replace").splitlines()[:1]
    columns = next(csv.reader(io.StringIO(line[0])), []) if line else []
    return {"format": "csv", "columns": columns}
