"""``aidc.models.register`` / ``deploy`` / ``predict`` ...: the registry and endpoints through the one client.

Credentials as everywhere in aidc (:class:`aidc.client.Client`): inside a user's
server nothing needs configuring; elsewhere ``AIDC_URL`` and ``AIDC_TOKEN``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..client import Client
from ..errors import PlatformError, UsageError
from .archive import unzip_to, zip_folder

API = "services/models/api"
V2 = "services/models/v2"


def _client(client: Client | None) -> Client:
    return client or Client()


class ModelVersion:
    """One registered, immutable version of a model; a table in a notebook.

    ``url``: the platform's address, for the links to the job that made it.
    """

    def __init__(self, data: dict, url: str | None = None):
        self._data = data
        self.url = url

    def __repr__(self) -> str:
        return f"<ModelVersion {self.name} v{self.version} {self.format}>"

    def _repr_html_(self) -> str:
        from ..display import model_version_html
        return model_version_html(self)

    name = property(lambda self: self._data["name"])
    version = property(lambda self: self._data["version"])
    format = property(lambda self: self._data["format"])
    signature = property(lambda self: self._data["signature"])
    metrics = property(lambda self: dict(self._data.get("metrics") or {}))
    lineage = property(lambda self: dict(self._data.get("lineage") or {}))
    data = property(lambda self: dict(self._data))


class Deployment(dict):
    """A deployment as the models service describes it: ``dep["ready"]``,
    ``dep["ready_replicas"]`` of ``dep["replicas"]``, ``dep["version"]``, the canary, the
    replicas of each version, each version's cold start (``ready_seconds``: from the start
    of serving until every replica was loaded and warm); a table in a notebook.

    A dict, as :func:`deploy` returned before it had a view of its own, so code that reads
    its keys or writes it as JSON keeps working.
    """

    def __init__(self, data: dict, name: str, url: str | None = None):
        super().__init__(data)
        self.name = name
        self.url = url

    @property
    def endpoint(self) -> str:
        """The v2 (KServe) address of the model: ``.../infer`` calls it, ``.../ready`` says
        whether it answers."""
        return f"{self.url or ''}/{V2}/models/{self.name}"

    def summary(self) -> str:
        """One line: ``serving v1 (ready, 2/2 replicas), canary v2 at 10%``."""
        wanted = self.get("replicas", 0)

        def count(version: int) -> tuple[int, int]:
            for v in self.get("versions") or []:
                if v["version"] == version:
                    return sum(1 for r in v["replicas"] if r["ready"]), len(v["replicas"])
            return 0, wanted

        ready = self.get("ready_replicas", wanted if self.get("ready") else 0)
        if self.get("ready"):
            text = f"serving v{self['version']} (ready, {ready}/{wanted} replicas)"
        elif ready:
            text = f"serving v{self['version']} ({ready}/{wanted} replicas ready)"
        else:
            text = f"v{self['version']} not serving (0/{wanted} replicas ready)"
        if self.get("canary_version"):
            text += f", canary v{self['canary_version']} at {self.get('canary_weight') or 0:.0%}"
            ready, total = count(self["canary_version"])
            if ready < total:
                text += f" ({ready}/{total} replicas ready)"
        return text

    def __repr__(self) -> str:
        return f"<Deployment {self.name}: {self.summary()}>"

    def _repr_html_(self) -> str:
        from ..display import deployment_html
        return deployment_html(self)


def register(model: Any, name: str, signature: dict | None = None, metrics: dict | None = None, *,
             example: Any = None, tags: dict | None = None, visibility: str | None = None,
             description: str | None = None, client: Client | None = None) -> ModelVersion:
    """Store ``model`` (a torch.nn.Module, a keras.Model, or an ONNX file) as the next version of ``name``.

    The signature is inferred from ``example`` (an input batch) when not given. Inside a
    job, the version records the job as its lineage.
    """
    from .formats import save
    from .signature import Signature

    c = _client(client)
    sig = Signature.from_dict(signature) if isinstance(signature, dict) else signature
    with tempfile.TemporaryDirectory(prefix="aidc-register-") as tmp:
        fmt, filename, inferred = save(model, Path(tmp), example=example, signature=sig)
        artifact = Path(tmp) / filename
        archive = None
        if artifact.is_dir():
            payload, archive = zip_folder(artifact), "zip"
        else:
            payload = artifact.read_bytes()
    lineage = {}
    if os.environ.get("AIDC_JOB_ID"):
        lineage = {"job": os.environ["AIDC_JOB_ID"], "attempt": os.environ.get("AIDC_JOB_ATTEMPT")}
    meta = {"format": fmt, "filename": filename, "signature": inferred.to_dict(),
            "metrics": metrics or {}, "tags": tags or {}, "lineage": lineage}
    if archive:
        meta["archive"] = archive
    if visibility:
        meta["visibility"] = visibility
    if description:
        meta["description"] = description
    r = c.request("POST", f"{API}/models/{name}/versions", data={"metadata": json.dumps(meta)},
                  files={"artifact": (filename, payload)}, timeout=600)
    return ModelVersion(r.json(), url=c.url)


def download(name: str, version: int | str, directory: Path, client: Client | None = None) -> Path:
    """Fetch a version's artifact into ``directory``; returns the file (or SavedModel folder)."""
    c = _client(client)
    info = c.get_json(f"{API}/models/{name}/versions/{version}")
    r = c.request("GET", f"{API}/models/{name}/versions/{info['version']}/artifact", timeout=600)
    target = Path(directory) / info["filename"]
    if r.headers.get("Content-Type", "").startswith("application/zip"):
        unzip_to(r.content, target)
    else:
        target.write_bytes(r.content)
    return target


