"""Datasets (``aidc.data``, the data service, ``aidc data``).

Fast tests of the parts without a platform first (names, the tables on SQLite and
PostgreSQL, streamed uploads, quota, orphan cleanup); then, on the session platform, round
trips through the Python API and the CLI, permissions, the quota's 413, an interrupted
upload, a bad ``.npz``, names with paths, the service killed mid-upload, and a job that
reads a dataset and names its version (as does the model it registers).
"""

from __future__ import annotations

import hashlib
import io
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from aidc.data.names import check_file_name, check_name, parse_version
from aidc.data.store import DatasetStore, version_hash
from aidc.data.uploads import DatasetUploads, QuotaExceeded, TooLarge
from aidc.errors import error_for_status, status_for
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
    upload.files[name].update(done=digest, schema=writer.schema)  # as the service records it
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
    # both are answered 413, and a client turns a 413 back into the same kind of error
    assert {status_for(QuotaExceeded("q")), status_for(TooLarge("t"))} == {413}
    assert issubclass(QuotaExceeded, error_for_status(413))


def test_a_bad_npz_is_refused_and_a_good_one_kept_with_its_schema(uploads):
    uploads.quota_bytes = uploads.max_file_bytes = 10**6
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 4), dtype=np.float32), y=np.arange(3))
    good, bad = buf.getvalue(), b"PK\x03\x04 not really a zip" + b"\0" * 40
    pickled = io.BytesIO()
    np.savez(pickled, o=np.array([{"a": 1}], dtype=object))
    up = uploads.begin("ds", "alice", [], declare(bad, pickled.getvalue(), good,
                                                  names=["bad.npz", "pickled.npz", "good.npz"]))
    with pytest.raises(UsageError, match="bad.npz is not a NumPy .npz archive"):
        send(uploads, up, "bad.npz", bad)
    with pytest.raises(UsageError, match="pickled.npz is not a NumPy .npz archive: o.npy holds Python objects"):
        send(uploads, up, "pickled.npz", pickled.getvalue())
    assert not (Path(up.location) / "bad.npz").exists()
    send(uploads, up, "good.npz", good)
    assert (Path(up.location) / "good.npz").read_bytes() == good
    assert up.files["good.npz"]["schema"] == {"format": "npz", "arrays": {
        "x": {"dtype": "<f4", "shape": [3, 4]}, "y": {"dtype": np.arange(3).dtype.str, "shape": [3]}}}


def test_tables_are_described_and_a_broken_parquet_refused(uploads):
    uploads.quota_bytes = uploads.max_file_bytes = 10**6
    import pandas as pd

    table = pd.DataFrame({"user": [1, 2], "item": ["a", "b"]})
    parquet = io.BytesIO()
    table.to_parquet(parquet)
    csv = b"user,item\n1,a\n"
    up = uploads.begin("tables", "alice", [], declare(parquet.getvalue(), csv, b"PAR1 broken PAR1",
                                                      names=["t.parquet", "t.csv", "broken.parquet"]))
    send(uploads, up, "t.parquet", parquet.getvalue())
    send(uploads, up, "t.csv", csv)
    with pytest.raises(UsageError, match="broken.parquet is not a Parquet file"):
        send(uploads, up, "broken.parquet", b"PAR1 broken PAR1")
    del up.files["broken.parquet"]
    version = uploads.commit(up)
    schemas = {f["name"]: f["schema"] for f in version["files"]}
    assert schemas["t.parquet"]["rows"] == 2 and list(schemas["t.parquet"]["columns"]) == ["user", "item"]
    assert schemas["t.csv"] == {"format": "csv", "columns": ["user", "item"]}


def test_orphaned_upload_folders_are_removed_and_versions_kept(uploads):
    kept = uploads.begin("ds", "alice", [], declare(b"keep"))
    send(uploads, kept, "f0.bin", b"keep")
    version = uploads.commit(kept)
    left = uploads.begin("ds", "alice", [], declare(b"left"))
    send(uploads, left, "f0.bin", b"left")  # never committed: the service died
    assert uploads.remove_orphans() == 1
    assert not Path(left.location).exists()
    assert (Path(version["location"]) / "f0.bin").read_bytes() == b"keep"



