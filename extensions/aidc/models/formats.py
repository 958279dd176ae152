"""Model formats: saving a model from a notebook, checking an upload, loading it to serve.

Three formats, each loadable *without the code that trained the model* (the serving
process has none of it):

- ``torchscript``: ``model.pt``, loaded with ``torch.jit.load``. A plain
  ``nn.Module`` is traced with the caller's example batch (or scripted).
- ``keras``: ``model.keras`` (Keras 3, loaded with ``keras.saving.load_model(...,
  compile=False)``), or ``model.savedmodel/``, a TensorFlow SavedModel folder (Keras 2
  exports, ``model.export()``), loaded with ``tf.saved_model.load`` and served through
  its ``serving_default`` signature.
- ``onnx``: ``model.onnx``, run by onnxruntime.

Each format is a :class:`ModelFormat` in the registry :data:`model_formats`, by name;
saving, validating, loading, the v2 platform name and the Triton export all dispatch
through it.

torch, TensorFlow and onnxruntime are imported inside the functions that need them:
the models service imports this module to know the format names and to validate
requests, and TensorFlow alone takes about ten seconds to import.

Threads: a :class:`Runner` does not change any thread setting. torch
(``torch.set_num_threads``) and TensorFlow (``tf.config.threading``) pools are per
process, so a model server sets them once at start (one replica per core or two is
usually better than one replica with many threads); onnxruntime pools are per
session, hence the ``threads`` argument of :func:`load`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import AidcError, NotFoundError, PlatformError, UsageError
from .signature import Signature, SignatureError, TensorSpec, datatype_of, default_names

#: the file (or folder) name of each kind of artifact inside a version's directory
TORCHSCRIPT_FILE = "model.pt"
KERAS_FILE = "model.keras"
SAVEDMODEL_DIR = "model.savedmodel"
ONNX_FILE = "model.onnx"

_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
_ONNX_LIMIT = 2**31 - 1  # protobuf's limit on one serialised message


class CorruptArtifactError(UsageError):
    """An artifact its framework cannot load; the message names the file and why."""


class PredictionError(AidcError):
    """The model itself failed on inputs that matched its signature (for example a
    dynamic dimension the model cannot actually take). The message is the framework's
    own last line, which is usually the useful one."""


# -- saving --------------------------------------------------------------------------


def save(model: Any, directory: Path, example: Any = None,
         signature: Signature | None = None) -> tuple[str, str, Signature]:
    """Write ``model`` into ``directory`` in a servable format.

    Returns ``(format, filename, signature)``: ``filename`` is the file (or SavedModel
    folder) inside ``directory``. The signature is ``signature`` when given, else
    inferred: from ``example`` (an array, tensor, or a dict / tuple of them; dimension
    0 becomes the dynamic batch dimension ``-1``), from an ONNX graph, or from a Keras
    model's inputs and outputs.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if signature is not None and not isinstance(signature, Signature):
        signature = Signature.from_dict(signature)
    kind = _kind_of(model)
    return model_formats.saving(kind).save(model, kind, directory, example, signature)


def _kind_of(model: Any) -> str:
    """Which saver applies, without importing any framework the caller has not."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise NotFoundError(f"{path} does not exist")
        if path.is_dir():
            if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
                return "savedmodel"
            raise UsageError(f"{path} is a folder but not a TensorFlow SavedModel "
                             "(it has no saved_model.pb)")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return "onnx-file"
        if suffix == ".keras":
            return "keras-file"
        if suffix in (".h5", ".hdf5"):
            return "keras-h5"
        if suffix in _TORCHSCRIPT_SUFFIXES:
            return "torchscript-file"
        raise UsageError(f"aidc does not know the format of {path.name}; expected a .onnx, "
                         ".keras, .h5 or TorchScript (.pt) file, or a SavedModel folder")
    # keras first: under KERAS_BACKEND=torch a keras.Model is also a torch.nn.Module
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Model):
        return "keras"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return "onnx"
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    raise UsageError(f"aidc cannot save a {kind}; pass a torch.nn.Module, a keras.Model, an "
                     "onnx.ModelProto, or the path of a .onnx / .keras file or SavedModel folder")


def _example_items(example: Any) -> list[tuple[str, Any]]:
    """``(name, value)`` for each input in an example: a dict names them, a tuple (or a
    list of arrays) is several unnamed inputs, anything else is the one input."""
    if isinstance(example, Mapping):
        if not example:
            raise UsageError("the example is an empty dict; give one batch per model input")
        return [(str(k), v) for k, v in example.items()]
    if isinstance(example, tuple) or (
        isinstance(example, list) and example and all(_is_tensor(v) for v in example)
    ):
        return list(zip(default_names("input", len(example)), example))
    return [("input", example)]


def _is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "shape") and hasattr(value, "dtype")


def _batch_spec(name: str, datatype: str, shape: Sequence[int]) -> TensorSpec:
    """A spec whose dimension 0 (if any) is the dynamic batch dimension."""
    shape = tuple(int(d) for d in shape)
    return TensorSpec(name, datatype, (-1,) + shape[1:] if shape else ())


def _output_spec(name: str, datatype: str, shape: Sequence[int], batch: int | None) -> TensorSpec:
    """An output's dimension 0 is the batch dimension when it matches the example's."""
    shape = tuple(int(d) for d in shape)
    if shape and batch is not None and shape[0] == batch:
        shape = (-1,) + shape[1:]
    return TensorSpec(name, datatype, shape)


def _first_batch(shapes: Sequence[Sequence[int]]) -> int | None:
    return next((int(s[0]) for s in shapes if len(s)), None)


# torch


@contextlib.contextmanager
def _torchscript():
    """torch 2.9+ marks torch.jit deprecated in favour of torch.export; aidc uses
    TorchScript on purpose (Triton's libtorch backend and C++ load it without Python
    code), so the warning would only alarm users who cannot act on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        yield