def get(name: str, client: Client | None = None) -> dict:
    """A model: its versions, aliases and deployment."""
    return _client(client).get_json(f"{API}/models/{name}")


def list_models(client: Client | None = None) -> list[dict]:
    return _client(client).get_json(f"{API}/models")["models"]


def set_alias(name: str, alias: str, version: int | str, client: Client | None = None) -> dict:
    """Point ``alias`` (e.g. ``production``) at ``version``; moving it is promotion or rollback."""
    return _client(client).request("PUT", f"{API}/models/{name}/aliases/{alias}", json={"version": version}).json()


def deploy(name: str, version: int | str = "latest", replicas: int | None = None,
           gpus: int | None = None, *, canary: dict | None = None,
           max_batch_size: int | None = None, max_queue_delay_ms: float | None = None,
           client: Client | None = None) -> Deployment:
    """Serve ``version`` of ``name``; returns once every replica is ready (``ready``;
    ``ready_replicas`` says how many are when some could not start in time).

    ``canary={"version": 3, "weight": 0.1}`` sends that share of requests to another version.
    What is not given (``replicas``, ``gpus``, batching) stays as the current deployment
    has it, so adding a canary to a deployment of 2 replicas keeps 2 (a new deployment:
    1 replica, no GPU).
    """
    body: dict[str, Any] = {"version": version}
    options = {"replicas": replicas, "gpus": gpus, "canary": canary, "max_batch_size": max_batch_size,
               "max_queue_delay_ms": max_queue_delay_ms}
    body.update({key: value for key, value in options.items() if value is not None})
    c = _client(client)
    r = c.request("PUT", f"{API}/models/{name}/deployment", json=body, timeout=900)
    return Deployment(c.json(r), name, c.url)


def undeploy(name: str, client: Client | None = None) -> None:
    _client(client).request("DELETE", f"{API}/models/{name}/deployment")


def deployment(name: str, client: Client | None = None) -> Deployment:
    """How ``name`` is served now: versions, replicas and how many are ready, the canary."""
    c = _client(client)
    return Deployment(c.get_json(f"{API}/models/{name}/deployment"), name, c.url)


def rollback(name: str, client: Client | None = None) -> Deployment:
    """Drop the canary, or go back to the version served before the last deploy."""
    c = _client(client)
    r = c.request("POST", f"{API}/models/{name}/deployment/rollback", timeout=900)
    return Deployment(c.json(r), name, c.url)


def promote(name: str, client: Client | None = None) -> Deployment:
    """Make the canary version the primary one."""
    c = _client(client)
    r = c.request("POST", f"{API}/models/{name}/deployment/promote", timeout=900)
    return Deployment(c.json(r), name, c.url)


