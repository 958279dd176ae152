"""The v2 inference protocol over gRPC (``inference.GRPCInferenceService``), in the router.

KServe and Triton offer the Open Inference Protocol over gRPC as well as REST; clients
such as ``tritonclient.grpc`` use it for its lower per-request cost. The proxy speaks
HTTP/1.1 only, so gRPC has a port of its own (``c.ModelsRouter.grpc_port``; ``aidc up
--grpc-port``, by default the public port + 2), with TLS when the platform's public port
has it. nginx listens there where it is installed (:mod:`aidc.models.grpc_front`) and
hands each call to the router processes as HTTP/1.1, which run this module's servicer on
it (:func:`answer_framed`, :class:`FrontContext`); elsewhere every router process serves
the port itself with ``grpc.aio`` (:func:`serve`; the port shared with ``SO_REUSEPORT``).

The caller's hub token comes in the ``authorization`` metadata (``Bearer <token>`` or
``token <token>``) and is checked as the REST path checks it (:class:`aidc.models.router.InferenceRouter`:
the same token cache, rules and replica pools). ``ModelInfer`` goes straight to a replica:
the request becomes the replica's v2 REST request with binary tensors (raw input bytes are
passed as they are, typed ``contents`` become JSON data), and the replica's binary answer
becomes ``raw_output_contents``. The other calls (server and model metadata, readiness)
ask the models service's REST v2 with the caller's token, so their answers and refusals
are the REST ones, turned into gRPC status codes. The service's message types are
tritonclient's (``tritonclient.grpc.service_pb2``), generated from KServe's
``grpc_service.proto``.

Supported: ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelInfer;
the others (statistics, repository, shared memory, streaming) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import json
import logging

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..security import audit
from . import routing, v2
from .router import InferenceRouter, ServiceUnavailable, bearer
from .signature import DATATYPES

log = logging.getLogger("aidc.models.router")

#: HTTP status of a v2 REST answer -> gRPC status
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
          405: grpc.StatusCode.UNIMPLEMENTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE}
#: the ``InferTensorContents`` field of each datatype (FP16, BF16: raw contents only)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def status_of(http_status: int) -> int:
    """The gRPC status code of an HTTP refusal (a v2 REST answer, the router's HTTP layer)."""
    return _CODES.get(http_status, grpc.StatusCode.INTERNAL).value[0]


def _message(body: bytes) -> str:
    """The message of a v2 error body (``{"error": ...}``) or a service's (``{"message": ...}``)."""
    try:
        data = json.loads(body)
        return str(data.get("error") or data.get("message") or body[:200].decode("utf-8", "replace"))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def rest_request(request: pb.ModelInferRequest) -> tuple[bytes, int]:
    """The v2 REST body (JSON header, then binary tensors) of a gRPC infer request, and the
    header's length. Outputs are asked for as binary data."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise v2.V2Error(400, f"the request has {len(request.inputs)} inputs but "
                              f"{len(raw)} raw_input_contents")
    inputs, blobs = [], []
    for i, t in enumerate(request.inputs):
        entry = {"name": t.name, "shape": list(t.shape), "datatype": t.datatype}
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[i])}
            blobs.append(raw[i])
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise v2.V2Error(400, f"input {t.name!r} ({t.datatype}) must come in "
                                      "raw_input_contents: the protocol has no typed contents for it")
            values = list(getattr(t.contents, field))
            if t.datatype == "BYTES":
                values = [b.decode("utf-8", "replace") for b in values]
            entry["data"] = values
        inputs.append(entry)
    body: dict = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}} for o in request.outputs]
    else:
        body["parameters"] = {"binary_data_output": True}
    header = v2.dumps(body)
    return header + b"".join(blobs), len(header)


def grpc_response(body: bytes, header_length: str | None) -> pb.ModelInferResponse:
    """The gRPC infer response of a replica's v2 REST answer."""
    answer, offset = v2.split_request(body, header_length)
    out = pb.ModelInferResponse(model_name=str(answer.get("model_name", "")),
                                model_version=str(answer.get("model_version", "")),
                                id=str(answer.get("id") or ""))
    for o in answer.get("outputs") or ():
        out.outputs.add(name=o["name"], datatype=o["datatype"], shape=o["shape"])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out.raw_output_contents.append(bytes(body[offset:offset + size]))
            offset += size
        elif o["datatype"] == "BYTES":
            out.raw_output_contents.append(v2._serialize_bytes(np.asarray(o["data"], dtype=object)))
        else:
            out.raw_output_contents.append(np.asarray(o["data"], dtype=DATATYPES[o["datatype"]]).tobytes())
    return out


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over the router's checks and replica pools."""

    def __init__(self, router: InferenceRouter):
        self.router = router

    # -- the caller --------------------------------------------------------------------------
    @staticmethod
    def _token(context) -> str | None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                return bearer(value)
        return None

    async def _refuse(self, context, code: grpc.StatusCode, message: str, user: dict | None,
                      target: str) -> None:
        if user is not None and code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            audit.record("access", actor=user["name"], action="refused", target=target,
                         result="failure", status=404 if code == grpc.StatusCode.NOT_FOUND else 403,
                         reason=message[:500], remote_ip=context.peer())
        await context.abort(code, message)

    async def _rest(self, context, method: str, path: str):
        """Ask the models service's REST v2 with the caller's token; (status, JSON body)."""
        token = self._token(context)
        headers = {"Authorization": f"token {token}"} if token else {}
        try:
            status, _, body = await self.router.ask_service(
                method, f"{self.router.prefix}/v2{path}", headers)
        except ServiceUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if status >= 400 and not (status == 400 and path.endswith("/ready")):
            await context.abort(_CODES.get(status, grpc.StatusCode.INTERNAL), _message(body))
        return status, json.loads(body)

    # -- server --------------------------------------------------------------------------------
    async def ServerLive(self, request, context):
        await self._rest(context, "GET", "/health/live")
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        await self._rest(context, "GET", "/health/ready")
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        _, data = await self._rest(context, "GET", "")
        return pb.ServerMetadataResponse(name=data.get("name", "aidc"), version=str(data.get("version", "")),
                                         extensions=data.get("extensions", []))

    # -- models --------------------------------------------------------------------------------
    @staticmethod
    def _model_path(name: str, version: str) -> str:
        from urllib.parse import quote

        path = f"/models/{quote(name, safe='')}"
        return f"{path}/versions/{quote(version, safe='')}" if version else path

    async def ModelReady(self, request, context):
        status, data = await self._rest(context, "GET", self._model_path(request.name, request.version) + "/ready")
        return pb.ModelReadyResponse(ready=status == 200 and bool(data.get("ready")))

    async def ModelMetadata(self, request, context):
        _, data = await self._rest(context, "GET", self._model_path(request.name, request.version))
        out = pb.ModelMetadataResponse(name=data["name"], versions=data.get("versions", []),
                                       platform=data.get("platform", ""))
        for t in data.get("inputs", []):
            out.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for t in data.get("outputs", []):
            out.outputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return out

    async def ModelInfer(self, request, context):
        router = self.router
        name = request.model_name
        target = f"gRPC ModelInfer {name}"
        token = self._token(context)
        user = await router.caller(token)
        entry: routing.ModelEntry | None = router.table.get(name) or router.table.get(name, fresh=True)
        if entry is None or not entry.public:
            if token is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "Authentication required: send a hub API token in the "
                                    "'authorization' metadata ('Bearer <token>')")
            if user is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "the hub does not accept this token (expired or revoked?)")
            if not router.may_use(user):
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                                   "this token may not use the models service", user, target)
        version = None
        if request.model_version:
            if not request.model_version.isdigit():
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"model_version must be a version number, not "
                                    f"{request.model_version!r} (aliases: use REST)")
            version = int(request.model_version)
        if entry is None or not router.may_call(user, entry) or (
                version is not None and not any(s.version == version for s in entry.served)):
            what = f"version {version} of model {name!r}" if version is not None else f"model {name!r}"
            await self._refuse(context, grpc.StatusCode.NOT_FOUND,
                               f"no deployed {what} that you may call", user, target)
        try:
            body, header_length = rest_request(request)
        except v2.V2Error as e:
            await context.abort(_CODES.get(e.code, grpc.StatusCode.INVALID_ARGUMENT), e.message)
        status, headers, answer, _ = await router.forward(
            entry, version, body, {"content-type": v2.BINARY, v2.HEADER_LENGTH.lower(): str(header_length)},
            user["name"] if user else "anonymous")
        if status != 200:
            await context.abort(_CODES.get(status, grpc.StatusCode.INTERNAL), _message(answer))
        try:
            return grpc_response(answer, headers.get(v2.HEADER_LENGTH.lower()))
        except (v2.V2Error, KeyError, ValueError, TypeError) as e:
            log.error("aidc router: a replica of %s answered what is not a v2 response: %s", name, e)
            await context.abort(grpc.StatusCode.INTERNAL, "the model server's answer could not be read")


