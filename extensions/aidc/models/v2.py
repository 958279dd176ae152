"""The Open Inference Protocol (KServe v2) wire format, as pure functions.

Requests and responses are a JSON header, optionally followed by the binary tensor data
extension (``Inference-Header-Content-Length`` gives the JSON's length; each binary
tensor's ``parameters.binary_data_size`` its bytes; BYTES elements are 4-byte
little-endian lengths each followed by the bytes), as tritonclient.http writes them.

No state and no transport here: the replica's data plane (:mod:`aidc.models.dataplane`)
decodes requests and encodes responses with these functions, and the client's
:func:`aidc.models.predict` does the reverse with the same ones. A malformed request is a
:class:`V2Error` with the HTTP status and a message for the caller.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Iterable, Mapping

import numpy as np

from .signature import DATATYPES, datatype_of

try:  # the fastest JSON at hand
    import orjson

    def dumps(obj) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import rapidjson

        def dumps(obj) -> bytes:
            return rapidjson.dumps(obj).encode()

        loads = rapidjson.loads
    except ImportError:
        import json

        def dumps(obj) -> bytes:
            return json.dumps(obj, separators=(",", ":")).encode()

        loads = json.loads

JSON = "application/json"
BINARY = "application/octet-stream"
#: the header that says where a body's JSON ends and its binary tensor data begins
HEADER_LENGTH = "Inference-Header-Content-Length"
#: stands for an input the model does not have (not decoded: the signature check names it)
UNKNOWN = np.empty(0, dtype=np.float32)


class V2Error(Exception):
    """A request the protocol refuses: ``code`` (HTTP status) and a message for the caller."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def error_body(message: str) -> bytes:
    """The v2 error response: ``{"error": message}``."""
    return dumps({"error": message})


# -- requests (server side: decode) --------------------------------------------------------
def decompress(body, encoding: str, max_size: int):
    """``body`` sent with ``Content-Encoding: encoding`` (gzip, deflate, identity),
    decompressed to at most ``max_size`` bytes (413 beyond)."""
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise V2Error(400, f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    d = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, max_size + 1)
    except zlib.error as e:
        raise V2Error(400, f"the body is not valid {encoding} data: {e}") from None
    if len(out) > max_size or d.unconsumed_tail:
        raise V2Error(413, f"the decompressed request is larger than {max_size} bytes")
    return bytearray(out)


def split_request(body, header_length: str | None) -> tuple[dict, int]:
    """The request's JSON object and the offset where its binary data begins."""
    if header_length is None:
        header = body
        size = len(body)  # no binary data
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise V2Error(400, f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if size < 0 or size > len(body):
            raise V2Error(400, f"{HEADER_LENGTH} {size} does not fit the {len(body)}-byte body")
        header = body[:size]
    try:
        request = loads(header)
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise V2Error(400, f"the request is not valid JSON ({e}); send an inference request "
                           'object: {"inputs": [{"name", "shape", "datatype", "data"}]}') from None
    if not isinstance(request, dict):
        raise V2Error(400, "the request must be a JSON object with \"inputs\"")
    return request, size


def decode_inputs(request: dict, body, offset: int, input_names: frozenset[str] | None,
                  expected: str = "") -> dict[str, np.ndarray]:
    """The request's input tensors as arrays (binary data read from ``body`` after
    ``offset`` without copying when aligned).

    ``input_names``: the model's inputs (others become :data:`UNKNOWN`, for the signature
    check to name), or None to decode all. ``expected`` ends the messages about tensors
    that do not fit (the model's signature, say).
    """
    def bad(message: str) -> V2Error:
        return V2Error(400, f"{message}; {expected}" if expected else message)

    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise bad("the request has no \"inputs\" list")
    binary_end = len(body)
    tensors: dict[str, np.ndarray] = {}
    for t in inputs:
        if not isinstance(t, dict):
            raise bad("each input must be an object with name, shape, datatype and data")
        name = t.get("name")
        if not isinstance(name, str):
            raise bad("an input has no \"name\"")
        if name in tensors:
            raise bad(f"input {name!r} is given twice")
        datatype = t.get("datatype")
        dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise bad(f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})")
        shape = _check_shape(name, t.get("shape"))
        count = math.prod(shape)
        params = t.get("parameters")
        nbytes = params.get("binary_data_size") if isinstance(params, dict) else None
        if input_names is not None and name not in input_names:
            tensors[name] = UNKNOWN
            if isinstance(nbytes, int) and nbytes > 0:
                offset += nbytes
            continue
        if nbytes is not None:
            if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
                raise V2Error(400, f"input {name!r}: binary_data_size must be a non-negative "
                                   f"integer, not {nbytes!r}")
            if offset + nbytes > binary_end:
                raise V2Error(400, f"input {name!r}: binary_data_size {nbytes} is more than the "
                                   f"{binary_end - offset} bytes of binary data left in the request")
            array = _from_binary(name, datatype, dtype, body, offset, nbytes, shape, count, bad)
            offset += nbytes
        else:
            if "data" not in t:
                raise bad(f"input {name!r} has neither \"data\" nor binary_data_size")
            array = _from_json(name, datatype, dtype, t["data"], shape, count, bad)
        tensors[name] = array
    if offset != binary_end:
        raise V2Error(400, f"the request has {binary_end - offset} bytes of binary data that no "
                           "input's binary_data_size accounts for")
    return tensors