def predict(name: str, inputs: Any, version: int | str | None = None, client: Client | None = None):
    """Call the deployed model with ``inputs`` (an array, or a dict of input name to array).

    Returns an array when the model has one output, else a dict of output name to array.
    """
    from . import v2

    c = _client(client)
    base = f"{V2}/models/{name}" + (f"/versions/{version}" if version is not None else "")
    meta = c.get_json(base)
    specs = meta["inputs"]
    if not isinstance(inputs, dict):
        if len(specs) != 1:
            raise UsageError(f"model {name!r} takes {len(specs)} inputs; pass a dict of name to array")
        inputs = {specs[0]["name"]: inputs}
    body, _ = v2.encode_request(cast_inputs(inputs, specs))
    r = c.request("POST", f"{base}/infer", data=body, headers={"Content-Type": v2.JSON})
    try:
        outputs = v2.decode_response(r.content, r.headers.get(v2.HEADER_LENGTH))
    except v2.V2Error as e:
        raise PlatformError(f"model {name!r}: {e.message}") from None
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def cast_inputs(inputs: dict, specs: list[dict]) -> dict:
    """``inputs`` as arrays of the datatypes the model declares (``specs``: v2 metadata's
    ``inputs``), cast where no information is lost; a :class:`UsageError` that says why
    where a cast would lose some.

    float64 (numpy's default, and what ``[[1.0, 2, 3]]`` becomes) goes to FP32 or FP16 when
    its values fit; integers and booleans go to a float type, or to another integer type
    when every value is in its range. Floats are never rounded to integers, and nothing
    numeric becomes a string or the reverse. Inputs the model does not declare are sent as
    they are (the service names what it expects).
    """
    import numpy as np

    from .signature import DATATYPES

    declared = {s["name"]: s.get("datatype") for s in specs}
    out = {}
    for key, value in inputs.items():
        arr = np.asarray(value)
        datatype = declared.get(key)
        target = DATATYPES.get(datatype) if datatype else None
        if target is None or arr.dtype == target:
            out[key] = arr
            continue
        out[key] = _cast(key, arr, datatype, target)
    return out


def _cast(key: str, arr, datatype: str, target):
    import numpy as np

    have, want = arr.dtype.kind, target.kind
    refuse = f"input '{key}' is {arr.dtype} but the model takes {datatype}"
    if want == "O":  # BYTES
        if have in "OUS":
            return arr
        raise UsageError(f"{refuse} (strings or bytes); pass strings, not numbers")
    if have in "OUS":
        raise UsageError(f"{refuse}; pass numbers, not strings")
    if have == "c":
        raise UsageError(f"{refuse}: casting would drop the imaginary part; pass real numbers")
    if want == "b":
        if have == "b":
            return arr
        raise UsageError(f"{refuse}; pass booleans (e.g. x != 0), not {arr.dtype} values")
    if want == "f":
        with np.errstate(over="ignore"):
            cast = arr.astype(target)
        if have == "f" and (np.isinf(cast) & np.isfinite(arr)).any():
            big = float(np.abs(arr[np.isfinite(arr)]).max())
            raise UsageError(f"{refuse}: {big:g} is beyond {datatype}'s range "
                             f"(±{float(np.finfo(target).max):g}), and would become infinity")
        if have in "iu" and arr.size:
            exact = 2 ** (np.finfo(target).nmant + 1)  # every integer up to this is exact
            big = max(abs(int(arr.min())), abs(int(arr.max())))
            if big > exact:
                raise UsageError(f"{refuse}: {big} cannot be represented exactly in {datatype} "
                                 f"(integers up to {exact} can); scale the values, or cast "
                                 f"them yourself if the rounding is acceptable")
        return cast
    # an integer type
    if have == "f":
        raise UsageError(f"{refuse}: casting floats to integers would drop their fractions; "
                         f"if that is what you mean, convert first "
                         f"(e.g. np.round(x).astype('{target.name}'))")
    if arr.size:
        info = np.iinfo(target)
        low, high = int(arr.min()), int(arr.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise UsageError(f"{refuse}: {bad} is outside {datatype}'s range "
                             f"[{info.min}, {info.max}]")
    return arr.astype(target)
