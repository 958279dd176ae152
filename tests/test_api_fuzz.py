"""Bad input across every API (issue 17): each service's OpenAPI document is served, lists
exactly its routes, and a bounded schemathesis run against it, with a valid token, finds
no 5xx and no response that breaks the document.

The run is schemathesis' own command line, in this process (its import is paid once),
per service: its ``examples`` phase, then ``fuzzing`` with at most ``MAX_EXAMPLES`` cases
per operation (one pass: schemathesis' ``--max-time`` would repeat fuzzing until the time
is spent), each request bounded by ``REQUEST_SECONDS``. The caller is a scientist made for
this module, whose server, dataset, model and job are the only things its calls can
change (anyone else's answer 404), so the run may use every verb, ``DELETE`` included,
without touching what other tests share. The document each run reads is the one the
service serves, with ``example`` values added that name the fuzzing user's own things, so
that some calls reach real rows and not only 404s. Excluded (``EXCLUDED``): the path of a
model's deployment (its ``PUT`` and promote/rollback start replica processes, and a fuzzed
body may ask for 16; their bad input is checked with the fuzzing user's model below), and
``openapi.yaml`` (schemathesis parses the YAML text the documents describe as a string).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from jobs_helpers import notebook, put, submit, wait_service
from test_models import models_api, scale_onnx

EXT = Path(__file__).parent.parent / "extensions" / "aidc"

#: service: (module with the route table, the routes' prefix below the document's server URL)
SERVICES = {
    "jobs": ("aidc.jobs.service", "/api"),
    "data": ("aidc.data.service", "/api"),
    "models": ("aidc.models.service", ""),
    "metrics": ("aidc.monitor.service", ""),
    "lab": ("aidc.lab.relay", "aidc"),
}
DOCUMENTS = {"jobs": "jobs", "data": "data", "models": "models", "metrics": "monitor", "lab": "lab"}

MAX_EXAMPLES = 1
REQUEST_SECONDS = 60


def document(service: str) -> dict:
    return yaml.safe_load((EXT / DOCUMENTS[service] / "openapi.yaml").read_text())


def route_patterns(service: str) -> list[str]:
    module_name, _ = SERVICES[service]
    module = importlib.import_module(module_name)
    table = module.default_handlers if service == "lab" else module.ROUTES
    return [pattern for pattern, *_ in table]


def sample_path(doc: dict, path: str, item: dict, operation: dict) -> str:
    """``path`` with each parameter replaced by a value its schema allows."""
    params = {}
    for p in [*item.get("parameters", []), *operation.get("parameters", [])]:
        if "$ref" in p:
            p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
        params[p["name"]] = p.get("schema", {})
    return re.sub(r"{(\w+)}", lambda m: str(params.get(m.group(1), {}).get("enum", ["x1"])[0]), path)


@pytest.mark.parametrize("service", SERVICES)
def test_the_document_lists_exactly_the_routes(service):
    """Every documented path is routed (the document is true), and every route but the
    catch-alls and the document's own is documented (it is complete)."""
    doc = document(service)
    _, prefix = SERVICES[service]
    patterns = route_patterns(service)
    methods = {"get", "put", "post", "patch", "delete"}
    routed_by = {}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in methods:
                continue
            concrete = prefix + sample_path(doc, path, item, operation)
            matching = [p for p in patterns if re.fullmatch(p, concrete)]
            assert matching, f"{method.upper()} {path} ({concrete}) has no route in {service}"
            routed_by.setdefault(matching[0], []).append(f"{method.upper()} {path}")
    undocumented = [p for p in patterns if p not in routed_by
                    and not p.endswith(".*") and "openapi" not in p]  # catch-alls, the document itself
    assert not undocumented, f"routes of {service} missing from its document: {undocumented}"


# --- the schemathesis runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzer(platform, tmp_path_factory):
    """A scientist of its own with a running server, a dataset, a model and a job: what
    the examples name."""
    user = platform.new_user("scientist")
    r = platform.hub(user.token, "POST", f"/users/{user.name}/server")  # ready by the end, below
    assert r.status_code in (201, 202), r.text
    wait_service(platform, user.token)
    api = platform.api(user.token)
    data = f"{platform.url}/services/data/api/datasets/fuzz-{user.name}"
    content = b"a,b\n1,2\n"
    r = api.post(f"{data}/uploads", json={"files": [
        {"name": "t.csv", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}]}, timeout=60)
    assert r.status_code == 201, r.text
    upload = r.json()["upload"]
    assert api.put(f"{data}/uploads/{upload}/files/t.csv", data=content, timeout=60).status_code == 200
    assert api.post(f"{data}/uploads/{upload}", timeout=60).status_code == 201
    model = f"fuzz-{user.name}"
    raw = scale_onnx(tmp_path_factory.mktemp("fuzz") / "m.onnx").read_bytes()
    meta = {"format": "onnx", "filename": "m.onnx", "signature": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}}
    r = models_api(platform, user.token, "POST", f"/models/{model}/versions",
                   data={"metadata": json.dumps(meta)}, files={"artifact": ("m.onnx", raw)})
    assert r.status_code == 201, r.text
    put(platform, user, "fuzz.ipynb", notebook("x = 1", parameters="n = 1"))
    job = submit(platform, user, "fuzz.ipynb")
    platform.wait_ready(user)
    user.things = {"dataset": f"fuzz-{user.name}", "model": model, "job": job["id"],
                   "upload": upload}
    return user