def test_concurrent_publishers_get_distinct_versions_and_never_take_anothers_name(tmp_path):
    """Versions published at once from several processes' stores (two engines on one
    database here) are numbered without gaps or clashes; a name someone else created in
    the meantime is not theirs to add to (except for an admin)."""
    import threading

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    stores = [DatasetStore(db_url=url), DatasetStore(db_url=url)]
    errors: list[Exception] = []

    def publish(store, i):
        try:
            for j in range(3):
                store.add_version("busy", "alice", [], location=f"loc-{i}-{j}",
                                  files=[{"name": "f", "size": 1, "sha256": "0" * 64}])
        except Exception as e:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(stores[i % 2], i)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [v["version"] for v in stores[0].versions("busy")] == list(range(1, 19))
    with pytest.raises(ConflictError, match="just created by someone else"):
        stores[1].add_version("busy", "bob", [], location="x", files=[{"name": "f", "size": 1, "sha256": "0" * 64}])
    assert stores[1].add_version("busy", "root", [], location="y", admin=True,
                                 files=[{"name": "f", "size": 1, "sha256": "0" * 64}])["version"] == 19

def test_the_datasets_tables_on_postgresql(postgres, tmp_path):
    """The migrations and the queries on the production database (sizes past 2 GiB too)."""
    store = DatasetStore(db_url=postgres.create_database("datasets"))
    uploads = DatasetUploads(store, storage_url=str(tmp_path / "files"), quota_bytes=2**40,
                             max_file_bytes=2**40)
    big = 3 * 2**30  # declared only: the quota sums sizes as 64-bit integers
    pending = uploads.begin("pg-ds", "alice", ["team"], [{"name": "big.bin", "size": big}])
    assert uploads.used_by("alice") == big
    uploads.abort(pending)
    up = uploads.begin("pg-ds", "alice", ["team"], declare(b"one"), alias="first")
    send(uploads, up, "f0.bin", b"one")
    assert uploads.commit(up)["version"] == 1
    store.add_version("pg-ds", "alice", [], files=[{"name": "big.bin", "size": big, "sha256": "0" * 64}],
                      location=str(tmp_path / "elsewhere"))
    assert store.resolve("pg-ds", None) == 2 and store.resolve("pg-ds", "first") == 1
    assert store.used_bytes("alice") == big + 3
    assert DatasetStore(db_url=store.db_url).versions("pg-ds")[1]["size"] == big  # migrated once


# -- on the session platform ----------------------------------------------------------
def data_api(platform, token, method, path, **kw):
    kw.setdefault("timeout", 60)
    return platform.api(token).request(method, f"{platform.url}/services/data/api{path}", **kw)


