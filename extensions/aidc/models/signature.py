"""A model's signature: the named, typed, shaped tensors it takes and returns.

The signature is stored with every registered model version and is what the serving
side checks a request against *before* the model runs, so that a caller who sends the
wrong shape gets "input 'input' has shape [2, 3] but the model expects [-1, 1, 28, 28]"
instead of a framework stack trace from deep inside a convolution.

Names and datatypes are those of the KServe v2 / Open Inference Protocol (``FP32``,
``INT64``, ``BYTES``...), and :meth:`TensorSpec.to_dict` is exactly how v2 model
metadata lists a tensor. ``-1`` in a shape is a dynamic dimension; for batchable
models dimension 0 is the batch dimension and is always ``-1``.

This module needs only numpy: the server imports it for every request, and importing
torch or TensorFlow here would cost seconds (``datatype_of`` recognises their dtypes
by duck typing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import UsageError

#: v2 datatype name -> numpy dtype (BYTES travels as an object array of ``bytes``)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_NAME_OF_DTYPE: dict[np.dtype, str] = {dt: name for name, dt in DATATYPES.items()}


class SignatureError(UsageError):
    """A signature that makes no sense, or tensors that do not match one."""


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name of a numpy, torch, TensorFlow or Keras dtype (or a v2 name).

    Accepts ``np.float32``, ``np.dtype("float32")``, ``"float32"``, ``torch.float32``,
    ``tf.float32`` and ``"FP32"``. Strings (numpy ``U``/``S`` arrays, ``tf.string``)
    are ``BYTES``. A dtype with no v2 equivalent (bfloat16, complex) is a
    :class:`SignatureError`, because the protocol cannot carry it.
    """
    if isinstance(dtype, str) and dtype in DATATYPES:
        return dtype
    original = dtype
    if dtype is None:  # np.dtype(None) is float64: never what was meant
        raise SignatureError("a tensor needs a datatype; got None")
    if type(dtype).__module__.startswith("torch") or (
        isinstance(dtype, str) and dtype.startswith("torch.")
    ):
        dtype = str(dtype).removeprefix("torch.")  # torch.float32 -> "float32"
    elif hasattr(dtype, "as_numpy_dtype"):  # tf.DType
        dtype = dtype.as_numpy_dtype
    try:
        np_dtype = np.dtype(dtype)
    except (TypeError, ValueError):
        np_dtype = None
    if np_dtype is not None:
        if np_dtype.kind in "OUS":
            return "BYTES"
        name = _NAME_OF_DTYPE.get(np_dtype)
        if name is not None:
            return name
    raise SignatureError(
        f"{_dtype_text(original)} has no KServe v2 datatype; cast the model's tensors to one of "
        f"{', '.join(DATATYPES)} (bfloat16 -> FP32 or FP16)"
    )