#: the example each path parameter gets (by name), from the fuzzing user's things
def examples(user) -> dict[str, object]:
    return {"name": None, "id": user.things["job"], "version": "1", "upload": user.things["upload"],
            "file": "t.csv", "alias": "fuzzed", "user": user.name, "path": "jobs"}


#: operations left out of the runs: the YAML form of a document, whose text the documents
#: describe as a string (schemathesis parses YAML), and see the module docstring
EXCLUDED = r"/openapi\.yaml$|^/api/models/\{name\}/deployment"


def with_examples(doc: dict, service: str, user) -> dict:
    """The served document with ``example`` values naming the fuzzing user's things."""
    doc = copy.deepcopy(doc)
    values = examples(user)
    values["name"] = user.things["model"] if service == "models" else user.things["dataset"]

    def resolve(p):
        if "$ref" in p:
            node = doc
            for part in p["$ref"][2:].split("/"):
                node = node[part]
            return node
        return p

    for path, item in doc["paths"].items():
        for p in item.get("parameters", []):
            p = resolve(p)
            if p.get("in") == "path" and values.get(p["name"]) is not None and "enum" not in p["schema"]:
                p["example"] = values[p["name"]]
    return doc


def run_schemathesis(location: Path, base_url: str, token: str, report: Path, exclude: str) -> dict:
    from schemathesis.cli import schemathesis as cli

    args = ["run", str(location), "--url", base_url, "-H", f"Authorization: token {token}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,fuzzing", "-n", str(MAX_EXAMPLES),
            "-w", "1", "--seed", "17", "--no-shrink", "--generation-database", "none",
            "--request-timeout", str(REQUEST_SECONDS), "--report", "json", "--report-json-path", str(report),
            "--exclude-path-regex", exclude]
    try:
        cli.main(args, standalone_mode=False)
    except SystemExit:
        pass
    return json.loads(report.read_text())


#: service: (where its document is served, the base URL of its paths), below the platform URL
SERVED = {
    "jobs": ("/services/jobs/api/openapi.json", "/services/jobs/api"),
    "data": ("/services/data/api/openapi.json", "/services/data/api"),
    "models": ("/services/models/api/openapi.json", "/services/models"),
    "metrics": ("/services/metrics/api/openapi.json", "/services/metrics"),
    "lab": ("/user/{user}/aidc/api/openapi.json", "/user/{user}/aidc"),
}


def test_schemathesis_finds_no_server_error_and_no_response_off_its_document(platform, fuzzer, tmp_path):
    figures, failed = {}, {}
    for service, (doc_path, base) in SERVED.items():
        r = platform.api(fuzzer.token).get(platform.url + doc_path.format(user=fuzzer.name), timeout=60)
        assert r.status_code == 200, (service, r.status_code, r.text[:300])
        assert r.json() == document(service), f"{service} does not serve its openapi.yaml"
        location = tmp_path / f"{service}.json"
        location.write_text(json.dumps(with_examples(r.json(), service, fuzzer)))
        result = run_schemathesis(location, platform.url + base.format(user=fuzzer.name), fuzzer.token,
                                  tmp_path / f"{service}-report.json", EXCLUDED)
        figures[service] = (result["operations"]["tested"], result["test_cases"]["generated"],
                            result["test_cases"]["with_failures"])
        if result["failures"] or result["errors"]:
            failed[service] = (result["failures"], result["errors"])
    print("schemathesis (operations tested, cases, cases failing):", figures)
    assert not failed, failed
    assert all(tested > 0 for tested, _, _ in figures.values()), figures


@pytest.mark.parametrize("body, words", [
    ({"max_queue_delay_ms": "soon"}, "max_queue_delay_ms must be"),
    ({"canary": 3}, "canary must be"),
    ({"version": [1]}, "a version is a number, an alias or latest"),
])
def test_a_deployment_with_bad_fields_is_a_400_and_deploys_nothing(platform, fuzzer, body, words):
    model = fuzzer.things["model"]
    r = models_api(platform, fuzzer.token, "PUT", f"/models/{model}/deployment", json=body)
    assert r.status_code in (400, 404) and words in r.json()["message"], (r.status_code, r.text)
    assert models_api(platform, fuzzer.token, "GET", f"/models/{model}/deployment").status_code == 404