def wait_data_service(platform, token, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if data_api(platform, token, "GET", "/quota", timeout=5).status_code == 200:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"data service not up in {timeout}s\n{platform.log()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture
def data_up(platform, scientist, tmp_path, monkeypatch):
    wait_data_service(platform, scientist.token)
    monkeypatch.setenv("AIDC_DATA_CACHE", str(tmp_path / "cache"))
    return platform


def client_of(platform, user):
    from aidc.client import Client
    return Client(platform.url, user.token)


def test_put_get_list_alias_round_trips_through_the_python_api(data_up, scientist, tmp_path):
    import pandas as pd

    import aidc
    c = client_of(data_up, scientist)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    v1 = aidc.data.put("rt-arrays", {"x": x, "y": np.array([1, 2, 3])}, description="arrays",
                       alias="first", client=c)
    assert (v1.name, v1.version, [f["name"] for f in v1.files]) == ("rt-arrays", 1, ["data.npz"])
    assert v1.size == v1.files[0]["size"] > 0 and len(v1.sha256) == 64
    got = aidc.data.get("rt-arrays", client=c)
    assert set(got) == {"x", "y"} and np.array_equal(got["x"], x)
    v2 = aidc.data.put("rt-arrays", {"x": x * 2}, client=c)
    assert v2.version == 2 and v2.sha256 != v1.sha256
    assert np.array_equal(aidc.data.get("rt-arrays", client=c)["x"], x * 2)  # latest
    assert np.array_equal(aidc.data.get("rt-arrays", "first", client=c)["x"], x)  # alias
    assert np.array_equal(aidc.data.get("rt-arrays", 1, client=c)["x"], x)
    aidc.data.alias("rt-arrays", "first", 2, client=c)
    assert aidc.data.show("rt-arrays", client=c)["aliases"] == {"first": 2}

    table = pd.DataFrame({"user": [1, 2, 3], "item": ["a", "b", "c"], "score": [0.5, 0.25, 1.0]})
    vt = aidc.data.put("rt-table", table, client=c)
    assert [f["name"] for f in vt.files] == ["data.parquet"]
    pd.testing.assert_frame_equal(aidc.data.get("rt-table", client=c), table)
    schema = aidc.data.show("rt-table", client=c)["versions"][0]["files"][0]["schema"]
    assert schema["rows"] == 3 and list(schema["columns"]) == ["user", "item", "score"]

    folder = tmp_path / "images"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.bin").write_bytes(b"A" * 1000)
    (folder / "labels.txt").write_text("cat\ndog\n")
    vf = aidc.data.put("rt-files", folder, client=c)
    assert sorted(f["name"] for f in vf.files) == ["labels.txt", "train/a.bin"]
    assert {f["name"]: f["sha256"] for f in vf.files}["labels.txt"] == hashlib.sha256(b"cat\ndog\n").hexdigest()
    local = aidc.data.get("rt-files", client=c)
    assert isinstance(local, Path) and (local / "train" / "a.bin").read_bytes() == b"A" * 1000
    assert aidc.data.path("rt-files", client=c) == local
    with aidc.data.open("rt-files", "labels.txt", client=c) as f:
        assert f.read() == b"cat\ndog\n"

    names = {d["name"] for d in aidc.data.list(client=c)}
    assert {"rt-arrays", "rt-table", "rt-files"} <= names
    shown = aidc.data.show("rt-arrays", client=c)
    assert shown["owner"] == scientist.name and shown["description"] == "arrays"
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    with pytest.raises(NotFoundError, match="no dataset 'rt-nothing'"):
        aidc.data.get("rt-nothing", client=c)
    with pytest.raises(NotFoundError, match="no version or alias 'nope'"):
        aidc.data.get("rt-arrays", "nope", client=c)
    with pytest.raises(NotFoundError, match="no file 'missing.txt'"):
        aidc.data.open("rt-files", "missing.txt", client=c)

    # encrypted at rest: what lies on disk is ciphertext under the platform's key
    # (AIDCENC1 header), none of the plaintext above; yet every read above gave it back
    stored = data_up.data_dir.resolve() / "datasets" / "files"
    on_disk = {f"{ds}/{p.name}": p.read_bytes() for ds in ("rt-files", "rt-arrays", "rt-table")
               for p in (stored / ds).rglob("*") if p.is_file()}
    assert {"rt-files/labels.txt", "rt-files/a.bin", "rt-arrays/data.npz", "rt-table/data.parquet"} <= set(on_disk)
    for name, raw in on_disk.items():
        assert raw.startswith(b"AIDCENC1"), name
        for plain in (b"cat\ndog", b"A" * 64, b"PK\x03\x04", b"PAR1", b"score"):
            assert plain not in raw, (name, plain)
    kek = data_up.data_dir / "secrets" / "kek"
    assert (kek.stat().st_mode & 0o777) == 0o700
    assert [oct(k.stat().st_mode & 0o777) for k in kek.glob("*.key")] == ["0o600"]


def test_cli_put_list_show_get_alias(data_up, scientist, tmp_path):
    env = {"AIDC_URL": data_up.url, "AIDC_TOKEN": scientist.token, "AIDC_DATA_CACHE": str(tmp_path / "cache")}
    a, b = tmp_path / "a.csv", tmp_path / "b.txt"
    a.write_text("x,y\n1,2\n")
    b.write_text("hello")
    r = data_up.cli("data", "put", "cli-ds", str(a), str(b), "--description", "from the CLI",
                    "--alias", "train-2026-12", env=env)
    assert r.returncode == 0 and "stored cli-ds version 1: 2 file(s)" in r.stdout, r.stderr
    b.write_text("hello again")
    assert data_up.cli("data", "put", "cli-ds", str(b), env=env).returncode == 0
    listed = data_up.cli("data", "list", env=env)
    assert "cli-ds" in listed.stdout and "v2" in listed.stdout and "train-2026-12=v1" in listed.stdout
    shown = data_up.cli("data", "show", "cli-ds", env=env)
    assert "from the CLI" in shown.stdout and "a.csv" in shown.stdout and "v2" in shown.stdout
    assert "a.csv  8 bytes  x, y" in shown.stdout  # what the file holds, without downloading it
    out = tmp_path / "out"
    got = data_up.cli("data", "get", "cli-ds", "-V", "train-2026-12", "-o", str(out), env=env)
    assert got.returncode == 0, got.stderr
    assert (out / "a.csv").read_text() == "x,y\n1,2\n" and (out / "b.txt").read_text() == "hello"
    moved = data_up.cli("data", "alias", "cli-ds", "train-2026-12", "2", env=env)
    assert moved.returncode == 0 and "train-2026-12 -> v2" in moved.stdout
    got = data_up.cli("data", "get", "cli-ds", "-V", "train-2026-12", env=env)
    assert (Path(got.stdout.strip()) / "b.txt").read_text() == "hello again"
    bad = data_up.cli("data", "get", "no-such-ds", env=env)
    assert bad.returncode == 1 and "no dataset 'no-such-ds'" in bad.stderr and "Traceback" not in bad.stderr
    bad = data_up.cli("data", "put", "a/b", str(a), env=env)
    assert bad.returncode == 2 and "invalid dataset name 'a/b'" in bad.stderr


def test_datasets_are_private_to_their_owner_unless_shared(data_up, scientist, other_scientist, viewer, tmp_path):
    import aidc
    from aidc.errors import PermissionDeniedError
    mine, theirs, watcher = (client_of(data_up, u) for u in (scientist, other_scientist, viewer))
    aidc.data.put("perm-private", {"x": np.zeros(2)}, client=mine)
    aidc.data.put("perm-public", {"x": np.ones(2)}, visibility="public", client=mine)
    names = {d["name"] for d in aidc.data.list(client=theirs)}
    assert "perm-public" in names and "perm-private" not in names
    with pytest.raises(NotFoundError, match="no dataset 'perm-private'"):
        aidc.data.get("perm-private", client=theirs)
    r = data_api(data_up, other_scientist.token, "GET", "/datasets/perm-private/versions/1/files/data.npz")
    assert r.status_code == 404 and r.json()["message"] == "no dataset 'perm-private'"
    assert np.array_equal(aidc.data.get("perm-public", client=theirs)["x"], np.ones(2))
    aidc.data.put("perm-public", {"x": np.full(2, 2.0)}, client=mine)  # no visibility: kept
    assert aidc.data.show("perm-public", client=theirs)["visibility"] == "public"
    # seeing is not changing: a public dataset is the owner's to add versions to
    with pytest.raises(PermissionDeniedError, match="only the owner"):
        aidc.data.put("perm-public", {"x": np.zeros(1)}, client=theirs)
    with pytest.raises(PermissionDeniedError, match="only the owner"):
        aidc.data.alias("perm-public", "mine", 1, client=theirs)
    with pytest.raises(NotFoundError):  # a private name is not even revealed as taken
        aidc.data.put("perm-private", {"x": np.zeros(1)}, client=theirs)
    with pytest.raises(PermissionDeniedError, match="scientist role"):
        aidc.data.put("viewer-ds", {"x": np.zeros(1)}, client=watcher)
    assert np.array_equal(aidc.data.get("perm-public", 1, client=watcher)["x"], np.ones(2))  # viewers read
    assert [v["version"] for v in aidc.data.show("perm-public", client=mine)["versions"]] == [1, 2]
    aidc.data.put("perm-public", {"x": np.zeros(2)}, visibility="private", client=mine)
    with pytest.raises(NotFoundError):
        aidc.data.show("perm-public", client=theirs)


def test_a_group_dataset_is_seen_by_the_owners_team_only(data_up, scientist, other_scientist, viewer, admin):
    import secrets

    import aidc
    from aidc.client import Client
    team = f"team-{secrets.token_hex(3)}"
    assert data_up.hub(admin.token, "POST", f"/groups/{team}").status_code == 201
    r = data_up.hub(admin.token, "POST", f"/groups/{team}/users",
                    json={"users": [scientist.name, other_scientist.name]})
    assert r.status_code == 200, r.text
    try:
        # new tokens: the services' short cache of who a token is knows nothing of them yet
        mine = Client(data_up.url, data_up.token(scientist.name))
        teammate = Client(data_up.url, data_up.token(other_scientist.name))
        aidc.data.put("grp-ds", {"x": np.arange(2)}, visibility="group", client=mine)
        assert np.array_equal(aidc.data.get("grp-ds", client=teammate)["x"], np.arange(2))
        assert "grp-ds" in {d["name"] for d in aidc.data.list(client=teammate)}
        outsider = client_of(data_up, viewer)  # signed in, not in the team
        with pytest.raises(NotFoundError, match="no dataset 'grp-ds'"):
            aidc.data.show("grp-ds", client=outsider)
        assert "grp-ds" not in {d["name"] for d in aidc.data.list(client=outsider)}
    finally:
        data_up.hub(admin.token, "DELETE", f"/groups/{team}")

def test_upload_over_the_quota_is_413_before_anything_is_sent(data_up, scientist):
    quota = data_api(data_up, scientist.token, "GET", "/quota").json()
    over = quota["quota"] - quota["used"] + 1
    files = [{"name": f"part{i}.bin", "size": min(over, quota["max_file_bytes"])} for i in range(
        -(-over // quota["max_file_bytes"]))]
    r = data_api(data_up, scientist.token, "POST", "/datasets/quota-ds/uploads", json={"files": files})
    assert r.status_code == 413, r.text
    message = r.json()["message"]
    assert "over your data quota of" in message and "GiB" in message
    r = data_api(data_up, scientist.token, "POST", "/datasets/quota-ds/uploads",
                 json={"files": [{"name": "huge.bin", "size": quota["max_file_bytes"] + 1}]})
    assert r.status_code == 413 and "one file may be at most" in r.json()["message"]
    assert data_api(data_up, scientist.token, "GET", "/datasets/quota-ds").status_code == 404


def test_interrupted_upload_leaves_no_version(data_up, scientist):
    content = bytes(range(256)) * 4096  # 1 MiB
    declared = {"files": [{"name": "blob.bin", "size": len(content),
                           "sha256": hashlib.sha256(content).hexdigest()}]}
    r = data_api(data_up, scientist.token, "POST", "/datasets/cut-ds/uploads", json=declared)
    assert r.status_code == 201, r.text
    upload = r.json()["upload"]
    path = f"/services/data/api/datasets/cut-ds/uploads/{upload}/files/blob.bin"
    url = urlparse(data_up.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall((f"PUT {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                   f"Authorization: token {scientist.token}\r\n"
                   f"Content-Type: application/octet-stream\r\nContent-Length: {len(content)}\r\n\r\n").encode())
        s.sendall(content[: len(content) // 2])
    # the half file is not a file of the upload: committing is refused, nothing is published
    deadline = time.monotonic() + 60
    while True:
        r = data_api(data_up, scientist.token, "POST", f"/datasets/cut-ds/uploads/{upload}")
        if r.status_code == 409 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 409 and "incomplete: blob.bin" in r.json()["message"], r.text
    assert data_api(data_up, scientist.token, "GET", "/datasets/cut-ds").status_code == 404
    # a body cut short with a correct-looking end is refused too: shorter than declared
    r = data_api(data_up, scientist.token, "PUT", f"/datasets/cut-ds/uploads/{upload}/files/blob.bin",
                 data=content[:1000])
    assert r.status_code == 400 and "incomplete: 1000 of the" in r.json()["message"]
    # sent again in full, the same upload completes
    r = data_api(data_up, scientist.token, "PUT", f"/datasets/cut-ds/uploads/{upload}/files/blob.bin",
                 data=content)
    assert r.status_code == 200 and r.json()["sha256"] == declared["files"][0]["sha256"], r.text
    r = data_api(data_up, scientist.token, "POST", f"/datasets/cut-ds/uploads/{upload}")
    assert r.status_code == 201 and r.json()["version"] == 1


def test_bad_input_is_a_clear_4xx_and_stores_nothing(data_up, scientist, tmp_path):
    import aidc
    c = client_of(data_up, scientist)
    fake = tmp_path / "weights.npz"
    fake.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(UsageError, match="weights.npz is not a NumPy .npz archive"):
        aidc.data.put("bad-npz", fake, client=c)
    assert data_api(data_up, scientist.token, "GET", "/datasets/bad-npz").status_code == 404
    for name in ("a/b", "..", "../etc"):
        with pytest.raises(UsageError, match="invalid dataset name"):
            aidc.data.put(name, {"x": np.zeros(1)}, client=c)
    for raw in ("a%2Fb", "..%2Fx"):
        r = data_api(data_up, scientist.token, "POST", f"/datasets/{raw}/uploads",
                     json={"files": [{"name": "f", "size": 1}]})
        assert r.status_code == 400 and "invalid dataset name" in r.json()["message"], (raw, r.text)
    r = data_api(data_up, scientist.token, "GET", "/datasets/a/b")
    assert r.status_code == 400 and "no '/'" in r.json()["message"]
    r = data_api(data_up, scientist.token, "POST", "/datasets/ok-name/uploads",
                 json={"files": [{"name": "../escape.txt", "size": 1}]})
    assert r.status_code == 400 and "invalid file name" in r.json()["message"]
    r = data_api(data_up, scientist.token, "POST", "/datasets/ok-name/uploads", data="{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    doc = data_api(data_up, scientist.token, "GET", "/openapi.json").json()
    assert "/datasets/{name}/uploads" in doc["paths"]
    page = data_up.api(scientist.token).get(f"{data_up.url}/services/data/", timeout=60,
                                            headers={"Accept": "text/html"})
    assert page.status_code == 200 and "aidc data" in page.text and 'href="api/openapi.json"' in page.text


def _data_service_pid(platform) -> int:
    import psutil
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd = proc.info["cmdline"] or []
        if cmd[-2:] == ["-m", "aidc.data.service"] and "aidc.services.launch" not in cmd \
                and (proc.info["environ"] or {}).get("AIDC_DATA_DIR") == str(platform.data_dir):
            return proc.pid
    raise AssertionError("data service process not found")


def test_data_service_killed_mid_upload_keeps_its_versions_and_drops_the_upload(data_up, scientist):
    import os
    import signal

    import aidc
    c = client_of(data_up, scientist)
    aidc.data.put("crash-ds", {"x": np.arange(3)}, client=c)
    content = b"z" * 100_000
    r = data_api(data_up, scientist.token, "POST", "/datasets/crash-ds/uploads",
                 json={"files": [{"name": "more.bin", "size": len(content)}]})
    upload = r.json()["upload"]
    r = data_api(data_up, scientist.token, "PUT", f"/datasets/crash-ds/uploads/{upload}/files/more.bin",
                 data=content)
    assert r.status_code == 200, r.text
    left = data_up.data_dir.resolve() / "datasets" / "files" / "crash-ds" / upload
    assert (left / "more.bin").exists()  # stored, never committed
    pid = _data_service_pid(data_up)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:  # the hub starts it again
        try:
            if _data_service_pid(data_up) != pid:
                break
        except AssertionError:
            pass
        assert time.monotonic() < deadline, data_up.log()[-3000:]
        time.sleep(0.3)
    wait_data_service(data_up, scientist.token)
    assert not left.exists()  # what the dead service was receiving is gone
    r = data_api(data_up, scientist.token, "POST", f"/datasets/crash-ds/uploads/{upload}")
    assert r.status_code == 404 and "start the upload again" in r.json()["message"]
    assert [v["version"] for v in aidc.data.show("crash-ds", client=c)["versions"]] == [1]
    assert np.array_equal(aidc.data.get("crash-ds", client=c)["x"], np.arange(3))


READ_AND_REGISTER = """
import aidc, onnx
from onnx import TensorProto, helper
arrays = aidc.data.get("job-input", "train")
aidc.record("total", float(arrays["x"].sum()))
graph = helper.make_graph(
    [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    initializer=[helper.make_tensor("k", TensorProto.FLOAT, [1], [2.0])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, "scale.onnx")
"""

REGISTER = """
v = aidc.models.register("scale.onnx", name="from-data-job")
aidc.record("registered_version", v.version)
"""


def test_a_job_records_the_dataset_versions_it_read_and_its_model_names_them(data_up, scientist):
    import aidc
    from jobs_helpers import notebook, put, submit, wait, wait_service
    c = client_of(data_up, scientist)
    aidc.data.put("job-input", {"x": np.ones(4)}, client=c)
    v2 = aidc.data.put("job-input", {"x": np.full(4, 2.0)}, alias="train", client=c)
    aidc.data.put("job-input", {"x": np.zeros(4)}, client=c)  # latest, not read by the job
    wait_service(data_up, scientist.token)
    # read and register in one cell: the read is in the job's record before register() asks
    put(data_up, scientist, "data/read.ipynb", notebook(READ_AND_REGISTER + REGISTER))
    job = submit(data_up, scientist, "data/read.ipynb")
    done = wait(data_up, scientist, job["id"], timeout=240)
    assert done["status"] == "completed", (done, data_up.log()[-4000:])
    assert done["metrics"]["total"] == 8.0  # it read v2 (the alias), with its owner's rights
    read = [{"name": "job-input", "version": 2, "sha256": v2.sha256}]
    assert done["datasets"] == read
    env = {"AIDC_URL": data_up.url, "AIDC_TOKEN": scientist.token}
    shown = data_up.cli("jobs", "show", job["id"], env=env).stdout
    assert f"dataset    job-input v2  sha256 {v2.sha256[:12]}" in shown, shown
    version = done["metrics"]["registered_version"]
    r = data_up.api(scientist.token).get(
        f"{data_up.url}/services/models/api/models/from-data-job/versions/{version}", timeout=60)
    lineage = r.json()["lineage"]
    assert lineage["job"] == job["id"] and lineage["notebook"] == "data/read.ipynb"
    assert lineage["datasets"] == read


def test_a_scientists_own_kernel_reads_datasets_as_its_owner(data_up, scientist, other_scientist):
    """In JupyterLab ``aidc.data`` needs no setup: a kernel of the scientist's server reads
    with the server's own token, so it gets the owner's datasets and a 404 for another
    scientist's private one, like the owner's jobs do."""
    import aidc
    from platform_helpers import execute

    aidc.data.put("kernel-read", {"x": np.arange(4)}, client=client_of(data_up, scientist))
    aidc.data.put("kernel-private", {"x": np.arange(4)}, client=client_of(data_up, other_scientist))
    data_up.start_server(scientist)
    try:
        out = execute(data_up, scientist, (
            "import aidc\n"
            "from aidc.errors import NotFoundError\n"
            "print('sum', int(aidc.data.get('kernel-read')['x'].sum()))\n"
            "try:\n"
            "    aidc.data.get('kernel-private')\n"
            "except NotFoundError as e:\n"
            "    print('refused:', e)\n"), timeout=120)
    finally:
        # the session's scientist is shared: later tests expect no server of theirs (the
        # spawn form of test_first_try_users is only shown to a user without one)
        data_up.stop_server(scientist)
    assert "sum 6" in out and "refused: " in out and "kernel-private" in out, out