def _dtype_text(dtype: Any) -> str:
    text = getattr(dtype, "name", None) or str(dtype)
    return f"the datatype {text}"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: v2 datatype name and shape (``-1`` = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SignatureError(f"a tensor name must be a non-empty string, not {self.name!r}")
        if self.datatype not in DATATYPES:
            raise SignatureError(
                f"tensor '{self.name}' has datatype {self.datatype!r}; "
                f"expected one of {', '.join(DATATYPES)}"
            )
        if isinstance(self.shape, (str, bytes)) or not isinstance(self.shape, Iterable):
            raise SignatureError(
                f"tensor '{self.name}' has shape {self.shape!r}; expected a list of integers"
            )
        shape = tuple(self.shape)
        for dim in shape:
            # bool is an int subclass; True in a shape is always a mistake
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < -1:
                raise SignatureError(
                    f"tensor '{self.name}' has shape {list(shape)!r}; every dimension must be "
                    "an integer >= 0, or -1 for any size"
                )
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    def to_dict(self) -> dict:
        """As v2 model metadata lists a tensor: ``{"name", "datatype", "shape"}``."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Any) -> TensorSpec:
        if not isinstance(d, Mapping):
            raise SignatureError(f"a tensor must be an object with name, datatype and shape, "
                                 f"not {_short(d)}")
        missing = [k for k in ("name", "datatype", "shape") if k not in d]
        extra = sorted(set(d) - {"name", "datatype", "shape"})
        if missing or extra:
            what = []
            if missing:
                what.append(f"lacks {', '.join(missing)}")
            if extra:
                what.append(f"has unknown keys {', '.join(map(str, extra))}")
            raise SignatureError(f"tensor {_short(d)} {' and '.join(what)}; "
                                 "a tensor has exactly name, datatype and shape")
        if not isinstance(d["shape"], (list, tuple)):
            raise SignatureError(f"tensor '{d['name']}' has shape {_short(d['shape'])}; "
                                 "expected a list of integers")
        return cls(d["name"], d["datatype"], tuple(d["shape"]))

    def compact(self) -> str:
        """``input FP32 [-1,1,28,28]``: the form error messages end with."""
        return f"{self.name} {self.datatype} [{','.join(map(str, self.shape))}]"

    def matches_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape)
        )


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, in the order the model takes and returns them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        for kind in ("inputs", "outputs"):
            specs = getattr(self, kind)
            if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Iterable):
                raise SignatureError(f"{kind} must be a list of tensors, not {_short(specs)}")
            specs = tuple(specs)
            if not specs:
                raise SignatureError(f"a model signature needs at least one of its {kind}")
            for spec in specs:
                if not isinstance(spec, TensorSpec):
                    raise SignatureError(f"{kind} must be TensorSpecs, not {_short(spec)}")
            names = [s.name for s in specs]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise SignatureError(f"{kind} name the same tensor twice: {', '.join(dupes)}")
            object.__setattr__(self, kind, specs)

    # -- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict:
        """``{"inputs": [...], "outputs": [...]}``, tensors as v2 model metadata lists them."""
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Signature:
        """The inverse of :meth:`to_dict`, checking everything (it may come from a user)."""
        if not isinstance(d, Mapping):
            raise SignatureError(f"a signature must be an object with inputs and outputs, "
                                 f"not {_short(d)}")
        extra = sorted(set(d) - {"inputs", "outputs"})
        if extra:
            raise SignatureError(f"a signature has only inputs and outputs, not "
                                 f"{', '.join(map(str, extra))}")
        parts = {}
        for kind in ("inputs", "outputs"):
            if kind not in d:
                raise SignatureError(f"the signature lacks {kind}")
            if not isinstance(d[kind], (list, tuple)):
                raise SignatureError(f"the signature's {kind} must be a list of tensors, "
                                     f"not {_short(d[kind])}")
            parts[kind] = tuple(TensorSpec.from_dict(t) for t in d[kind])
        return cls(parts["inputs"], parts["outputs"])

    # -- checking requests -----------------------------------------------------------

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    @property
    def batchable(self) -> bool:
        """Whether dimension 0 of every tensor is dynamic, so requests can be batched."""
        return all(s.shape and s.shape[0] == -1 for s in self.inputs + self.outputs)

    def check_inputs(self, tensors: Mapping[str, Any]) -> None:
        """Raise :class:`SignatureError` unless ``tensors`` are exactly what the model takes.

        Every problem is named (unknown, missing, wrong datatype, wrong shape), and the
        message always ends with the expected inputs, so the caller can fix the request
        without looking anything up.
        """
        problems: list[str] = []
        expected = {s.name: s for s in self.inputs}
        for name in tensors:
            if name not in expected:
                problems.append(f"unknown input '{name}'")
        for spec in self.inputs:
            if spec.name not in tensors:
                problems.append(f"missing input '{spec.name}'")
                continue
            value = tensors[spec.name]
            if not isinstance(value, np.ndarray):
                problems.append(f"input '{spec.name}' is a {type(value).__name__}, "
                                "not an array")
                continue
            try:
                got = datatype_of(value.dtype)
            except SignatureError:
                got = str(value.dtype)
            if got != spec.datatype:
                problems.append(f"input '{spec.name}' has datatype {got} but the model "
                                f"expects {spec.datatype}")
            if not spec.matches_shape(value.shape):
                problems.append(f"input '{spec.name}' has shape {list(value.shape)} but the "
                                f"model expects {list(spec.shape)}")
        if problems:
            raise SignatureError(f"{'; '.join(problems)}; {self.expected_inputs()}")

    def expected_inputs(self) -> str:
        """``expected inputs: input FP32 [-1,1,28,28]``."""
        return "expected inputs: " + ", ".join(s.compact() for s in self.inputs)

    def zeros(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Inputs of the right datatype and shape, all zero (dynamic dimensions: ``batch``
        for dimension 0, else 1): what a warm-up call sends."""
        out = {}
        for spec in self.inputs:
            shape = tuple(
                (batch if i == 0 else 1) if d == -1 else d for i, d in enumerate(spec.shape)
            )
            if spec.datatype == "BYTES":
                out[spec.name] = np.full(shape, b"", dtype=object)
            else:
                out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return out

    def describe(self) -> str:
        """A small table for people (``aidc models show``, notebook output)."""
        lines = []
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            lines.append(f"{kind}:")
            width = max(len(s.name) for s in specs)
            for s in specs:
                shape = "[" + ", ".join(map(str, s.shape)) + "]"
                lines.append(f"  {s.name.ljust(width)}  {s.datatype:<5}  {shape}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def default_names(kind: str, count: int) -> list[str]:
    """``input`` for one tensor, ``input__0``, ``input__1``... for several (the
    ``<name>__<index>`` convention Triton's PyTorch backend understands)."""
    if count == 1:
        return [kind]
    return [f"{kind}__{i}" for i in range(count)]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
