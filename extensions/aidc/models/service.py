"""The models service at ``/services/models/``: the registry API and v2 inference endpoints.

``/api/...``   the registry: models, versions (multipart upload), aliases, deployments
               (deploy, canary, promote, rollback, undeploy);
``/v2/...``    the Open Inference Protocol (KServe v2), forwarded to the deployment's
               model-server replicas (see :mod:`aidc.models.deployments`), so any v2
               client (``tritonclient.http``) works with the prefix
               ``<hub>/services/models``.

The API is described by ``openapi.yaml`` beside this module, served at
``/api/openapi.json`` and ``/api/openapi.yaml``.

Every route needs a hub token (or the hub's OAuth cookie). A model is seen and called by
its owner, admins, and, by its ``visibility``, the owner's groups or everyone signed in;
only its owner and admins add versions, move aliases and deploy.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tornado import web
from tornado.ioloop import PeriodicCallback

from ..db import iso
from ..errors import ConflictError, NotFoundError, UsageError
from ..gpu.ledger import GRANTED, GPULedger
from ..gpu.platform import open_ledger
from .. import artifacts, roles
from ..security.keys import Encryption, KeyRing
from ..security.tally import CallTally
from ..services.declare import ManagedService, python_command
from ..services.base import (
    OpenAPIHandler, ServiceApp, ServiceHandler, needs_role, run_service, signed_in,
)
from ..services.fields import integer
from ..services.visibility import owned, visible
from . import registry as reg
from . import sandbox, v2
from .archive import unzip_to, zip_folder
from .deployments import DeploymentRunner
from .endpoint_metrics import CONTENT_TYPE
from .formats import model_formats
from .lineage import JobLineage, check_owner, describe
from .registry import ModelRegistry
from .sandbox import owner_account, process_options, stage

MAX_INFER_BODY = 16 * 1024 * 1024
OPENAPI = Path(__file__).with_name("openapi.yaml")


def public_or_authenticated(method):
    """:func:`~aidc.services.base.signed_in`, except for models an admin opened to public read.

    ``c.ModelRegistry.public_models`` lists (glob) names whose v2 metadata, readiness
    and inference anyone may use without a token; the registry API stays private.
    """
    guarded = signed_in(method)

    @functools.wraps(method)
    def wrapper(self, name, *args):
        if self.registry.is_public(name):
            self.public = True
            return method(self, name, *args)
        return guarded(self, name, *args)

    return wrapper


class ModelsHandler(ServiceHandler):
    #: this request is for a model open to public read (no caller is checked)
    public = False

    @property
    def registry(self) -> ModelRegistry:
        return self.settings["registry"]

    @property
    def runner(self) -> DeploymentRunner:
        return self.settings["runner"]

    def visible_model(self, name: str) -> dict:
        model = self.registry.model(name)
        if self.public:  # opened to public read (ModelRegistry.public_models): no caller needed
            return model
        return visible(self.caller, model, f"no model {name!r}")

    def owned_model(self, name: str) -> dict:
        model = self.visible_model(name)
        return owned(self.caller, model,
                     f"only the owner of {name!r} ({model['owner']}) and admins may change it")

    def model_view(self, model: dict) -> dict:
        name = model["name"]
        dep = self.registry.deployment(name)
        return {
            "name": name, "owner": model["owner"], "visibility": model["visibility"],
            "description": model["description"], "created": iso(model["created"]),
            "versions": [version_view(v) for v in self.registry.versions(name)],
            "aliases": self.registry.aliases(name),
            "deployment": deployment_view(dep, self.runner.status(name)) if dep else None,
        }


def version_view(v: dict) -> dict:
    return {"name": v["name"], "version": v["version"], "format": v["format"], "filename": v["filename"],
            "signature": v["signature"],
            "metrics": v["metrics"], "tags": v["tags"], "lineage": v["lineage"], "size": v["size"],
            "created_by": v["created_by"], "created": iso(v["created"])}


def deployment_view(dep: dict, status: dict) -> dict:
    return {"version": dep["version"], "previous_version": dep["previous_version"],
            "canary_version": dep["canary_version"], "canary_weight": dep["canary_weight"],
            "replicas": dep["replicas"], "gpus": dep["gpus"], "max_batch_size": dep["max_batch_size"],
            "max_queue_delay_ms": dep["max_queue_delay_ms"], "updated": iso(dep["updated"]),
            "serving": False, "ready_replicas": 0, **status}


class ModelsCollection(ModelsHandler):
    @signed_in
    def get(self):
        found = [m for m in self.registry.find_models() if self.caller.can_see(m)]
        self.write_json({"models": [self.model_view(m) for m in found]})


class ModelResource(ModelsHandler):
    @signed_in
    def get(self, name):
        self.write_json(self.model_view(self.visible_model(name)))

    @signed_in
    def patch(self, name):
        self.owned_model(name)
        body = self.json_body()
        if "visibility" in body:
            self.registry.set_visibility(name, body["visibility"])  # checked: 400 with the choices
            self.runner.publish()  # the router applies the new visibility from its next request
        self.write_json(self.model_view(self.registry.model(name)))


class VersionsHandler(ModelsHandler):
    """``POST``: multipart upload with parts ``metadata`` (JSON) and ``artifact`` (the file)."""

    @needs_role(roles.SCIENTIST, refused="registering and deploying models needs the scientist role")
    async def post(self, name):
        reg.check_name(name)
        try:
            existing = self.registry.model(name)
        except NotFoundError:
            existing = None
        if existing is not None and not self.caller.owns(existing["owner"]):
            if not self.caller.can_see(existing):
                # as GET answers: a model out of the caller's sight does not exist for them
                # (neither that the name is someone's nor whose)
                raise NotFoundError(f"no model {name!r} you may add versions to; "
                                    "choose another name")
            self.owned_model(name)  # visible to them, someone else's: 403, as every change
        meta_raw = self.get_body_argument("metadata", None)
        files = self.request.files.get("artifact") or []
        if meta_raw is None or not files:
            raise UsageError("send multipart/form-data with a 'metadata' JSON part and an 'artifact' file part")
        try:
            meta = json.loads(meta_raw)
        except ValueError as e:
            raise UsageError(f"the metadata part is not JSON: {e}") from None
        fmt = meta.get("format")
        if fmt not in model_formats:
            raise UsageError(f"format must be one of {', '.join(model_formats.names())}, not {fmt!r}")
        from .signature import Signature
        try:
            signature = Signature.from_dict(meta.get("signature"))
        except Exception as e:
            raise UsageError(f"invalid signature: {e}") from None
        upload = files[0]
        filename = os.path.basename(meta.get("filename") or upload["filename"] or "model")
        for key in ("metrics", "tags", "lineage"):
            if not isinstance(meta.get(key, {}), dict):
                raise UsageError(f"{key} must be a JSON object")
        if meta.get("visibility") is not None:
            reg.check_visibility(meta["visibility"])
        lineage = await self.lineage(meta.get("lineage") or {})
        version_dir = Path(tempfile.mkdtemp(prefix="aidc-model-", dir=self.settings["staging"]))
        try:
            target = version_dir / filename
            if meta.get("archive") == "zip":  # a SavedModel folder travels as a zip
                unzip_to(upload["body"], target)
            else:
                target.write_bytes(upload["body"])
            await self.check_loads(fmt, target, filename, signature)
            record = self.registry.add_version(
                name, self.user_name, self.groups,
                format=fmt, filename=filename, artifact_url="pending", signature=signature.to_dict(),
                metrics=meta.get("metrics") or {}, tags=meta.get("tags") or {},
                lineage=lineage, size=len(upload["body"]),
                visibility=meta.get("visibility"), description=meta.get("description"))
            self.registry.publish_artifact(name, record["version"], version_dir)
        finally:
            shutil.rmtree(version_dir, ignore_errors=True)
        self.audit("model", "register", f"{name}@{record['version']}", detail=fmt)
        self.write_json(version_view(self.registry.version(name, record["version"])), status=201)

    async def lineage(self, claimed: dict) -> dict:
        """The version's lineage; a job named in it is checked and described by the jobs
        service (:mod:`aidc.models.lineage`).

        Inside a job, the client sends ``{"job": id, "attempt": n}``; the version then
        records the job's notebook, parameters and where its input and executed output
        notebooks are served, and only a job of the caller's (any job, for an admin) is
        accepted, so lineage cannot be claimed for someone else's work. Lineage without a
        job (e.g. a notebook path given by hand) is kept as given.
        """
        job_id = claimed.get("job")
        if not job_id:
            return claimed
        job = check_owner(await self.settings["jobs"].job(str(job_id)), job_id, self.caller)
        return describe(job, claimed)

    async def check_loads(self, fmt: str, path: Path, filename: str, signature) -> None:
        """Load the upload in a short-lived process, as the uploader's Unix account (sandbox),
        and run it once on zeros of the declared signature (what a replica does before it
        answers ready), so that a signature the model cannot take is refused now, not at
        deploy time (:func:`aidc.models.formats.check_signature`)."""
        identity = owner_account(self.user_name)
        staged = stage(path, identity, self.settings["run_root"], prefix="upload-")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aidc.models.validate", fmt, str(staged.path), "-",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, **process_options(identity, staged))
            try:
                _, err = await asyncio.wait_for(
                    proc.communicate(json.dumps(signature.to_dict()).encode()), 300)
            except asyncio.TimeoutError:
                proc.kill()
                raise UsageError(f"{filename} could not be loaded within 300 s") from None
        finally:
            staged.remove()
        if proc.returncode != 0:
            lines = [line for line in err.decode(errors="replace").strip().splitlines() if line.strip()]
            raise UsageError(lines[-1] if lines else f"{filename} is not a loadable {fmt} model")


class VersionResource(ModelsHandler):
    @signed_in
    def get(self, name, ref):
        self.visible_model(name)
        self.write_json(version_view(self.registry.version(name, ref)))


class ArtifactHandler(ModelsHandler):
    """The stored artifact of a version (a zip for a SavedModel folder), for export."""

    @signed_in
    def get(self, name, ref):
        self.visible_model(name)
        v = self.registry.version(name, ref)
        from .artifacts_local import plaintext
        with plaintext(v["artifact_url"], v["filename"]) as path:
            if path.is_dir():
                self.set_header("Content-Type", "application/zip")
                self.finish(zip_folder(path))
                return
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", f'attachment; filename="{v["filename"]}"')
            self.finish(path.read_bytes())


class AliasResource(ModelsHandler):
    @signed_in
    def put(self, name, alias):
        self.owned_model(name)
        body = self.json_body()
        number = self.registry.resolve(name, body.get("version"))
        result = self.registry.set_alias(name, alias, number)
        self.audit("model", "set-alias", f"{name}@{alias}", detail=f"-> version {number}")
        self.write_json(result)

    @signed_in
    def delete(self, name, alias):
        self.owned_model(name)
        self.registry.delete_alias(name, alias)
        self.audit("model", "set-alias", f"{name}@{alias}", detail="removed")
        self.set_status(204)
        self.finish()


class DeploymentResource(ModelsHandler):
    @signed_in
    def get(self, name):
        self.visible_model(name)
        dep = self.registry.deployment(name)
        if dep is None:
            raise NotFoundError(f"model {name!r} is not deployed")
        self.write_json(deployment_view(dep, self.runner.status(name)))

    @signed_in
    async def put(self, name):
        model = self.owned_model(name)
        body = self.json_body()
        old = self.registry.deployment(name)
        number = self.registry.resolve(name, body.get("version", "latest"))
        canary = body.get("canary")
        canary_version, canary_weight = None, 0.0
        if canary is not None and not isinstance(canary, dict):
            raise UsageError('canary must be an object: {"version": V, "weight": 0.1}, or null')
        if canary:
            canary_version = self.registry.resolve(name, canary.get("version"))
            canary_weight = canary.get("weight", 0.1)
            if not isinstance(canary_weight, (int, float)) or not 0 <= canary_weight <= 1:
                raise UsageError("canary weight must be a number from 0 to 1")
        dep = {
            "name": name, "version": number, "canary_version": canary_version,
            "canary_weight": float(canary_weight),
            "replicas": integer(body.get("replicas", old["replicas"] if old else 1), "replicas", 1, 16),
            "gpus": integer(body.get("gpus", old["gpus"] if old else 0), "gpus", 0, 8),
            "max_batch_size": integer(body.get("max_batch_size", old["max_batch_size"] if old else 32),
                                      "max_batch_size", 0, 1024),
            "max_queue_delay_ms": milliseconds(
                body.get("max_queue_delay_ms", old["max_queue_delay_ms"] if old else 2.0), "max_queue_delay_ms"),
        }
        self.hold_gpus(name, model["owner"], dep["gpus"])
        await self.runner.apply(dep)
        previous = old["version"] if old and old["version"] != number else (old or {}).get("previous_version")
        saved = self.registry.put_deployment(name, previous_version=previous, deployed_by=self.user_name,
                                             **{k: v for k, v in dep.items() if k != "name"})
        self.audit("model", "deploy" if old is None else ("canary" if canary_version else "update"), name,
                   detail=f"version {number}" + (f", canary version {canary_version} at {canary_weight}"
                                                 if canary_version else "") + f", {dep['replicas']} replica(s)")
        self.write_json(deployment_view(saved, self.runner.status(name)))

    def hold_gpus(self, name: str, owner: str, gpus: int) -> None:
        ledger: GPULedger = self.settings["ledger"]
        holder = f"deployment:{name}"
        current = next((c for c in ledger.claims() if c.holder == holder), None)
        if current is not None and current.count == gpus:
            return
        ledger.release(holder)
        if not gpus:
            return
        claim = ledger.request(holder, owner, gpus, groups=self.groups)
        if claim.state != GRANTED:
            ledger.release(holder)
            raise ConflictError(f"no {gpus} GPU(s) free for this deployment now; try again later "
                                "or deploy with fewer GPUs")

    @signed_in
    async def delete(self, name):
        self.owned_model(name)
        self.registry.delete_deployment(name)
        await self.runner.remove(name)
        self.settings["ledger"].release(f"deployment:{name}")
        self.audit("model", "undeploy", name)
        self.set_status(204)
        self.finish()


def milliseconds(value, name: str) -> float:
    """``value`` if it is a finite number of milliseconds, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise UsageError(f"{name} must be a number of milliseconds, 0 or more, not {json.dumps(value)}")
    return float(value)


