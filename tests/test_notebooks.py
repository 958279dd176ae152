"""The use-case training notebooks (``notebooks/training/``) and the getting-started tour
(``notebooks/examples/getting_started.ipynb``) end to end on the platform.

The four training notebooks run as concurrent jobs with their small defaults (each kernel
with its share of the cores, as the jobs service sizes it), read their data through the datasets service (uploading
the shipped samples), record metrics that must beat stated floors, register models that
deploy and answer a realistic request through their KServe v2 endpoints, and carry the
job and the dataset versions in their lineage. The tour runs top to bottom as a job beside
them: it puts a dataset, trains through two jobs of its own, deploys, calls and rolls back.
Then the tuning notebook sweeps the MNIST notebook over a small grid and makes the best run
``production`` (after the tour: each of the two waits on jobs of its own while holding a
worker, and the embedded cluster has one worker per core).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pytest
import requests

from aidc.client import Client
from jobs_helpers import put, wait_service

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"

#: notebook -> (model it registers, datasets it reads)
TRAINING = {
    "mnist_cnn": ("mnist-cnn", {"digits-sample"}),
    "recommendation": ("recommender", {"streaming-interactions", "streaming-items"}),
    "customer_service_intents": ("support-intents", {"support-utterances", "support-answers"}),
    "content_generation": ("text-generator", {"kjv-genesis"}),
}


def wait_answers(platform, token: str, path: str, timeout: float = 120) -> None:
    """A service behind the hub answers ``path`` (services start beside the hub)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if platform.api(token).get(f"{platform.url}/{path}", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not answering in {timeout}s\n{platform.log()[-4000:]}")
        time.sleep(0.5)


def client_cell(notebook: Path, marker: str) -> str:
    """The source of the notebook's cell that starts with ``marker`` (code a client copies)."""
    nb = nbformat.read(notebook, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith(marker))


def infer_raw(platform, token: str, name: str, inputs: list[dict]) -> dict:
    """One plain HTTP POST to the model's v2 endpoint; outputs by name."""
    r = requests.post(f"{platform.url}/services/models/v2/models/{name}/infer",
                      headers={"Authorization": f"token {token}"}, json={"inputs": inputs}, timeout=120)
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


def test_training_notebooks_and_the_tour_run_as_jobs_and_their_models_serve(platform, scientist):
    wait_service(platform, scientist.token)
    wait_answers(platform, scientist.token, "services/data/api/quota")
    wait_answers(platform, scientist.token, "services/models/api/models")
    # the user's copy of notebooks/: training/*.ipynb and the shipped samples in data/
    for name in TRAINING:
        put(platform, scientist, f"training/{name}.ipynb", (NOTEBOOKS / "training" / f"{name}.ipynb").read_bytes())
    put(platform, scientist, "examples/getting_started.ipynb",
        (NOTEBOOKS / "examples" / "getting_started.ipynb").read_bytes())
    for sample in (NOTEBOOKS / "data").iterdir():
        if sample.suffix in (".npz", ".csv", ".txt"):
            put(platform, scientist, f"data/{sample.name}", sample.read_bytes())

    import aidc
    client = Client(platform.url, scientist.token)
    # no threads parameter: the jobs service gives each kernel its share of the cores
    jobs = {name: aidc.jobs.submit(f"training/{name}.ipynb", parameters={"seed": 0}, client=client)
            for name in TRAINING}
    # last, so that the training jobs hold the workers first; its own model name, so that
    # its deploy and rollback do not touch the support-intents deployment below
    tour = aidc.jobs.submit("examples/getting_started.ipynb",
                            parameters={"threads": 1, "model_name": "tour-intents"}, client=client)
    for name, job in jobs.items():
        status = job.wait(timeout=1200, progress=False)
        assert status == "completed", (name, job.error, job.logs()[-3000:])
    m = {name: job.metrics for name, job in jobs.items()}

    # each metric beats its floor
    assert m["mnist_cnn"]["accuracy"] > 0.9
    rec = m["recommendation"]
    assert rec["recall_at_10"] > rec["baseline_recall_at_10"] and rec["ndcg_at_10"] > rec["baseline_ndcg_at_10"]
    assert m["customer_service_intents"]["accuracy"] > 0.85 and m["customer_service_intents"]["macro_f1"] > 0.8
    gen = m["content_generation"]
    assert gen["perplexity"] < gen["vocab_size"] / 4  # 4x better than a uniform model

    # each model names its job, notebook, parameters and the dataset versions it was trained on
    versions = {}
    for name, (model, datasets) in TRAINING.items():
        info = client.get_json(f"services/models/api/models/{model}/versions/{m[name]['registered_version']}")
        lineage = info["lineage"]
        assert lineage["job"] == jobs[name].id and lineage["notebook"] == f"training/{name}.ipynb"
        assert lineage["parameters"] == {"seed": 0}
        assert {d["name"] for d in lineage["datasets"]} == datasets, lineage
        assert all(d["version"] >= 1 for d in lineage["datasets"])
        versions[model] = info

    # each deploys (side by side) and answers through its v2 endpoint
    with ThreadPoolExecutor(len(versions)) as pool:
        deployed = list(pool.map(
            lambda model: aidc.models.deploy(model, version=versions[model]["version"], client=client), versions))
    try:
        assert all(d["ready"] for d in deployed), deployed

        # MNIST: shipped digits as raw pixels, as a camera or a form would send them
        with np.load(NOTEBOOKS / "data" / "digits_28x28.npz") as sample:
            images, labels = sample["images"][:20].reshape(-1, 28, 28, 1), sample["labels"][:20]
        probabilities = aidc.models.predict("mnist-cnn", images, client=client)
        assert probabilities.shape == (20, 10) and (probabilities.argmax(1) == labels).sum() >= 16
        raw = infer_raw(platform, scientist.token, "mnist-cnn", [
            {"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32",
             "data": images[0].astype(float).ravel().tolist()}])
        assert np.argmax(next(iter(raw.values()))["data"]) == probabilities[0].argmax()

        # recommender: top 10 unseen titles for two viewers
        top = aidc.models.predict("recommender", np.array([7, 42]), client=client)
        assert top["items"].shape == (2, 10) and top["scores"].shape == (2, 10)
        assert all(len(set(row)) == 10 and 0 <= row.min() and row.max() < 400 for row in top["items"])
        assert (np.diff(top["scores"], axis=1) <= 0).all()  # best first
        raw = infer_raw(platform, scientist.token, "recommender",
                        [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [42]}])
        assert raw["items"]["data"] == top["items"][1].tolist()

        # support intents: the client tokenizes with the notebook's client cell and the
        # tokenizer stored as a dataset beside the model
        tags = versions["support-intents"]["tags"]
        scope: dict = {}
        exec(client_cell(NOTEBOOKS / "training" / "customer_service_intents.ipynb",
                         "# the client's part"), scope)
        folder = aidc.data.get(tags["tokenizer"], version=tags["tokenizer_version"], client=client)
        tokenizer = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
        asks = {"hello, my parcel still hasn't arrived, where is it?": "order_status",
                "I forgot my password and cannot log in": "account_access",
                "我想退货，怎么申请退款": "return_refund"}
        ids = scope["encode"](list(asks), tokenizer)
        out = aidc.models.predict("support-intents", ids, client=client)
        assert [tags["intents"][i] for i in out["intent"]] == list(asks.values()), out
        assert ((0 < out["confidence"]) & (out["confidence"] <= 1)).all()
        raw = infer_raw(platform, scientist.token, "support-intents", [
            {"name": "token_ids", "shape": [1, ids.shape[1]], "datatype": "INT64", "data": ids[0].tolist()}])
        assert tags["intents"][raw["intent"]["data"][0]] == "order_status"

        # text generator: a client loop continues a prompt, one character a call
        tags = versions["text-generator"]["tags"]
        vocabulary = tags["vocabulary"]
        ids = [vocabulary.index(c) for c in "In the beginning God created the heaven and the eart"]
        logits = aidc.models.predict("text-generator", np.array([ids]), client=client)
        assert logits.shape == (1, len(vocabulary)) and vocabulary[int(logits[0].argmax())] == "h"
        for _ in range(5):
            logits = aidc.models.predict("text-generator", np.array([ids[-tags["block_size"]:]]), client=client)
            ids.append(int(logits[0].argmax()))
        assert "".join(vocabulary[i] for i in ids).startswith("In the beginning God created the heaven and the earth")
        raw = infer_raw(platform, scientist.token, "text-generator", [
            {"name": "token_ids", "shape": [1, 3], "datatype": "INT64", "data": ids[:3]}])
        assert len(raw["logits"]["data"]) == len(vocabulary)
    finally:
        for model in versions:
            aidc.models.undeploy(model, client=client)

    # the tour (which ran meanwhile) trained two versions, served the second, rolled back
    assert tour.wait(timeout=1200, progress=False) == "completed", (tour.error, tour.logs()[-3000:])
    assert tour.metrics["served_after_rollback"] == tour.metrics["first_version"]

    # the tuning sweep: two MNIST runs (1 and 2 epochs), the best by accuracy becomes production
    put(platform, scientist, "examples/tuning.ipynb", (NOTEBOOKS / "examples" / "tuning.ipynb").read_bytes())
    tuning = aidc.jobs.submit("examples/tuning.ipynb", client=client, parameters={
        "learning_rates": [0.003], "epochs": [1, 2], "model_name": "tuned-mnist",
        "parameters": {"model_name": "tuned-mnist"}})
    assert tuning.wait(timeout=1200, progress=False) == "completed", (tuning.error, tuning.logs()[-3000:])
    tuned = client.get_json("services/models/api/models/tuned-mnist")
    assert tuned["aliases"]["production"] == tuning.metrics["production_version"]
    best = max(v["metrics"]["accuracy"] for v in tuned["versions"])
    assert tuning.metrics["best_accuracy"] == best > 0.85 and len(tuned["versions"]) == 2, tuned


@pytest.fixture(autouse=True)
def _private_data_cache(tmp_path, monkeypatch):
    """The test's own dataset cache, not root's ~/.cache."""
    monkeypatch.setenv("AIDC_DATA_CACHE", str(tmp_path / "cache"))
