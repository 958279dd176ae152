"""The platform's artifact store (:mod:`aidc.artifacts`) on two fsspec backends.

The same assertions run on local disk (the default) and on ``memory://`` (a second
fsspec backend, standing in for ``s3://``): what the jobs, the model registry and the
datasets service rely on: atomic publishes, reads, listings, deletes, local copies.
"""

from __future__ import annotations

import uuid

import pytest

from aidc import artifacts
from aidc.artifacts import ArtifactStore


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        url = str(tmp_path / "store")
    else:
        url = f"memory://aidc-test-{uuid.uuid4().hex[:8]}"
    yield ArtifactStore(url=url)
    artifacts.delete(url)


def test_write_read_list_delete(store):
    url = store.url_for("job-1", "input.ipynb")
    assert store.read_bytes(url) is None
    assert not store.exists(url)
    store.write_bytes(url, b"notebook")
    assert store.read_bytes(url) == b"notebook"
    assert store.exists(url)
    store.write_bytes(url, b"second")  # a replace is as atomic as a first write
    with store.open_read(url) as f:
        assert f.read() == b"second"
    assert store.ls(store.url_for("job-1")) == ["input.ipynb"]  # no temporary names left
    store.delete(store.url_for("job-1"))
    assert not store.exists(url)
    assert store.ls(store.url_for("job-1")) == []
    store.delete(url)  # deleting nothing is no error
    with pytest.raises(FileNotFoundError):
        store.open_read(url)


def test_streamed_write_publishes_only_on_success(store):
    url = store.url_for("datasets", "big.bin")
    chunk = b"x" * 65536
    with store.open_write(url) as f:
        for _ in range(16):
            f.write(chunk)
    assert store.read_bytes(url) == chunk * 16

    broken = store.url_for("datasets", "broken.bin")
    with pytest.raises(RuntimeError):
        with store.open_write(broken) as f:
            f.write(chunk)
            raise RuntimeError("the upload was interrupted")
    assert not store.exists(broken)
    assert store.ls(store.url_for("datasets")) == ["big.bin"]  # nor a partial file

    with pytest.raises(RuntimeError):  # an interrupted replace keeps the old content
        with store.open_write(url) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert store.read_bytes(url) == chunk * 16


def test_folder_upload_and_local_copy(store, tmp_path):
    src = tmp_path / "saved_model"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"graph")
    (src / "variables" / "variables.index").write_bytes(b"index")
    url = store.url_for("models", "m", "1")
    store.put_dir(src, url)
    assert store.ls(url) == ["saved_model.pb", "variables"]
    assert store.ls(store.url_for("models", "m")) == ["1"]

    moved = store.url_for("models", "m", "2")
    store.put_dir(src, moved, move=True)  # a local store takes the folder itself
    assert store.ls(moved) == ["saved_model.pb", "variables"]
    if artifacts.local_path(moved) is not None:
        assert not src.exists()
    else:
        assert src.exists()  # a remote store got a copy

    copy = artifacts.local_copy(url, tmp_path / "cache")
    assert (copy / "saved_model.pb").read_bytes() == b"graph"
    assert (copy / "variables" / "variables.index").read_bytes() == b"index"
    assert artifacts.local_copy(url, tmp_path / "cache") == copy  # fetched once


def test_jobs_store_keeps_its_configuration_name(tmp_path):
    """``c.ArtifactStore.url`` (as the README documents) still configures the jobs' store."""
    from traitlets.config import Config

    from aidc.jobs.artifacts import ArtifactStore as JobsStore
    config = Config()
    config.ArtifactStore.url = "memory://aidc-jobs-config"
    jobs = JobsStore(config=config)
    assert jobs.job_url("j1", "output.ipynb") == "memory://aidc-jobs-config/j1/output.ipynb"


def test_model_registry_stores_versions_in_a_remote_store(tmp_path, monkeypatch):
    """The registry publishes a version through the store, so ``memory://`` (as ``s3://``)
    works: the record points into the store and replicas get a local copy."""
    from fsspec.implementations.memory import MemoryFileSystem

    from aidc.models import artifacts_local
    from aidc.models.registry import ModelRegistry
    root = f"memory://aidc-models-{uuid.uuid4().hex[:8]}"
    registry = ModelRegistry(db_url=f"sqlite:///{tmp_path / 'aidc.sqlite'}", artifacts_url=root,
                             data_dir=str(tmp_path))
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "model.onnx").write_bytes(b"onnx bytes")
    record = registry.add_version("m", "alice", [], format="onnx", filename="model.onnx",
                                  artifact_url="pending", signature={"inputs": [], "outputs": []})
    url = registry.publish_artifact("m", record["version"], upload)
    assert url == f"{root}/m/1"
    assert registry.version("m", 1)["artifact_url"] == url
    assert artifacts.read_bytes(f"{url}/model.onnx") == b"onnx bytes"
    monkeypatch.setenv("AIDC_DATA_DIR", str(tmp_path))
    local = artifacts_local.local_copy(url, "model.onnx")
    assert local.read_bytes() == b"onnx bytes" and str(local).startswith(str(tmp_path))

    def broken_put(self, *args, **kwargs):
        raise OSError("the store went away mid-upload")
    monkeypatch.setattr(MemoryFileSystem, "put_file", broken_put)
    second = registry.add_version("m", "alice", [], format="onnx", filename="model.onnx",
                                  artifact_url="pending", signature={"inputs": [], "outputs": []})
    with pytest.raises(OSError):
        registry.publish_artifact("m", second["version"], upload)
    assert artifacts.ls(f"{root}/m") == ["1"]  # nothing half-written beside version 1
    artifacts.delete(root)