class DeploymentAction(ModelsHandler):
    """``rollback``: back to the version served before (or drop the canary); ``promote``: canary becomes primary."""

    @signed_in
    async def post(self, name, action):
        self.owned_model(name)
        dep = self.registry.deployment(name)
        if dep is None:
            raise ConflictError(f"model {name!r} is not deployed")
        dep = {k: dep[k] for k in ("name", "version", "previous_version", "canary_version", "canary_weight",
                                   "replicas", "gpus", "max_batch_size", "max_queue_delay_ms")}
        if action == "promote":
            if not dep["canary_version"]:
                raise ConflictError(f"model {name!r} has no canary to promote")
            dep.update(previous_version=dep["version"], version=dep["canary_version"],
                       canary_version=None, canary_weight=0.0)
        elif dep["canary_version"]:
            dep.update(canary_version=None, canary_weight=0.0)
        else:
            if not dep["previous_version"]:
                raise ConflictError(f"model {name!r} has no earlier deployed version to roll back to")
            dep.update(version=dep["previous_version"], previous_version=dep["version"])
        await self.runner.apply(dep)
        saved = self.registry.put_deployment(name, deployed_by=self.user_name,
                                             **{k: v for k, v in dep.items() if k != "name"})
        self.audit("model", action, name, detail=f"now version {dep['version']}")
        self.write_json(deployment_view(saved, self.runner.status(name)))