@contextlib.contextmanager
def _eval_mode(module: Any):
    """Trace, script and measure what will be served (dropout off, batch-norm running
    statistics), then give the caller's model back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _save_torch(model: Any, directory: Path, example: Any,
                signature: Signature | None) -> tuple[str, str, Signature]:
    import torch

    if example is None and signature is None:
        raise SignatureError(
            "a torch model needs example= (a batch of inputs, e.g. x[:2]) so that aidc can "
            "trace it and infer its signature; or pass signature= with a scripted model"
        )
    names, tensors = _torch_example(example, model) if example is not None else ([], [])
    if isinstance(model, torch.jit.ScriptModule):
        scripted = model
    elif example is not None:
        try:
            with _eval_mode(model), torch.no_grad(), _torchscript():
                scripted = torch.jit.trace(model, tuple(tensors), strict=False)
        except Exception as e:
            raise UsageError(f"the model could not be traced with the example: {_reason(e)}; "
                             "check that the example is a batch the model accepts, or "
                             "pass torch.jit.script(model) instead") from None
    else:
        try:
            with _eval_mode(model), _torchscript():
                scripted = torch.jit.script(model)
        except Exception as e:
            raise UsageError(f"torch.jit.script cannot compile this model ({_reason(e)}); "
                             "pass example= (a batch of inputs) so that aidc traces it") from None
    path = directory / TORCHSCRIPT_FILE
    scripted.save(str(path))
    if signature is None:
        signature = _torch_signature(scripted, names, tensors)
    return "torchscript", TORCHSCRIPT_FILE, signature


def _save_torchscript_file(path: Path, directory: Path, example: Any,
                           signature: Signature | None) -> tuple[str, str, Signature]:
    if example is None and signature is None:
        raise SignatureError(f"aidc needs example= (a batch of inputs) or signature= to know "
                             f"the signature of {path.name}: TorchScript does not record it")
    module = _load_torchscript(path, "cpu")
    shutil.copyfile(path, directory / TORCHSCRIPT_FILE)
    if signature is None:
        names, tensors = _torch_example(example, module)
        signature = _torch_signature(module, names, tensors)
    return "torchscript", TORCHSCRIPT_FILE, signature


def _torch_example(example: Any, module: Any) -> tuple[list[str], list[Any]]:
    """The example as named tensors on the module's device."""
    import torch

    device = next((p.device for p in list(module.parameters()) + list(module.buffers())),
                  torch.device("cpu"))
    names, tensors = [], []
    for name, value in _example_items(example):
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
        else:
            array = np.asarray(value)
            if array.dtype.kind in "OUS":
                raise UsageError(f"example input '{name}' holds strings; TorchScript models "
                                 "take numeric tensors")
            tensor = torch.from_numpy(np.array(array, copy=True, order="C"))
        names.append(name)
        tensors.append(tensor.to(device))
    return names, tensors


def _torch_signature(module: Any, names: list[str], tensors: list[Any]) -> Signature:
    """Inputs from the example; outputs from running the module on it once."""
    import torch

    try:
        with _eval_mode(module), torch.inference_mode():
            result = module(*tensors)
    except Exception as e:
        raise UsageError(f"the model failed on the example: {_reason(e, last=True)}") from None
    out_names, outs = _torch_outputs(result, None)
    batch = _first_batch([tuple(t.shape) for t in tensors])
    inputs = tuple(_batch_spec(n, datatype_of(t.dtype), t.shape) for n, t in zip(names, tensors))
    outputs = tuple(_output_spec(n, datatype_of(t.dtype), t.shape, batch)
                    for n, t in zip(out_names, outs))
    return Signature(inputs, outputs)


