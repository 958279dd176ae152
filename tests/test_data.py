"""Datasets (``aidc.data``, the data service, ``aidc data``).

Fast tests of the parts without a platform: names, the tables, streamed uploads, quota,
orphan cleanup.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from aidc.data.names import check_file_name, check_name, parse_version
from aidc.data.store import DatasetStore, version_hash
from aidc.data.uploads import DatasetUploads, QuotaExceeded, TooLarge
from aidc.errors import ConflictError, NotFoundError, UsageError


# -- fast: names, store, uploads ------------------------------------------------------
@pytest.mark.parametrize("name", ["a/b", "..", "../etc", "x..y", "", "A", ".hidden", "a b", "a" * 129])
def test_dataset_names_with_paths_or_odd_characters_are_refused(name):
    with pytest.raises(UsageError, match="invalid dataset name"):
        check_name(name)


@pytest.mark.parametrize("name", ["../x", "a//b", "/abs", "a/./b", "x.part", "a\\b", "a\x00"])
def test_file_names_that_escape_the_version_are_refused(name):
    with pytest.raises(UsageError, match="invalid file name"):
        check_file_name(name)


def test_versions_are_numbers_aliases_or_latest():
    assert parse_version(None) is None and parse_version("latest") is None
    assert parse_version("3") == 3 and parse_version(2) == 2
    assert parse_version("train-2026-12") == "train-2026-12"
    for bad in (0, "0", True, "../1", 1.5):
        with pytest.raises(UsageError):
            parse_version(bad)


@pytest.fixture
def uploads(tmp_path):
    store = DatasetStore(db_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    return DatasetUploads(store, storage_url=str(tmp_path / "files"), quota_bytes=1000,
                          max_file_bytes=600)


def declare(*contents: bytes, names=None) -> list[dict]:
    names = names or [f"f{i}.bin" for i in range(len(contents))]
    return [{"name": n, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
            for n, c in zip(names, contents)]


def send(uploads, upload, name: str, content: bytes, piece: int = 7) -> str:
    writer = uploads.writer(upload, name)
    for i in range(0, len(content), piece):
        writer.write(content[i:i + piece])
    digest = writer.finish()
    upload.files[name]["done"] = digest
    return digest


def test_upload_streams_files_and_publishes_one_immutable_version(uploads, tmp_path):
    a, b = b"alpha" * 20, b"beta" * 10
    up = uploads.begin("ds", "alice", ["team"], declare(a, b, names=["a.bin", "sub/b.bin"]),
                       description="two files", alias="first")
    send(uploads, up, "a.bin", a)
    with pytest.raises(ConflictError, match="incomplete: sub/b.bin"):
        uploads.commit(up)
    assert uploads.store.find_datasets() == []  # nothing published before the commit
    send(uploads, up, "sub/b.bin", b)
    v = uploads.commit(up)
    assert v["version"] == 1 and v["size"] == len(a) + len(b)
    assert [f["name"] for f in v["files"]] == ["a.bin", "sub/b.bin"]
    assert v["sha256"] == version_hash(v["files"])
    assert (Path(v["location"]) / "sub" / "b.bin").read_bytes() == b
    assert uploads.store.resolve("ds", "first") == 1
    up2 = uploads.begin("ds", "alice", ["team"], declare(a))
    send(uploads, up2, "f0.bin", a)
    v2 = uploads.commit(up2)
    assert v2["version"] == 2 and uploads.store.resolve("ds", None) == 2
    assert uploads.store.resolve("ds", "first") == 1  # the alias stays where it was put
    assert uploads.used_by("alice") == 2 * len(a) + len(b)
    with pytest.raises(NotFoundError, match="no version or alias 'nope'"):
        uploads.store.version("ds", "nope")
    with pytest.raises(NotFoundError, match="no dataset 'other'"):
        uploads.store.version("other")


def test_truncated_or_altered_file_leaves_no_file_and_no_version(uploads):
    content = b"x" * 100
    up = uploads.begin("ds", "alice", [], declare(content))
    writer = uploads.writer(up, "f0.bin")
    writer.write(content[:50])
    writer.abort()  # the connection closed half way
    folder = Path(up.location)
    assert not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))
    writer = uploads.writer(up, "f0.bin")
    writer.write(content[:99])
    with pytest.raises(UsageError, match="incomplete: 99 of the 100 bytes"):
        writer.finish()
    writer = uploads.writer(up, "f0.bin")
    writer.write(b"y" * 100)
    with pytest.raises(UsageError, match="sha256"):
        writer.finish()
    assert not any(p.is_file() for p in folder.rglob("*"))
    with pytest.raises(ConflictError):
        uploads.commit(up)
    assert uploads.store.find_datasets() == []


def test_quota_counts_stored_versions_and_uploads_in_progress(uploads):
    with pytest.raises(QuotaExceeded, match="quota of 1000 bytes"):
        uploads.begin("ds", "alice", [], [{"name": "a", "size": 501}, {"name": "b", "size": 500}])
    with pytest.raises(TooLarge, match="at most 600 bytes"):
        uploads.begin("ds", "alice", [], [{"name": "big", "size": 601}])
    first = uploads.begin("ds", "alice", [], [{"name": "a", "size": 500}])
    with pytest.raises(QuotaExceeded, match="you use 500 bytes"):
        uploads.begin("ds", "alice", [], [{"name": "b", "size": 501}])
    uploads.begin("other", "bob", [], [{"name": "b", "size": 600}])  # quotas are per user
    uploads.abort(first)
    uploads.user_quotas = {"alice": 5000}
    uploads.begin("ds", "alice", [], [{"name": "a", "size": 600}, {"name": "b", "size": 600}])


def test_a_bad_npz_is_refused_and_a_good_one_kept(uploads):
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(3))
    good, bad = buf.getvalue(), b"PK\x03\x04 not really a zip" + b"\0" * 40
    up = uploads.begin("ds", "alice", [], declare(bad, good, names=["bad.npz", "good.npz"]))
    with pytest.raises(UsageError, match="bad.npz is not a NumPy .npz archive"):
        send(uploads, up, "bad.npz", bad)
    assert not (Path(up.location) / "bad.npz").exists()
    send(uploads, up, "good.npz", good)
    assert (Path(up.location) / "good.npz").read_bytes() == good


def test_orphaned_upload_folders_are_removed_and_versions_kept(uploads):
    kept = uploads.begin("ds", "alice", [], declare(b"keep"))
    send(uploads, kept, "f0.bin", b"keep")
    version = uploads.commit(kept)
    left = uploads.begin("ds", "alice", [], declare(b"left"))
    send(uploads, left, "f0.bin", b"left")  # never committed: the service died
    assert uploads.remove_orphans() == 1
    assert not Path(left.location).exists()
    assert (Path(version["location"]) / "f0.bin").read_bytes() == b"keep"

