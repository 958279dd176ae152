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