# -- the same service behind a native HTTP/2 front (:mod:`aidc.models.grpc_front`) -------------
#: request message of each method served
_REQUESTS = {"ServerLive": pb.ServerLiveRequest, "ServerReady": pb.ServerReadyRequest,
             "ServerMetadata": pb.ServerMetadataRequest, "ModelReady": pb.ModelReadyRequest,
             "ModelMetadata": pb.ModelMetadataRequest, "ModelInfer": pb.ModelInferRequest}


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class FrontContext:
    """What :class:`InferenceServicer` asks of a call's context, for a call that nginx passed
    on as HTTP/1.1 (its metadata are the request's headers, its peer nginx's
    ``X-Real-IP``); ``abort`` raises, and :func:`answer_framed` turns that into the status."""

    def __init__(self, headers, peer: str):
        self._headers, self._peer = headers, peer

    def invocation_metadata(self):
        value = self._headers.get("authorization")
        return (("authorization", value),) if value is not None else ()

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str):
        raise _Abort(code, details)


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (not compressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


async def answer_framed(servicer: InferenceServicer, method: str, body, headers,
                        peer: str) -> tuple[int, str, bytes]:
    """One call of ``method`` whose request is ``body`` (one length-prefixed message, as
    gRPC sends it): (status code, message, the framed answer or nothing)."""
    kind = _REQUESTS.get(method)
    if kind is None:
        return grpc.StatusCode.UNIMPLEMENTED.value[0], f"method {method} is not served here", b""
    body = memoryview(body)
    if len(body) < 5 or body[0] != 0:
        return (grpc.StatusCode.UNIMPLEMENTED.value[0],
                "send one uncompressed message (the router takes no gRPC compression)", b"")
    size = int.from_bytes(body[1:5], "big")
    if size != len(body) - 5:
        return grpc.StatusCode.INVALID_ARGUMENT.value[0], "send exactly one message per call", b""
    try:
        request = kind.FromString(bytes(body[5:]))
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, whatever its module
        return grpc.StatusCode.INVALID_ARGUMENT.value[0], f"not a {kind.DESCRIPTOR.name} message", b""
    try:
        answer = await getattr(servicer, method)(request, FrontContext(headers, peer))
    except _Abort as e:
        return e.code.value[0], e.details, b""
    return 0, "", frame(answer.SerializeToString())


async def serve(router: InferenceRouter, port: int, host: str = "127.0.0.1",
                tls: tuple[bytes, bytes] | None = None) -> grpc.aio.Server:
    """Start the gRPC server of ``router`` on ``port`` (shared with the other router
    processes); ``tls``: (private key, certificate chain) in PEM."""
    limit = router.settings.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(router), server)
    address = f"{host}:{port}"
    if tls is not None:
        server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    else:
        server.add_insecure_port(address)
    await server.start()
    return server