# -- v2 -----------------------------------------------------------------------------
class V2Handler(ModelsHandler):
    def is_browser(self) -> bool:
        # a v2 client without a token (tritonclient, curl) gets a 401, not the sign-in page
        return "Authorization" not in self.request.headers and self.accepts_html()

    def write_error(self, status_code: int, **kwargs) -> None:  # v2 error shape
        message = kwargs.get("reason_message")
        exc = kwargs.get("exc_info", (None, None))[1]
        if message is None and isinstance(exc, web.HTTPError) and exc.log_message:
            # with no args tornado keeps the message with each % doubled: undo it
            message = exc.log_message % exc.args
        self.audit_refusal(status_code, message or self._reason)
        self.set_header("Content-Type", v2.JSON)
        self.finish(v2.error_body(message or self._reason))


class V2ServerHandler(V2Handler):
    """Server health and metadata: open without a token once any model is public."""

    async def prepare(self):
        await super().prepare()
        if not self.registry.public_models and not self.current_user:
            raise web.HTTPError(401, "Authentication required: send a hub API token")


class V2Health(V2ServerHandler):
    def get(self, which):
        self.write_json({"live": True} if which == "live" else {"ready": True})


class V2Server(V2ServerHandler):
    def get(self):
        self.write_json({"name": "aidc", "version": "2", "extensions": ["binary_tensor_data"]})


