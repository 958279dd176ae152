"""Exporting a registered model version as a Triton / KServe model repository.

aidc serves models itself, but a team may want to run them on NVIDIA Triton (or KServe
with the Triton runtime) elsewhere. :func:`export_triton` writes the layout Triton
loads::

    target/<name>/config.pbtxt
    target/<name>/<version>/model.pt            platform "pytorch_libtorch"
    target/<name>/<version>/model.onnx          platform "onnxruntime_onnx"
    target/<name>/<version>/model.savedmodel/   platform "tensorflow_savedmodel"

with inputs and outputs named as in the aidc signature, so a client written against
an aidc endpoint works against Triton unchanged.

Naming notes that matter to Triton:

- PyTorch: Triton matches config tensors to ``forward()`` arguments by name, by the
  ``<name>__<index>`` convention, or else by their order in config.pbtxt. aidc's
  torch names (``input``, ``input__0``...; ``output``, ``output__0``...) and its
  signature order satisfy one of these, and the config lists tensors in signature order.
- Keras: a ``.keras`` file is re-exported as a SavedModel whose ``serving_default``
  signature uses the aidc input and output names (plain ``model.export()`` would call
  the outputs ``output_0``...), because Triton's TensorFlow backend matches the
  config to those names.
- One ``config.pbtxt`` describes every version in the folder: exporting a version
  whose signature differs from an older version's there rewrites the config for both.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError
from .formats import CorruptArtifactError, model_formats
from .signature import Signature, TensorSpec

#: v2 datatype -> Triton config data_type (BYTES is TYPE_STRING in a model config)
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def export_triton(format: str, artifact: Path, signature: Signature, name: str, version: int,
                  target: Path, max_batch_size: int = 32) -> Path:
    """Write ``artifact`` (as stored by the registry) into the Triton model repository
    ``target``; returns ``target/name``.

    With ``max_batch_size > 0`` the model must be batchable (dimension 0 of every tensor
    dynamic): config dims then leave out the batch dimension, as Triton requires, and
    ``dynamic_batching`` lets Triton combine requests. ``max_batch_size=0`` exports the
    full shapes with no batching.

    The version folder is written beside its final place and renamed into it, so a
    Triton server polling the repository never loads a half-written model.
    """
    handler = model_formats.get(format)
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"{name!r} cannot be a Triton model name; use letters, digits, "
                         "'_', '-' and '.'")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"the version must be a whole number from 1, not {version!r}")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) \
            or max_batch_size < 0:
        raise UsageError(f"max_batch_size must be 0 (no batching) or more, "
                         f"not {max_batch_size!r}")
    artifact = Path(artifact)
    if not artifact.exists():
        raise CorruptArtifactError(f"{artifact.name} does not exist")
    if not isinstance(signature, Signature):
        signature = Signature.from_dict(signature)
    config = triton_config(format, signature, name, max_batch_size)

    model_dir = Path(target) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        handler.write_triton(artifact, signature, staging / handler.triton_file)
        _replace(staging, model_dir / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tmp = model_dir / ".config.pbtxt.tmp"
    tmp.write_text(config)
    os.replace(tmp, model_dir / "config.pbtxt")
    return model_dir


def triton_config(format: str, signature: Signature, name: str, max_batch_size: int = 32) -> str:
    """The text of ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""
    if max_batch_size > 0 and not signature.batchable:
        fixed = [s for s in signature.inputs + signature.outputs
                 if not s.shape or s.shape[0] != -1]
        s = fixed[0]
        raise UsageError(
            f"the model cannot be batched by Triton: '{s.name}' has shape {list(s.shape)}, "
            "not a dynamic dimension 0; re-export the model with a dynamic batch axis "
            "(torch.onnx.export(..., dynamic_axes={...: {0: 'batch'}})), or export it with "
            "max_batch_size=0"
        )
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(model_formats.get(format).triton_platform)}",
        f"max_batch_size: {max_batch_size}",
    ]
    for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
        lines.append(f"{kind} [")
        lines.append(",\n".join(_tensor(s, max_batch_size > 0) for s in specs))
        lines.append("]")
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _tensor(spec: TensorSpec, batched: bool) -> str:
    dims = list(spec.shape[1:] if batched else spec.shape)
    body = [
        f"    name: {_quote(spec.name)}",
        f"    data_type: {TRITON_TYPES[spec.datatype]}",
    ]
    if dims:
        body.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:
        # one value per batch item (or a scalar): Triton wants non-empty dims, so [ 1 ]
        # reshaped to the empty shape the model really has
        body.append("    dims: [ 1 ]")
        body.append("    reshape: { shape: [ ] }")
    return "  {\n" + "\n".join(body) + "\n  }"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def keras_to_savedmodel(artifact: Path, signature: Signature, dest: Path) -> None:
    """Export a ``.keras`` model as a SavedModel whose ``serving_default`` signature
    takes and returns the aidc tensor names.

    This is what ``model.export(path)`` does (a Keras ``ExportArchive`` with a
    ``serve`` endpoint), with an endpoint function that names its outputs.
    """
    import keras
    import tensorflow as tf

    from .formats import _keras_input_struct, _load_keras_file

    model = _load_keras_file(artifact)
    struct = _keras_input_struct(model)
    specs = [
        tf.TensorSpec([None if d == -1 else d for d in s.shape],
                      tf.string if s.datatype == "BYTES" else tf.as_dtype(s.dtype), name=s.name)
        for s in signature.inputs
    ]
    out_names = signature.output_names

    def serve(*args):
        arrays = list(args)
        if struct is not None:
            x = keras.tree.pack_sequence_as(struct, arrays)
        else:
            x = arrays[0] if len(arrays) == 1 else arrays
        flat = keras.tree.flatten(model(x, training=False))
        if len(flat) != len(out_names):
            raise UsageError(f"the model returns {len(flat)} outputs but its signature lists "
                             f"{len(out_names)}")
        return dict(zip(out_names, flat))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=specs)
    archive.write_out(str(dest), verbose=False)


def _replace(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``, replacing an earlier export of the same version."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