def select_outputs(request: dict, outputs: Iterable[str], expected: str = "",
                   expected_outputs: str = "") -> list[tuple[str, bool]] | None:
    """The outputs the request asks for, each with whether it wants them as binary data;
    all of ``outputs`` when it names none (None when the model names none either)."""
    params = request.get("parameters")
    default = isinstance(params, dict) and bool(params.get("binary_data_output", False))
    wanted = request.get("outputs")
    known = outputs if isinstance(outputs, Mapping) else tuple(outputs)
    if wanted is None:
        return [(name, default) for name in known] or None
    if not isinstance(wanted, list):
        message = "\"outputs\" must be a list of {\"name\": ...} objects"
        raise V2Error(400, f"{message}; {expected}" if expected else message)
    selected = []
    for o in wanted:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in known:
            raise V2Error(400, f"unknown output {name!r} requested; {expected_outputs}")
        p = o.get("parameters")
        binary = default
        if isinstance(p, dict):
            if p.get("classification"):
                raise V2Error(400, "the classification extension is not supported; request "
                                   "the output tensor itself")
            binary = bool(p.get("binary_data", default))
        selected.append((name, binary))
    return selected


# -- responses (server side: encode) -------------------------------------------------------
def encode_response(model_name: str, model_version: str, outputs: Mapping[str, np.ndarray],
                    selected: list[tuple[str, bool]] | None, request_id=None,
                    datatypes: Mapping[str, str] | None = None) -> tuple[bytes, int | None]:
    """The inference response: ``(body, header length)``, the length None without binary data.

    ``selected``: (output name, as binary data) pairs, None for all outputs as JSON;
    ``datatypes``: the declared datatype of each output (others from their dtype).
    """
    return _encode(outputs, selected, datatypes,
                   {"model_name": model_name, "model_version": model_version}, request_id)


# -- the client side -----------------------------------------------------------------------
def encode_request(inputs: Mapping[str, np.ndarray], binary_data: bool = False,
                   outputs: Iterable[str] | None = None, request_id=None) -> tuple[bytes, int | None]:
    """An inference request for ``inputs``: ``(body, header length)`` as for a response;
    ``outputs`` names the outputs wanted (default: all), in the same encoding."""
    tensors = [(name, binary_data) for name in inputs]
    body = {}
    if request_id is not None:
        body["id"] = request_id
    header, blobs = _tensors(inputs, tensors, None)
    body["inputs"] = header
    if outputs is not None:
        body["outputs"] = [{"name": name, "parameters": {"binary_data": binary_data}}
                           for name in outputs]
    elif binary_data:
        body["parameters"] = {"binary_data_output": True}
    return _join(dumps(body), blobs)


def decode_response(body, header_length: str | int | None) -> dict[str, np.ndarray]:
    """The output tensors of an inference response, by name."""
    try:
        response, offset = split_request(body, None if header_length is None else str(header_length))
    except V2Error:
        raise V2Error(502, "the answer is not a v2 inference response (not a JSON object)") from None
    if not isinstance(response.get("outputs"), list):
        raise V2Error(502, "the answer is not a v2 inference response (it has no outputs)")
    return decode_inputs({"inputs": response["outputs"]}, body, offset, None)