class MetricsHandler(ModelsHandler):
    """Prometheus metrics of every endpoint and replica (:mod:`aidc.models.endpoint_metrics`)."""

    @needs_role(roles.ADMIN, roles.VIEWER, refused=(
        "the models service's metrics are for admins and viewers "
        "(a deployment's own figures are in its deployment API)"))
    async def get(self):
        replicas = await self.runner.replica_metrics()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.runner.endpoint_metrics().render(replicas))


@web.stream_request_body
class V2Model(V2Handler):
    """Model metadata, readiness and inference for ``/v2/models/{name}[/versions/{v}][/ready|/infer]``.

    The body streams in so that its limit, :data:`MAX_INFER_BODY`, holds before any of it
    is kept: the service's HTTP server (:class:`aidc.services.http.NoDelayHTTPServer`)
    reads a larger one, declared or chunked, to the end without keeping it and answers
    413, so that the client, through the hub's proxy, gets that answer rather than a
    dropped connection.
    """

    max_body_bytes = None  # set on the connection in prepare(), before the body is read
    quiet_log = True  # one access-log line per inference is too many (see the metrics)

    async def prepare(self):
        self.request.connection.set_max_body_size(MAX_INFER_BODY)
        self._chunks: list[bytes] = []
        await super().prepare()

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def body(self) -> bytes:
        chunks, self._chunks = self._chunks, []
        self.request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.request.body

    @public_or_authenticated
    async def get(self, name, version, what):
        self.visible_model(name)
        if what == "/ready":
            status = self.runner.status(name)
            number = self.registry.resolve(name, version) if version else None
            # v2 readiness: the model answers requests (a replica restarting does not stop it)
            ready = status.get("serving") and (number is None or any(
                v["version"] == number and any(r["ready"] for r in v["replicas"]) for v in status["versions"]))
            self.write_json({"name": name, "ready": bool(ready)}, status=200 if ready else 400)
            return
        v = self.registry.version(name, version or "latest")
        sig = v["signature"]
        self.write_json({"name": name, "versions": [str(x["version"]) for x in self.registry.versions(name)],
                         "platform": model_formats.platform(v["format"]),
                         "inputs": sig.get("inputs", []), "outputs": sig.get("outputs", [])})

    @public_or_authenticated
    async def post(self, name, version, what):
        body = self.body()
        if what != "/infer":
            raise web.HTTPError(404, f"no such endpoint {self.request.path}")
        self.visible_model(name)
        number = self.registry.resolve(name, version) if version else None
        headers = {k: v for k, v in self.request.headers.items()
                   if k.lower() in ("content-type", "inference-header-content-length", "content-encoding")}
        # counted per caller, version and result: one audit event a period (CallTally)
        caller = self._signed_in_model()
        who = caller["name"] if isinstance(caller, dict) else "anonymous"
        try:
            status, out_headers, data = await self.runner.forward(name, number, body, headers)
        except LookupError as e:
            raise web.HTTPError(404, str(e)) from None
        except RuntimeError as e:
            self.settings["tally"].count(who, name if number is None else f"{name}@{number}", ok=False)
            raise web.HTTPError(503, str(e)) from None
        self.settings["tally"].count(who, f"{name}@{out_headers['X-Aidc-Model-Version']}", ok=status < 400)
        self.set_status(status)
        for k, v in out_headers.items():
            self.set_header(k, v)
        self.finish(data)