def _torch_outputs(result: Any, expected: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    """Name a forward()'s result: one tensor, a tuple/list of them, or a dict."""
    import torch

    if isinstance(result, torch.Tensor):
        values, names = [result], default_names("output", 1)
    elif isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        values, names = list(result), default_names("output", len(result))
    elif isinstance(result, Mapping) and all(isinstance(t, torch.Tensor) for t in result.values()):
        names, values = [str(k) for k in result], list(result.values())
        if expected is not None and set(expected) <= set(names):
            return list(expected), [result[n] for n in expected]
    else:
        raise UsageError("the model returns a "
                         f"{type(result).__name__} that is not a tensor, a tuple of tensors or "
                         "a dict of tensors; aidc can only serve tensors")
    return names, values


def _load_torchscript(path: Path, device: str) -> Any:
    import torch

    title = f"{path.name} is not a valid TorchScript model"
    if not zipfile.is_zipfile(path):
        raise CorruptArtifactError(f"{title}: it is not a complete TorchScript (zip) archive "
                                   "(truncated, or another kind of file)")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptArtifactError(f"{title}: {_reason(e)}") from None
    if not any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        if any(n.endswith("data.pkl") for n in names):
            raise CorruptArtifactError(
                f"{title}: it is a torch.save() checkpoint, which needs the model's Python code "
                "to load; save the model with torch.jit.script(model).save(...), or register "
                "it with example= so that aidc traces it"
            )
        raise CorruptArtifactError(f"{title}: it is a zip archive without TorchScript code")
    try:
        with _torchscript():
            return torch.jit.load(str(path), map_location=device)
    except Exception as e:
        raise CorruptArtifactError(f"{title}: {_reason(e)}") from None


# keras


def _save_keras(model: Any, kind: str, directory: Path, example: Any,
                signature: Signature | None) -> tuple[str, str, Signature]:
    import keras

    path = directory / KERAS_FILE
    if kind == "keras-file":
        if signature is None:
            signature = _keras_signature(_load_keras_file(Path(model)), example, keras)
        shutil.copyfile(model, path)
        return "keras", KERAS_FILE, signature
    if kind == "keras-h5":  # legacy format: re-save as .keras, which Keras 3 serves
        model = _load_keras_file(Path(model))
    if signature is None:
        # first: running the example builds a model that was never built, and an
        # unbuilt model would be saved without its weights
        signature = _keras_signature(model, example, keras)
    if not getattr(model, "built", True):
        raise UsageError("this Keras model was never built, so it has no weights yet; call "
                         "it once on a batch, or pass example=")
    try:
        model.save(str(path))
    except Exception as e:
        raise UsageError(f"Keras could not save the model: {_reason(e)}") from None
    return "keras", KERAS_FILE, signature


def _keras_signature(model: Any, example: Any, keras: Any) -> Signature:
    """From the model's symbolic inputs and outputs; or, for a model that has none
    (subclassed, or a Sequential never built with an Input), from running the example."""
    try:
        flat_in, flat_out = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        flat_in = flat_out = None
    if flat_in and flat_out:
        in_names = _keras_input_names(model, flat_in, keras)
        out_names = _keras_output_names(model, len(flat_out), keras)
        return Signature(
            tuple(TensorSpec(n, datatype_of(t.dtype), _dims(t.shape))
                  for n, t in zip(in_names, flat_in)),
            tuple(TensorSpec(n, datatype_of(t.dtype), _dims(t.shape))
                  for n, t in zip(out_names, flat_out)),
        )
    if example is None:
        raise SignatureError("this Keras model has no defined inputs (a subclassed model, or a "
                             "Sequential model without keras.Input); pass example= (a batch of "
                             "inputs) or signature=")
    items = [(n, np.asarray(v)) for n, v in _example_items(example)]
    arrays = [a for _, a in items]
    try:
        result = model(arrays[0] if len(arrays) == 1 else arrays, training=False)
    except Exception as e:
        raise UsageError(f"the model failed on the example: {_reason(e, last=True)}") from None
    outs = [_keras_numpy(keras, t) for t in keras.tree.flatten(result)]
    out_names = (_flat_keys(result, keras) if isinstance(result, Mapping)
                 else default_names("output", len(outs)))
    batch = _first_batch([a.shape for a in arrays])
    return Signature(
        tuple(_batch_spec(n, datatype_of(a.dtype), a.shape) for n, a in items),
        tuple(_output_spec(n, datatype_of(o.dtype), o.shape, batch)
              for n, o in zip(out_names, outs)),
    )


def _keras_input_names(model: Any, flat_in: list[Any], keras: Any) -> list[str]:
    struct = _keras_input_struct(model)
    if isinstance(struct, Mapping):
        return _flat_keys(struct, keras)
    names = [getattr(t, "name", "") or "" for t in flat_in]
    # Keras names an unnamed keras.Input "keras_tensor_17": meaningless to a caller
    if any(re.fullmatch(r"keras_tensor(_\d+)?", n) or not n for n in names) or (
        len(set(names)) != len(names)
    ):
        return default_names("input", len(flat_in))
    return names


def _keras_output_names(model: Any, count: int, keras: Any) -> list[str]:
    try:
        struct = model.output
    except (AttributeError, ValueError):
        struct = None
    if isinstance(struct, Mapping):
        return _flat_keys(struct, keras)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == count and len(set(names)) == count and all(names):
        return [str(n) for n in names]
    return default_names("output", count)


def _flat_keys(struct: Mapping, keras: Any) -> list[str]:
    """A dict's keys in the order ``keras.tree.flatten`` puts its values."""
    return [str(k) for k in keras.tree.flatten({k: str(k) for k in struct})]


def _keras_input_struct(model: Any) -> Any:
    """The structure a functional model is called with (tensor, list or dict), if any."""
    try:
        return model.input
    except (AttributeError, ValueError):
        return None


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _load_keras_file(path: Path) -> Any:
    import keras

    title = f"{path.name} is not a valid Keras model"
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise CorruptArtifactError(f"{title}: it is not a .keras (zip) archive")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as e:
        raise CorruptArtifactError(f"{title}: {_reason(e)}") from None


def _save_savedmodel(path: Path, directory: Path,
                     signature: Signature | None) -> tuple[str, str, Signature]:
    serving = _load_savedmodel(path)[1]
    target = directory / SAVEDMODEL_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(path, target)
    inferred = _savedmodel_signature(serving)
    if signature is None:
        signature = inferred
    else:
        _check_names(signature, inferred.input_names, inferred.output_names,
                     "the SavedModel's serving_default signature")
    return "keras", SAVEDMODEL_DIR, signature


def _load_savedmodel(path: Path) -> tuple[Any, Any]:
    """``(loaded object, serving_default function)``; keep the first alive while the
    second is used (it holds the variables)."""
    import tensorflow as tf

    title = f"{path.name} is not a valid TensorFlow SavedModel"
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise CorruptArtifactError(f"{title}: {_reason(e)}") from None
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise CorruptArtifactError(f"{title}: it has no serving_default signature (export it "
                                   "with model.export(path) or tf.saved_model.save(..., "
                                   "signatures=...))")
    return loaded, signatures["serving_default"]


def _savedmodel_signature(serving: Any) -> Signature:
    _, kwargs = serving.structured_input_signature
    outputs = serving.structured_outputs
    if not isinstance(outputs, Mapping):
        outputs = dict(zip(default_names("output", len(outputs)), outputs))

    def spec(name: str, t: Any) -> TensorSpec:
        return TensorSpec(name, datatype_of(t.dtype), _dims(t.shape.as_list()
                                                             if t.shape.rank is not None else ()))

    return Signature(
        tuple(spec(n, kwargs[n]) for n in sorted(kwargs, key=_natural)),
        tuple(spec(n, outputs[n]) for n in sorted(outputs, key=_natural)),
    )


def _natural(name: str) -> list[Any]:
    """``output_2`` before ``output_10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# onnx


def _save_onnx(model: Any, directory: Path, example: Any,
               signature: Signature | None) -> tuple[str, str, Signature]:
    import onnx

    path = directory / ONNX_FILE
    if isinstance(model, onnx.ModelProto):
        proto = model
        _write_onnx(proto, path)
    else:
        source = Path(model)
        try:
            proto = onnx.load(str(source), load_external_data=False)
        except Exception as e:
            raise CorruptArtifactError(
                f"{source.name} is not a valid ONNX model: {_reason(e)}") from None
        if _has_external_data(proto):
            # one self-contained file: the registry stores and serves exactly one file
            try:
                proto = onnx.load(str(source))
            except Exception as e:
                raise CorruptArtifactError(f"{source.name} is not a valid ONNX model: its "
                                           f"external data cannot be read: {_reason(e)}") from None
            _write_onnx(proto, path)
        else:
            shutil.copyfile(source, path)
    if signature is None:
        signature = _onnx_signature(proto, path, example)
    else:
        initializers = {t.name for t in proto.graph.initializer}
        _check_names(signature, [i.name for i in proto.graph.input if i.name not in initializers],
                     [o.name for o in proto.graph.output], "the ONNX graph")
    return "onnx", ONNX_FILE, signature


def _has_external_data(proto: Any) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in proto.graph.initializer)


def _write_onnx(proto: Any, path: Path) -> None:
    import onnx

    if proto.ByteSize() > _ONNX_LIMIT:
        raise UsageError("ONNX models over 2 GB (weights in external data files) cannot be "
                         "registered yet; use TorchScript, or a smaller model")
    onnx.save_model(proto, str(path))


def _onnx_signature(proto: Any, path: Path, example: Any) -> Signature:
    """The graph's inputs (less initializers, which old exporters list as inputs) and
    outputs; outputs of unknown rank are measured by running the example."""
    import onnx

    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in initializers]

    def spec(vi: Any, kind: str) -> TensorSpec | None:
        if vi.type.WhichOneof("value") != "tensor_type":
            raise SignatureError(f"ONNX {kind} '{vi.name}' is not a tensor (a sequence, map or "
                                 "optional); aidc can only serve tensors")
        tt = vi.type.tensor_type
        try:
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            datatype = datatype_of(np_dtype)
        except (KeyError, ValueError, TypeError, SignatureError):
            name = onnx.TensorProto.DataType.Name(tt.elem_type) if tt.elem_type else "undefined"
            raise SignatureError(f"ONNX {kind} '{vi.name}' has element type {name}, which the "
                                 "v2 protocol cannot carry; cast it in the model") from None
        if not tt.HasField("shape"):
            return None
        dims = tuple(d.dim_value if d.WhichOneof("value") == "dim_value" else -1
                     for d in tt.shape.dim)
        return TensorSpec(vi.name, datatype, dims)

    in_specs = [spec(vi, "input") for vi in inputs]
    out_specs = [spec(vi, "output") for vi in graph.output]
    if any(s is None for s in in_specs):
        missing = [vi.name for vi, s in zip(inputs, in_specs) if s is None]
        raise SignatureError(f"the ONNX graph does not give the shape of input(s) "
                             f"{', '.join(missing)}; pass signature=")
    if any(s is None for s in out_specs):
        out_specs = _measure_onnx_outputs(path, graph, in_specs, out_specs, example)
    return Signature(tuple(in_specs), tuple(out_specs))


def _measure_onnx_outputs(path: Path, graph: Any, in_specs: list[TensorSpec],
                          out_specs: list[TensorSpec | None], example: Any) -> list[TensorSpec]:
    missing = [vi.name for vi, s in zip(graph.output, out_specs) if s is None]
    if example is None:
        raise SignatureError(f"the ONNX graph does not give the shape of output(s) "
                             f"{', '.join(missing)}; pass example= (a batch of inputs) or "
                             "signature=")
    items = dict(_example_items(example))
    if len(items) == 1 and len(in_specs) == 1:
        items = {in_specs[0].name: next(iter(items.values()))}
    feed = {s.name: np.asarray(items[s.name]) for s in in_specs if s.name in items}
    session = _onnx_session(path, "cpu", None)
    try:
        values = session.run([vi.name for vi in graph.output], feed)
    except Exception as e:
        raise UsageError(f"the model failed on the example: {_reason(e)}") from None
    batch = _first_batch([a.shape for a in feed.values()])
    return [s if s is not None else _output_spec(vi.name, datatype_of(v.dtype), v.shape, batch)
            for vi, s, v in zip(graph.output, out_specs, values)]


def _check_names(given: Signature, inputs: Sequence[str], outputs: Sequence[str],
                 where: str) -> None:
    """A signature given by hand must use the names the model really has: the runtime
    feeds and fetches tensors by these names."""
    problems = []
    if set(given.input_names) != set(inputs):
        problems.append(f"inputs {', '.join(given.input_names)} (the model's: "
                        f"{', '.join(inputs)})")
    unknown = [n for n in given.output_names if n not in outputs]
    if unknown:
        problems.append(f"outputs {', '.join(unknown)} (the model's: {', '.join(outputs)})")
    if problems:
        raise SignatureError(f"the signature names {' and '.join(problems)}, which are not in "
                             f"{where}")


# -- validating --------------------------------------------------------------------------


def validate(format: str, path: Path) -> None:
    """Load the artifact at ``path`` as ``format``, or raise :class:`CorruptArtifactError`
    saying why it cannot be loaded (an upload is checked before it is registered, so that
    a broken file is refused then rather than found at deploy time)."""
    path = Path(path)
    handler = model_formats.get(format)
    if not path.exists():
        raise NotFoundError(f"{path.name} does not exist")
    handler.validate(path)


#: onnxruntime's input types -> v2 datatypes
_ONNX_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
               "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
               "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
               "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
               "tensor(string)": "BYTES"}


def check_signature(format: str, path: Path, signature: Signature) -> None:
    """Raise :class:`SignatureError` unless the model at ``path`` takes and returns what
    ``signature`` declares.

    A signature is declared by the uploader and served as the model's v2 metadata; the
    replica checks every request against it and, before it answers ready, runs the model
    once on zeros of the declared inputs. So this does the same at register time: load it
    with the signature (the names must be the model's), compare the declared inputs with
    what the model records (ONNX: datatypes and fixed dimensions), run it once on zeros of
    the declared inputs (batch 1, other dynamic dimensions 1), and compare the outputs it
    returns with the declared ones (rank, fixed dimensions, strings or numbers). The
    message names the tensor, what was declared and what the model has.
    """
    if not isinstance(signature, Signature):
        signature = Signature.from_dict(signature)
    path = Path(path)
    runner = load(format, path, signature, "cpu", threads=1)
    if isinstance(runner, OnnxRunner):
        _check_onnx_inputs(signature, runner.session.get_inputs())
    zeros = signature.zeros(1)
    try:
        outputs = runner.predict(zeros)
    except PredictionError as e:
        if _needs_a_gpu(str(e)):
            return  # built for a GPU (a trace on CUDA): only its deployment can run it
        fed = ", ".join(f"{s.compact()} as {list(zeros[s.name].shape)}" for s in signature.inputs)
        raise SignatureError(
            f"the declared signature does not fit the model: it fails on zeros of the declared "
            f"inputs ({fed}): {str(e).removeprefix('the model failed on these inputs: ')}"
        ) from None
    problems = []
    for spec in signature.outputs:
        got = np.asarray(outputs[spec.name])
        if len(got.shape) != len(spec.shape) or not all(
                want == -1 or want == have for want, have in zip(spec.shape, got.shape)):
            problems.append(f"output '{spec.name}' is declared {list(spec.shape)} but the model "
                            f"returned shape {list(got.shape)}")
        elif (spec.datatype == "BYTES") != (got.dtype.kind in "OUS"):
            kind = "strings (BYTES)" if got.dtype.kind in "OUS" else f"numbers ({got.dtype})"
            problems.append(f"output '{spec.name}' is declared {spec.datatype} but the model "
                            f"returns {kind}")
    if problems:
        raise SignatureError("the declared signature does not fit the model: "
                             f"{'; '.join(problems)} (on zeros of the declared inputs)")


def _check_onnx_inputs(signature: Signature, model_inputs: Sequence[Any]) -> None:
    """The declared inputs against the ONNX graph's: datatypes, ranks and fixed dimensions."""
    actual = {i.name: i for i in model_inputs}
    problems = []
    for spec in signature.inputs:
        node = actual.get(spec.name)
        if node is None:
            continue  # load() has named what is missing
        datatype = _ONNX_TYPES.get(node.type)
        dims = list(node.shape) if node.shape is not None else None
        shown = "?" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
        model = f"{datatype or node.type} {shown}"
        if datatype is not None and datatype != spec.datatype:
            problems.append(f"input '{spec.name}' is declared {spec.datatype}, the model takes "
                            f"{model}")
            continue
        if dims is None:
            continue
        if len(dims) != len(spec.shape):
            problems.append(f"input '{spec.name}' is declared {list(spec.shape)} "
                            f"({len(spec.shape)} dimensions), the model takes {model} "
                            f"({len(dims)} dimensions)")
            continue
        for i, (want, have) in enumerate(zip(spec.shape, dims)):
            if isinstance(have, int) and have >= 0 and want != have:
                declared = "-1 (any size)" if want == -1 else str(want)
                problems.append(f"input '{spec.name}' is declared {list(spec.shape)}, the model "
                                f"takes {model}: dimension {i} is declared {declared}, the "
                                f"model's is {have}")
                break
    if problems:
        raise SignatureError("the declared signature does not fit the model: "
                             + "; ".join(problems))


def _needs_a_gpu(reason: str) -> bool:
    """A failure because the model wants a CUDA device (the check runs on the CPU)."""
    return bool(re.search(r"\b(cuda|CUDA)\b|same device", reason))


def _validate_onnx(path: Path) -> None:
    import onnx

    title = f"{path.name} is not a valid ONNX model"
    if path.is_dir():
        raise CorruptArtifactError(f"{title}: it is a folder")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise CorruptArtifactError(f"{title}: {_reason(e)}") from None
    _onnx_session(path, "cpu", None)  # the checker does not know what onnxruntime supports


# -- loading and running -------------------------------------------------------------------


def load(format: str, path: Path, signature: Signature, device: str = "cpu", *,
         threads: int | None = None) -> Runner:
    """A :class:`Runner` for the artifact at ``path``, on ``device`` (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``).

    ``threads`` bounds onnxruntime's per-session thread pool (default: onnxruntime's,
    one per core). torch and TensorFlow pools are per process: set them in the server
    (``torch.set_num_threads``), not here.
    """
    path = Path(path)
    handler = model_formats.get(format)
    if not path.exists():
        raise NotFoundError(f"{path.name} does not exist")
    if not isinstance(signature, Signature):
        signature = Signature.from_dict(signature)
    kind, index = _parse_device(device)
    return handler.load(path, signature, kind, index, threads)


def auto_device(format: str) -> str:
    """``"cuda"`` when this process was given GPUs and the format's runtime can use them, else ``"cpu"``.

    A deployment's replicas see exactly the GPUs its ledger claim holds
    (``CUDA_VISIBLE_DEVICES``, empty without GPUs); on a simulated inventory they are
    not real CUDA devices, and the model runs on the CPU.
    """
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return "cpu"
    handler = model_formats.get(format)
    try:
        usable = handler.gpu_usable()
    except Exception:  # noqa: BLE001 - a broken CUDA install runs on the CPU
        usable = False
    return "cuda" if usable else "cpu"


def _parse_device(device: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(cpu|cuda|gpu)(?::(\d+))?", str(device).strip().lower())
    if not m:
        raise UsageError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    kind = "cpu" if m.group(1) == "cpu" else "cuda"
    return kind, (int(m.group(2)) if m.group(2) is not None else (None if kind == "cpu" else 0))


class Runner:
    """A loaded model, ready to serve: one batched call per :meth:`predict`.

    ``predict`` checks the request against the signature first (a
    :class:`~aidc.models.signature.SignatureError` names what is wrong); it may be
    called from several threads at once (torch, TensorFlow and onnxruntime all allow
    concurrent inference on one loaded model).
    """

    signature: Signature

    def __init__(self, signature: Signature):
        self.signature = signature

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs keyed by the signature's output names, for one batch (dimension 0)."""
        self.signature.check_inputs(inputs)
        arrays = [inputs[s.name] for s in self.signature.inputs]
        try:
            values = self._run(arrays)
        except AidcError:
            raise
        except Exception as e:
            raise PredictionError(f"the model failed on these inputs: {_reason(e, last=True)}"
                                  ) from None
        return self._name(values)

    def warmup(self) -> None:
        """One call on zeros (batch 1), so that the first real request does not pay for
        lazy initialisation (graph optimisation, kernel selection, memory pools)."""
        self.predict(self.signature.zeros(1))

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray] | dict[str, np.ndarray]:
        raise NotImplementedError

    def _name(self, values: list[np.ndarray] | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.signature.output_names
        if isinstance(values, Mapping):
            missing = [n for n in names if n not in values]
            if missing:
                raise SignatureError(f"the model returned {', '.join(map(str, values))} but its "
                                     f"signature lists {', '.join(names)}")
            return {n: np.asarray(values[n]) for n in names}
        if len(values) != len(names):
            raise SignatureError(f"the model returned {len(values)} outputs but its signature "
                                 f"lists {len(names)} ({', '.join(names)})")
        return {n: np.asarray(v) for n, v in zip(names, values)}


class TorchScriptRunner(Runner):
    """TorchScript via ``torch.jit.load``: no Python class of the model is needed."""

    def __init__(self, path: Path, signature: Signature, kind: str, index: int | None):
        super().__init__(signature)
        import torch

        if kind == "cuda" and not torch.cuda.is_available():
            raise PlatformError("this torch build or machine has no CUDA device; "
                                "use device='cpu'")
        self._torch = torch
        self.device = torch.device("cpu" if kind == "cpu" else f"cuda:{index}")
        self.module = _load_torchscript(path, str(self.device))
        self.module.eval()

    def _run(self, arrays):
        torch = self._torch
        tensors = []
        for spec, a in zip(self.signature.inputs, arrays):
            if a.dtype.kind in "OUS":
                raise SignatureError(f"input '{spec.name}' holds strings (BYTES), which a "
                                     "TorchScript model cannot take")
            if not (a.flags.writeable and a.flags.c_contiguous):
                a = np.array(a, copy=True, order="C")  # torch.from_numpy shares memory
            tensors.append(torch.from_numpy(a).to(self.device))
        with torch.inference_mode():
            result = self.module(*tensors)
        names, values = _torch_outputs(result, self.signature.output_names)
        if isinstance(result, Mapping):
            return {n: v.detach().cpu().numpy() for n, v in zip(names, values)}
        return [v.detach().cpu().numpy() for v in values]


def _keras_device(kind: str, index: int | None) -> str:
    return "cpu:0" if kind == "cpu" else f"gpu:{index}"


class KerasRunner(Runner):
    """A ``.keras`` file via ``keras.saving.load_model(compile=False)``: no optimizer or
    loss is restored (nor needed), and safe mode refuses arbitrary code in Lambda layers."""

    def __init__(self, path: Path, signature: Signature, kind: str, index: int | None):
        super().__init__(signature)
        import keras

        self._keras = keras
        self._device = _keras_device(kind, index)
        with keras.device(self._device):
            self.model = _load_keras_file(path)
        self._struct = _keras_input_struct(self.model)
        try:
            count = len(self.model.inputs)
        except (AttributeError, ValueError):
            count = None
        if count is not None and count != len(signature.inputs):
            raise SignatureError(f"the model takes {count} inputs but its signature lists "
                                 f"{len(signature.inputs)}")

    def _run(self, arrays):
        keras = self._keras
        if self._struct is not None:
            x = keras.tree.pack_sequence_as(self._struct, arrays)
        else:
            x = arrays[0] if len(arrays) == 1 else arrays
        with keras.device(self._device):
            result = self.model(x, training=False)
        return [_keras_numpy(keras, t) for t in keras.tree.flatten(result)]


def _keras_numpy(keras: Any, tensor: Any) -> np.ndarray:
    # TensorFlow's own .numpy(): keras.ops.convert_to_numpy goes through np.array(),
    # which warns under numpy 2 on every call
    if keras.backend.backend() == "tensorflow" and hasattr(tensor, "numpy"):
        return tensor.numpy()
    return keras.ops.convert_to_numpy(tensor)


class SavedModelRunner(Runner):
    """A TensorFlow SavedModel folder through its ``serving_default`` signature, which
    takes and returns tensors by name."""

    def __init__(self, path: Path, signature: Signature, kind: str, index: int | None):
        super().__init__(signature)
        import tensorflow as tf

        self._tf = tf
        self._device = "/CPU:0" if kind == "cpu" else f"/GPU:{index}"
        with tf.device(self._device):
            self._loaded, self._serving = _load_savedmodel(path)
        actual = _savedmodel_signature(self._serving)
        _check_names(signature, actual.input_names, actual.output_names,
                     f"{path.name}'s serving_default signature")

    def _run(self, arrays):
        tf = self._tf
        with tf.device(self._device):
            feed = {s.name: tf.constant(a) for s, a in zip(self.signature.inputs, arrays)}
            result = self._serving(**feed)
        return {str(k): v.numpy() for k, v in result.items()}


def _onnx_session(path: Path, kind: str, index: int | None, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise PlatformError("this onnxruntime has no CUDA support (onnxruntime-gpu is not "
                                "installed); use device='cpu'")
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index or 0}),
                                "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:
        raise CorruptArtifactError(f"{path.name} is not a valid ONNX model: {_reason(e)}"
                                   ) from None


class OnnxRunner(Runner):
    """ONNX via an onnxruntime ``InferenceSession``."""

    def __init__(self, path: Path, signature: Signature, kind: str, index: int | None,
                 threads: int | None = None):
        super().__init__(signature)
        self.session = _onnx_session(path, kind, index, threads)
        _check_names(signature, [i.name for i in self.session.get_inputs()],
                     [o.name for o in self.session.get_outputs()], path.name)

    def _run(self, arrays):
        feed = {s.name: np.ascontiguousarray(a) for s, a in zip(self.signature.inputs, arrays)}
        return self.session.run(list(self.signature.output_names), feed)


# -- messages ---------------------------------------------------------------------------


def _reason(e: BaseException, last: bool = False, limit: int = 300) -> str:
    """One line of a framework's error for a user's message. Framework messages run
    over many lines (TorchScript adds its own traceback): the first line says what
    failed to load, the last what failed at run time (TensorFlow follows it with the
    node's name and the op's, ``[[{{node ...}}]] [Op:...]``, which are skipped)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if last:
        lines = [line for line in lines
                 if not line.startswith(("[[", "<stack traces"))] or lines
    if not lines:
        return type(e).__name__
    text = lines[-1] if last else lines[0]
    text = re.sub(r"\s+", " ", text)
    # torch appends advice about checkpoints that does not apply to an upload
    text = text.split(" This is an internal miniz error.")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the formats, by name --------------------------------------------------------------------


class ModelFormat:
    """What a model format implements so that aidc saves, checks, loads and serves it.

    One instance per format in :data:`model_formats` (as papermill keeps its engines):
    :func:`save`, :func:`validate`, :func:`load`, :func:`auto_device`, the replica's v2
    metadata and the Triton export all ask the registry, so a new format is one
    subclass and one :meth:`FormatRegistry.register` call. A subclass sets the class
    attributes and implements :meth:`save`, :meth:`validate`, :meth:`load` and
    :meth:`gpu_usable`.
    """

    #: the format's name in the registry, the API and the version records
    name: str = ""
    #: the v2 model metadata ``platform`` of a served version
    platform: str = ""
    #: Triton's model configuration ``platform`` and the file (or folder) it loads
    triton_platform: str = ""
    triton_file: str = ""
    #: what :func:`_kind_of` calls the models and files this format saves
    kinds: tuple[str, ...] = ()

    def save(self, model: Any, kind: str, directory: Path, example: Any,
             signature: Signature | None) -> tuple[str, str, Signature]:
        """Write ``model`` (of ``kind``) into ``directory``: ``(format, filename, signature)``."""
        raise NotImplementedError

    def validate(self, path: Path) -> None:
        """Load the artifact at ``path`` or raise :class:`CorruptArtifactError`."""
        raise NotImplementedError

    def load(self, path: Path, signature: Signature, kind: str, index: int | None,
             threads: int | None) -> Runner:
        """A :class:`Runner` on device ``kind`` (``cpu``/``cuda``) number ``index``."""
        raise NotImplementedError

    def gpu_usable(self) -> bool:
        """Whether this format's runtime can use the GPUs this process was given."""
        raise NotImplementedError

    def write_triton(self, artifact: Path, signature: Signature, dest: Path) -> None:
        """Write the stored ``artifact`` as Triton loads it (:attr:`triton_file`) at ``dest``;
        by default the artifact file as it is."""
        if artifact.is_dir():
            raise CorruptArtifactError(f"{artifact.name} is a folder, not a {self.name} file")
        shutil.copyfile(artifact, dest)


class TorchScriptFormat(ModelFormat):
    """``model.pt``: a traced or scripted ``torch.nn.Module``, loaded without its code."""

    name = "torchscript"
    platform = "pytorch_torchscript"
    triton_platform = "pytorch_libtorch"
    triton_file = TORCHSCRIPT_FILE
    kinds = ("torch", "torchscript-file")

    def save(self, model, kind, directory, example, signature):
        if kind == "torch":
            return _save_torch(model, directory, example, signature)
        return _save_torchscript_file(Path(model), directory, example, signature)

    def validate(self, path):
        _load_torchscript(path, "cpu")

    def load(self, path, signature, kind, index, threads):
        return TorchScriptRunner(path, signature, kind, index)

    def gpu_usable(self):
        import torch
        return torch.cuda.is_available()


class KerasFormat(ModelFormat):
    """A ``.keras`` file, or a TensorFlow SavedModel folder (served the same way)."""

    name = "keras"
    platform = "tensorflow_keras"
    triton_platform = "tensorflow_savedmodel"
    triton_file = SAVEDMODEL_DIR
    kinds = ("keras", "keras-file", "keras-h5", "savedmodel")

    def save(self, model, kind, directory, example, signature):
        if kind == "savedmodel":
            return _save_savedmodel(Path(model), directory, signature)
        return _save_keras(model, kind, directory, example, signature)

    def validate(self, path):
        if path.is_dir():
            _load_savedmodel(path)
        else:
            _load_keras_file(path)

    def load(self, path, signature, kind, index, threads):
        if path.is_dir():
            return SavedModelRunner(path, signature, kind, index)
        return KerasRunner(path, signature, kind, index)

    def gpu_usable(self):
        import tensorflow as tf
        return bool(tf.config.list_physical_devices("GPU"))

    def write_triton(self, artifact, signature, dest):
        if artifact.is_dir():  # already a SavedModel: Triton serves it as it is
            shutil.copytree(artifact, dest)
        else:
            from .export import keras_to_savedmodel
            keras_to_savedmodel(artifact, signature, dest)


class OnnxFormat(ModelFormat):
    """``model.onnx``, run by onnxruntime (on CUDA when its GPU provider is installed)."""

    name = "onnx"
    platform = "onnxruntime_onnx"
    triton_platform = "onnxruntime_onnx"
    triton_file = ONNX_FILE
    kinds = ("onnx", "onnx-file")

    def save(self, model, kind, directory, example, signature):
        return _save_onnx(model, directory, example, signature)

    def validate(self, path):
        _validate_onnx(path)

    def load(self, path, signature, kind, index, threads):
        return OnnxRunner(path, signature, kind, index, threads)

    def gpu_usable(self):
        import onnxruntime
        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class FormatRegistry:
    """The model formats aidc knows, by name."""

    def __init__(self) -> None:
        self._formats: dict[str, ModelFormat] = {}

    def register(self, handler: ModelFormat) -> None:
        """Add (or replace) the format ``handler.name``."""
        self._formats[handler.name] = handler

    def unregister(self, name: str) -> None:
        """Forget the format ``name`` (a plugin unloading, a test)."""
        self._formats.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._formats)

    def get(self, name: str) -> ModelFormat:
        """The format called ``name``; a :class:`UsageError` naming the known ones otherwise."""
        handler = self._formats.get(name) if isinstance(name, str) else None
        if handler is None:
            raise UsageError(f"unknown model format {name!r}; aidc knows {', '.join(self._formats)}")
        return handler

    def saving(self, kind: str) -> ModelFormat:
        """The format that saves models of ``kind`` (see :func:`_kind_of`); the one registered
        last when several do, so a registration can take over a kind of model."""
        for handler in reversed(self._formats.values()):
            if kind in handler.kinds:
                return handler
        raise UsageError(f"aidc has no model format that saves {kind} models")

    def __contains__(self, name: object) -> bool:
        return name in self._formats

    def platform(self, name: str) -> str:
        """The v2 metadata ``platform`` of format ``name`` (the name itself if unknown)."""
        handler = self._formats.get(name)
        return handler.platform if handler is not None else name


#: every format aidc saves, validates, loads and serves
model_formats = FormatRegistry()
model_formats.register(TorchScriptFormat())
model_formats.register(KerasFormat())
model_formats.register(OnnxFormat())


__all__ = ["model_formats", "ModelFormat", "FormatRegistry", "CorruptArtifactError",
           "PredictionError", "Runner", "load", "save", "validate", "check_signature",
           "TORCHSCRIPT_FILE", "KERAS_FILE", "SAVEDMODEL_DIR", "ONNX_FILE"]