# -- tensors -------------------------------------------------------------------------------
def _encode(outputs, selected, datatypes, response: dict, request_id) -> tuple[bytes, int | None]:
    if selected is None:  # the signature names no outputs: all the model gave
        selected = [(name, False) for name in outputs]
    entries, blobs = _tensors(outputs, selected, datatypes)
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    return _join(dumps(response), blobs)


def _join(header: bytes, blobs: list[bytes]) -> tuple[bytes, int | None]:
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _tensors(arrays: Mapping[str, np.ndarray], selected, datatypes) -> tuple[list[dict], list[bytes]]:
    entries = []
    blobs = []
    for name, binary in selected:
        array = arrays[name]
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        datatype = datatypes.get(name) if datatypes else None
        if datatype is not None:
            dtype = DATATYPES[datatype]
            if array.dtype != dtype and datatype != "BYTES":
                array = array.astype(dtype)
        else:
            datatype = datatype_of(array.dtype)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _bytes_to_json(array) if datatype == "BYTES" else array.ravel().tolist()
        entries.append(entry)
    return entries, blobs


def _check_shape(name: str, shape) -> list[int]:
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise V2Error(400, f"input {name!r}: 'shape' must be a list of non-negative integers, "
                           f"not {shape!r}")
    return shape


def _from_binary(name, datatype, dtype, body, offset, nbytes, shape, count, bad) -> np.ndarray:
    if datatype == "BYTES":
        return _object_array(name, _bytes_from_binary(name, body, offset, nbytes), shape, count, bad)
    itemsize = np.dtype(dtype).itemsize
    if count * itemsize != nbytes:
        raise bad(f"input {name!r}: shape {shape} of {datatype} is {count * itemsize} bytes, "
                  f"but binary_data_size is {nbytes}")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if offset % itemsize:  # unaligned: copy
        array = array.copy()
    return array.reshape(shape)


def _from_json(name, datatype, dtype, data, shape, count, bad) -> np.ndarray:
    if datatype == "BYTES":
        return _object_array(name, _bytes_from_json(name, data), shape, count, bad)
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise bad(f"input {name!r}: \"data\" is not a (nested) list of {datatype} values") from None
    if array.size != count:
        raise bad(f"input {name!r}: shape {shape} needs {count} values, \"data\" has {array.size}")
    return array.reshape(shape)


def _object_array(name, values, shape, count, bad) -> np.ndarray:
    if len(values) != count:
        raise bad(f"input {name!r}: shape {shape} needs {count} values, got {len(values)}")
    array = np.empty(count, dtype=object)
    array[:] = values
    return array.reshape(shape)


def _flatten(data, out: list) -> None:
    for x in data:
        if isinstance(x, list):
            _flatten(x, out)
        else:
            out.append(x)


def _bytes_from_json(name: str, data) -> list[bytes]:
    flat: list = []
    _flatten(data if isinstance(data, list) else [data], flat)
    out = []
    for x in flat:
        if isinstance(x, str):
            out.append(x.encode())
        elif isinstance(x, (bytes, bytearray)):
            out.append(bytes(x))
        else:
            raise V2Error(400, f"input {name!r}: BYTES data must be strings, not {type(x).__name__}")
    return out


def _bytes_from_binary(name: str, buf, offset: int, size: int) -> list[bytes]:
    """Triton's BYTES serialization: each element is a 4-byte little-endian length, then bytes."""
    out = []
    end = offset + size
    mv = memoryview(buf)
    while offset < end:
        if offset + 4 > end:
            raise V2Error(400, f"input {name!r}: truncated BYTES element in the binary data")
        (n,) = struct.unpack_from("<I", buf, offset)
        offset += 4
        if offset + n > end:
            raise V2Error(400, f"input {name!r}: truncated BYTES element in the binary data")
        out.append(bytes(mv[offset:offset + n]))
        offset += n
    return out


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for x in array.ravel():
        b = x if isinstance(x, bytes) else str(x).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _bytes_to_json(array: np.ndarray) -> list:
    return [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)
            for x in array.ravel()]