ROUTES = [
    (r"/api/models", ModelsCollection),
    (r"/api/models/([^/]+)", ModelResource),
    (r"/api/models/([^/]+)/versions", VersionsHandler),
    (r"/api/models/([^/]+)/versions/([^/]+)", VersionResource),
    (r"/api/models/([^/]+)/versions/([^/]+)/artifact", ArtifactHandler),
    (r"/api/models/([^/]+)/aliases/([^/]+)", AliasResource),
    (r"/api/models/([^/]+)/deployment", DeploymentResource),
    (r"/api/models/([^/]+)/deployment/(rollback|promote)", DeploymentAction),
    (r"/v2/health/(live|ready)", V2Health),
    (r"/v2", V2Server),
    (r"/metrics", MetricsHandler),
    (r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?", V2Model),
    (r"/api/openapi\.(json|yaml)", OpenAPIHandler, {"document": OPENAPI}),
]


class ModelsApp(ServiceApp):
    """The models service's configuration (its classes' settings from the drop-ins)."""

    name = "aidc-models"

    @property
    def classes(self):
        return [ModelRegistry, DeploymentRunner, GPULedger, JobLineage, CallTally, Encryption]


def main() -> None:
    app = ModelsApp.for_platform()
    data_dir = app.data_dir
    registry = ModelRegistry(config=app.config, data_dir=data_dir)
    keys = KeyRing.for_data_dir(data_dir, app.config)
    if keys is not None:  # versions' artifacts are encrypted at rest (aidc.security.crypto)
        keys.check(create=True)
        artifacts.encrypt_under(registry.artifacts_url, keys)
    run_root = sandbox.run_root(data_dir)
    # copies a killed predecessor left, but those its replicas still serve from (adopted)
    sandbox.reset(run_root, keep=DeploymentRunner.adopted_folders(data_dir))
    ledger = open_ledger(data_dir, config=app.config)
    # the replicas end with the hub (this service's parent), not with this service: a
    # restarted service adopts them, and inference through the router never stops
    runner = DeploymentRunner(registry, run_root=run_root, ledger=ledger, config=app.config,
                              data_dir=data_dir, lifeline=os.getppid())
    jobs = JobLineage(config=app.config)  # asks the jobs service to check and describe lineage
    staging = Path(data_dir) / "models" / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    keep = {d["name"] for d in registry.find_deployments()}
    for claim in ledger.claims():  # GPUs of deployments that no longer exist
        if claim.holder.startswith("deployment:") and claim.holder.split(":", 1)[1] not in keep:
            ledger.release(claim.holder)

    tally = CallTally(config=app.config)
    flushing = PeriodicCallback(tally.flush, max(1, tally.period // 4) * 1000)

    async def on_start():
        await runner.start()
        flushing.start()

    async def on_stop():
        flushing.stop()
        tally.flush(everything=True)
        await runner.close()
        shutil.rmtree(run_root, ignore_errors=True)  # the owners' artifact copies and sockets

    run_service(ROUTES, on_start=on_start, on_stop=on_stop, registry=registry, runner=runner,
                ledger=ledger, jobs=jobs, run_root=run_root, staging=str(staging), tally=tally)


def managed_service() -> ManagedService:
    """Entry point (group ``aidc.services``): the models service declaration."""
    return ManagedService(
        name="models",
        command=python_command("aidc.models.service"),
        roles=[roles.SCIENTIST, roles.VIEWER],
        hub_scopes=["access:services!service=jobs"],  # lineage: its own token asks the jobs service
        info={"description": "Model registry and v2 inference endpoints"},
        display=False,
    )


if __name__ == "__main__":
    main()
