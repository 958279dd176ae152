"""Model formats, signatures and Triton export (aidc.models.signature / formats / export).

Real models throughout: an MNIST-style CNN in torch (traced and scripted), the same CNN
exported to ONNX with torch.onnx.export, and a small Keras model. Every round trip is
save -> validate -> load -> predict, compared with the original model's own numbers.

TensorFlow takes ~10 s to import, so every Keras test goes through the module-scoped
``keras_case`` fixture (one import, one model, one set of artifacts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from aidc.errors import NotFoundError, UsageError
from aidc.models import formats
from aidc.models.export import export_triton, triton_config
from aidc.models.formats import CorruptArtifactError, load, save, validate
from aidc.models.signature import (
    DATATYPES,
    Signature,
    SignatureError,
    TensorSpec,
    datatype_of,
)

torch.set_num_threads(2)

MNIST_SIGNATURE = Signature(
    inputs=(TensorSpec("input", "FP32", (-1, 1, 28, 28)),),
    outputs=(TensorSpec("output", "FP32", (-1, 10)),),
)


class MnistNet(torch.nn.Module):
    """The classic MNIST CNN: conv 1->32, pool, conv 32->64, pool, linear -> 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.dropout = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(64 * 7 * 7, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(self.dropout(torch.flatten(x, 1)))


class TwoHeads(torch.nn.Module):
    """Two inputs of different types, two outputs."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x, ids):
        y = self.lin(x)
        return y, ids * 2


@pytest.fixture(scope="module")
def mnist():
    torch.manual_seed(0)
    model = MnistNet()  # left in training mode on purpose: save() must trace it in eval mode
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)


def reference(model, x: np.ndarray) -> np.ndarray:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    model.train(was)
    return out


def assert_round_trip(fmt: str, directory: Path, filename: str, signature: Signature,
                      expected: np.ndarray, x: np.ndarray, name: str = "input",
                      out: str = "output") -> None:
    """validate -> load -> predict on batch 1 and batch 5 gives the original's numbers."""
    validate(fmt, directory / filename)
    runner = load(fmt, directory / filename, signature)
    runner.warmup()
    for batch in (1, 5):
        got = runner.predict({name: x[:batch]})
        assert list(got) == [out]
        assert got[out].shape == expected[:batch].shape
        np.testing.assert_allclose(got[out], expected[:batch], rtol=1e-4, atol=1e-5)


# -- signature ----------------------------------------------------------------------------


def test_imports_are_lazy():
    """The service imports these modules per request; no framework may come with them."""
    code = ("import sys, aidc.models.signature, aidc.models.formats, aidc.models.export; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'onnx', 'onnxruntime') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_datatypes():
    assert set(DATATYPES) == {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                              "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"}
    assert DATATYPES["BYTES"] == np.dtype(object)
    assert datatype_of(np.float32) == "FP32"
    assert datatype_of(np.dtype("int64")) == "INT64"
    assert datatype_of("float16") == "FP16"
    assert datatype_of("FP64") == "FP64"
    assert datatype_of(np.array(["a"]).dtype) == "BYTES"
    assert datatype_of(np.array([b"a"], dtype=object).dtype) == "BYTES"
    assert datatype_of(torch.float32) == "FP32"
    assert datatype_of(torch.uint8) == "UINT8"
    assert datatype_of(torch.bool) == "BOOL"
    with pytest.raises(SignatureError, match="bfloat16"):
        datatype_of(torch.bfloat16)
    with pytest.raises(SignatureError):
        datatype_of(np.complex64)


def test_signature_round_trip_and_describe():
    d = MNIST_SIGNATURE.to_dict()
    assert d == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert json.loads(json.dumps(d)) == d
    assert Signature.from_dict(d) == MNIST_SIGNATURE
    assert MNIST_SIGNATURE.batchable
    text = MNIST_SIGNATURE.describe()
    assert "inputs:" in text and "outputs:" in text
    assert "input  FP32   [-1, 1, 28, 28]" in text
    assert "output  FP32   [-1, 10]" in text


@pytest.mark.parametrize("junk, words", [
    (None, "inputs and outputs"),
    ([], "inputs and outputs"),
    ({"inputs": []}, "lacks outputs"),
    ({"inputs": [], "outputs": []}, "at least one"),
    ({"inputs": "x", "outputs": []}, "list of tensors"),
    ({"inputs": [{"name": "x", "datatype": "FP32"}], "outputs": []}, "lacks shape"),
    ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, "datatype 'FLOAT'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, ">= 0, or -1"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": ["a"]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, ">= 0, or -1"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [True]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, ">= 0, or -1"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "1,2"}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, "list of integers"),
    ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, "non-empty"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]},
                 {"name": "x", "datatype": "FP32", "shape": [1]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, "twice: x"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "color": "red"}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}, "unknown keys color"),
    ({"inputs": [], "outputs": [], "extra": 1}, "not extra"),
])
def test_signature_from_dict_refuses_junk(junk, words):
    with pytest.raises(SignatureError) as e:
        Signature.from_dict(junk)
    assert words in str(e.value)
    assert isinstance(e.value, UsageError)


def test_check_inputs_messages():
    sig = MNIST_SIGNATURE
    tail = "expected inputs: input FP32 [-1,1,28,28]"
    good = np.zeros((3, 1, 28, 28), np.float32)
    sig.check_inputs({"input": good})

    with pytest.raises(SignatureError) as e:
        sig.check_inputs({"input": np.zeros((2, 3), np.float32)})
    assert str(e.value) == ("input 'input' has shape [2, 3] but the model expects "
                            f"[-1, 1, 28, 28]; {tail}")

    with pytest.raises(SignatureError) as e:
        sig.check_inputs({"input": good.astype(np.int64)})
    assert str(e.value) == f"input 'input' has datatype INT64 but the model expects FP32; {tail}"

    with pytest.raises(SignatureError) as e:
        sig.check_inputs({"x": good})
    assert str(e.value) == f"unknown input 'x'; missing input 'input'; {tail}"

    with pytest.raises(SignatureError) as e:
        sig.check_inputs({})
    assert str(e.value) == f"missing input 'input'; {tail}"

    with pytest.raises(SignatureError) as e:
        sig.check_inputs({"input": good.tolist()})
    assert str(e.value).startswith("input 'input' is a list, not an array")

    two = Signature((TensorSpec("a", "FP32", (-1, 4)), TensorSpec("ids", "INT64", (-1,))),
                    (TensorSpec("y", "FP32", (-1, 3)),))
    with pytest.raises(SignatureError) as e:
        two.check_inputs({"a": np.zeros((2, 5), np.float64)})
    assert str(e.value) == (
        "input 'a' has datatype FP64 but the model expects FP32; "
        "input 'a' has shape [2, 5] but the model expects [-1, 4]; missing input 'ids'; "
        "expected inputs: a FP32 [-1,4], ids INT64 [-1]")


def test_zeros():
    sig = Signature((TensorSpec("x", "FP32", (-1, 3, -1)), TensorSpec("s", "BYTES", (-1,))),
                    (TensorSpec("y", "FP32", (-1,)),))
    z = sig.zeros(1)
    assert z["x"].shape == (1, 3, 1) and z["x"].dtype == np.float32
    assert z["s"].shape == (1,) and z["s"].dtype == object
    sig.check_inputs(z)


# -- torch --------------------------------------------------------------------------------


def test_torch_traced(mnist, images, tmp_path):
    expected = reference(mnist, images)
    fmt, filename, sig = save(mnist, tmp_path, example=images[:2])
    assert (fmt, filename) == ("torchscript", "model.pt")
    assert sig == MNIST_SIGNATURE
    assert mnist.training, "save() must give the model back in the mode it was in"
    assert_round_trip(fmt, tmp_path, filename, sig, expected, images)


def test_torch_scripted(mnist, images, tmp_path):
    expected = reference(mnist, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit
        scripted = torch.jit.script(mnist.eval())
    mnist.train()
    fmt, filename, sig = save(scripted, tmp_path, example=torch.from_numpy(images[:3]))
    assert (fmt, filename) == ("torchscript", "model.pt")
    assert sig == MNIST_SIGNATURE
    assert_round_trip(fmt, tmp_path, filename, sig, expected, images)


def test_torch_needs_an_example(mnist, tmp_path):
    with pytest.raises(SignatureError, match="needs example="):
        save(mnist, tmp_path)
    # with a signature, a plain module is scripted instead of traced
    fmt, filename, sig = save(mnist, tmp_path, signature=MNIST_SIGNATURE)
    assert sig is MNIST_SIGNATURE
    validate(fmt, tmp_path / filename)


def test_torch_several_inputs_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads()
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    ids = np.arange(4, dtype=np.int64)
    fmt, filename, sig = save(model, tmp_path, example=(x, ids))
    assert sig.to_dict() == {
        "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, 4]},
                   {"name": "input__1", "datatype": "INT64", "shape": [-1]}],
        "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "output__1", "datatype": "INT64", "shape": [-1]}],
    }
    runner = load(fmt, tmp_path / filename, sig)
    got = runner.predict({"input__0": x[:2], "input__1": ids[:2]})
    with torch.no_grad():
        np.testing.assert_allclose(got["output__0"], model(torch.from_numpy(x[:2]),
                                                           torch.from_numpy(ids[:2]))[0].numpy())
    np.testing.assert_array_equal(got["output__1"], ids[:2] * 2)
    # a dict example names the inputs
    _, _, named = save(model, tmp_path / "named", example={"features": x, "ids": ids})
    assert named.input_names == ("features", "ids")


def test_corrupt_torchscript(mnist, images, tmp_path):
    save(mnist, tmp_path, example=images[:2])
    data = (tmp_path / "model.pt").read_bytes()
    bad = tmp_path / "bad" / "model.pt"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArtifactError) as e:
        validate("torchscript", bad)
    assert str(e.value).startswith("model.pt is not a valid TorchScript model: ")
    assert "\n" not in str(e.value)
    with pytest.raises(CorruptArtifactError):
        load("torchscript", bad, MNIST_SIGNATURE)

    torch.save(mnist, bad)  # a pickled module needs the training code: not servable
    with pytest.raises(CorruptArtifactError, match="torch.save"):
        validate("torchscript", bad)


# -- onnx ---------------------------------------------------------------------------------


def export_onnx(model, x: np.ndarray, path: Path) -> Path:
    """torch.onnx.export with a dynamic batch axis. The default (dynamo) exporter of
    torch 2.9+ needs onnxscript, which is not installed: use the TorchScript-based one."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    model.train()
    return path


@pytest.fixture(scope="module")
def onnx_file(mnist, images, tmp_path_factory):
    return export_onnx(mnist, images[:2], tmp_path_factory.mktemp("onnx") / "mnist.onnx")


def test_onnx_from_file(mnist, images, onnx_file, tmp_path):
    expected = reference(mnist, images)
    fmt, filename, sig = save(onnx_file, tmp_path)
    assert (fmt, filename) == ("onnx", "model.onnx")
    assert sig == MNIST_SIGNATURE
    assert_round_trip(fmt, tmp_path, filename, sig, expected, images)


def test_onnx_from_model_proto(mnist, images, onnx_file, tmp_path):
    import onnx

    expected = reference(mnist, images)
    fmt, filename, sig = save(onnx.load(str(onnx_file)), tmp_path)
    assert (fmt, filename, sig) == ("onnx", "model.onnx", MNIST_SIGNATURE)
    assert_round_trip(fmt, tmp_path, filename, sig, expected, images)


def test_onnx_signature_must_use_graph_names(onnx_file, tmp_path):
    wrong = Signature((TensorSpec("pixels", "FP32", (-1, 1, 28, 28)),),
                      (TensorSpec("output", "FP32", (-1, 10)),))
    with pytest.raises(SignatureError, match="inputs pixels \\(the model's: input\\)"):
        save(onnx_file, tmp_path, signature=wrong)


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CorruptArtifactError) as e:
        validate("onnx", bad)
    assert str(e.value).startswith("model.onnx is not a valid ONNX model: ")
    assert "\n" not in str(e.value)
    bad.write_text("this is not a model\n")
    with pytest.raises(CorruptArtifactError, match="model.onnx is not a valid ONNX model"):
        validate("onnx", bad)
    with pytest.raises(CorruptArtifactError):
        load("onnx", bad, MNIST_SIGNATURE)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown model format 'pickle'"):
        validate("pickle", tmp_path)
    with pytest.raises(NotFoundError, match="nothing.onnx does not exist"):
        validate("onnx", tmp_path / "nothing.onnx")
    with pytest.raises(UsageError, match="cannot save a builtins.dict"):
        save({"not": "a model"}, tmp_path)
    with pytest.raises(UsageError, match="unknown device"):
        formats._parse_device("tpu")


@pytest.fixture
def echo_format():
    """A format registered for one test (and forgotten after it)."""
    yield formats.model_formats
    formats.model_formats.unregister("echo")
    assert formats.model_formats.saving("onnx-file").name == "onnx"


def test_a_registered_format_is_saved_validated_loaded_and_exported(tmp_path, echo_format):
    """A new format is one ModelFormat registered by name: save, validate, load, the v2
    platform name and the Triton export all find it there (nothing else to edit)."""
    calls = []

    class Echo(formats.Runner):
        def _run(self, arrays):
            return arrays

    class EchoFormat(formats.ModelFormat):
        name = "echo"
        platform = "echo_platform"
        triton_platform = "python"
        triton_file = "model.echo"
        kinds = ("onnx-file",)  # takes over .onnx files, to be chosen by save()

        def save(self, model, kind, directory, example, signature):
            (directory / "model.echo").write_bytes(b"echo")
            return "echo", "model.echo", Signature.from_dict(ECHO)

        def validate(self, path):
            calls.append(("validate", path.name))

        def load(self, path, signature, kind, index, threads):
            calls.append(("load", kind))
            return Echo(signature)

    ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}
    echo_format.register(EchoFormat())
    source = tmp_path / "any.onnx"
    source.write_bytes(b"")
    fmt, filename, sig = save(source, tmp_path / "v1")
    assert (fmt, filename) == ("echo", "model.echo")
    validate("echo", tmp_path / "v1" / filename)
    runner = load("echo", tmp_path / "v1" / filename, sig)
    x = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(runner.predict({"x": x})["y"], x)
    assert calls == [("validate", "model.echo"), ("load", "cpu")]
    assert formats.model_formats.platform("echo") == "echo_platform"
    assert "echo" in formats.model_formats.names()
    repo = export_triton("echo", tmp_path / "v1" / filename, sig, "echo-model", 1, tmp_path / "repo")
    assert (repo / "1" / "model.echo").read_bytes() == b"echo"
    assert parse_config(repo / "config.pbtxt").platform == "python"


# -- Triton export ------------------------------------------------------------------------


def parse_config(path: Path):
    """Parse config.pbtxt as Triton does: text format of its ModelConfig message."""
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_mnist_config(model_dir: Path, name: str, platform: str, in_name: str = "input",
                       in_dims=(1, 28, 28), out_name: str = "output") -> None:
    text = (model_dir / "config.pbtxt").read_text()
    assert f'name: "{name}"' in text
    assert f'platform: "{platform}"' in text
    assert "max_batch_size: 8" in text
    assert "TYPE_FP32" in text
    assert f"dims: [ {', '.join(map(str, in_dims))} ]" in text
    assert "dims: [ 10 ]" in text
    assert "dynamic_batching { }" in text
    config = parse_config(model_dir / "config.pbtxt")
    assert config.name == name and config.platform == platform
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [(in_name, list(in_dims))]
    assert [(o.name, list(o.dims)) for o in config.output] == [(out_name, [10])]
    assert config.input[0].data_type == config.output[0].data_type == 11  # TYPE_FP32
    assert config.HasField("dynamic_batching")


def test_export_torchscript_and_onnx(mnist, images, onnx_file, tmp_path):
    expected = reference(mnist, images)
    repo = tmp_path / "repo"
    for fmt_source, name, platform, model_file in (
        (mnist, "mnist-pt", "pytorch_libtorch", "model.pt"),
        (onnx_file, "mnist-onnx", "onnxruntime_onnx", "model.onnx"),
    ):
        art = tmp_path / name
        fmt, filename, sig = save(fmt_source, art, example=images[:2])
        out = export_triton(fmt, art / filename, sig, name, 3, repo, max_batch_size=8)
        assert out == repo / name
        check_mnist_config(out, name, platform)
        exported = out / "3" / model_file
        assert exported.is_file()
        got = load(fmt, exported, sig).predict({"input": images})
        np.testing.assert_allclose(got["output"], expected, rtol=1e-4, atol=1e-5)
        assert sorted(p.name for p in out.iterdir()) == ["3", "config.pbtxt"]

    # exporting the same version again replaces it; another version sits beside it
    fmt, filename, sig = save(onnx_file, tmp_path / "again")
    export_triton(fmt, tmp_path / "again" / filename, sig, "mnist-onnx", 3, repo, 8)
    export_triton(fmt, tmp_path / "again" / filename, sig, "mnist-onnx", 4, repo, 8)
    assert sorted(p.name for p in (repo / "mnist-onnx").iterdir()) == ["3", "4", "config.pbtxt"]


def test_export_config_details(tmp_path):
    # no batching: full shapes, no dynamic_batching
    text = triton_config("onnx", MNIST_SIGNATURE, "m", max_batch_size=0)
    assert "max_batch_size: 0" in text
    assert "dims: [ -1, 1, 28, 28 ]" in text and "dynamic_batching" not in text
    from tritonclient.grpc import model_config_pb2

    parse_config_text = text_format.Parse
    parse_config_text(text, model_config_pb2.ModelConfig())

    # one value per batch item: Triton wants dims [ 1 ] reshaped to []
    sig = Signature((TensorSpec("ids", "INT64", (-1,)), TensorSpec("text", "BYTES", (-1, 2))),
                    (TensorSpec("score", "FP16", (-1,)),))
    text = triton_config("onnx", sig, "m", max_batch_size=4)
    config = parse_config_text(text, model_config_pb2.ModelConfig())
    assert [list(i.dims) for i in config.input] == [[1], [2]]
    assert list(config.input[0].reshape.shape) == []
    assert "TYPE_STRING" in text and "TYPE_INT64" in text and "TYPE_FP16" in text

    fixed = Signature((TensorSpec("input", "FP32", (1, 1, 28, 28)),),
                      (TensorSpec("output", "FP32", (1, 10)),))
    with pytest.raises(UsageError, match="cannot be batched.*max_batch_size=0"):
        triton_config("onnx", fixed, "m", max_batch_size=8)
    for bad in ("../x", "", "a/b"):
        with pytest.raises(UsageError, match="cannot be a Triton model name"):
            export_triton("onnx", tmp_path, MNIST_SIGNATURE, bad, 1, tmp_path)
    with pytest.raises(UsageError, match="version"):
        export_triton("onnx", tmp_path, MNIST_SIGNATURE, "m", 0, tmp_path)


# -- keras (TensorFlow is imported once, here) ----------------------------------------------


@pytest.fixture(scope="module")
def keras_case(tmp_path_factory, images):
    """A small Keras CNN, saved, and exported once for every Keras test below."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1), name="pixels")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs)

    root = tmp_path_factory.mktemp("keras")
    x = images.transpose(0, 2, 3, 1).copy()  # NHWC
    case = {"keras": keras, "model": model, "x": x, "root": root,
            "expected": model(x, training=False).numpy()}
    case["saved"] = save(model, root / "art")
    # a SavedModel as Keras 2 or model.export() writes one
    model.export(str(root / "exported_savedmodel"), format="tf_saved_model", verbose=False)
    return case


def test_keras_save_load_predict(keras_case):
    fmt, filename, sig = keras_case["saved"]
    assert (fmt, filename) == ("keras", "model.keras")
    assert sig == Signature((TensorSpec("pixels", "FP32", (-1, 28, 28, 1)),),
                            (TensorSpec("logits", "FP32", (-1, 10)),))
    assert_round_trip(fmt, keras_case["root"] / "art", filename, sig, keras_case["expected"],
                      keras_case["x"], name="pixels", out="logits")


def test_keras_savedmodel_folder(keras_case, tmp_path):
    fmt, filename, sig = save(keras_case["root"] / "exported_savedmodel", tmp_path)
    assert (fmt, filename) == ("keras", "model.savedmodel")
    assert (tmp_path / filename / "saved_model.pb").is_file()
    assert sig.to_dict() == {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
        "outputs": [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert_round_trip(fmt, tmp_path, filename, sig, keras_case["expected"], keras_case["x"],
                      name="pixels", out="output_0")


def test_keras_without_inputs_uses_the_example(keras_case, tmp_path):
    keras = keras_case["keras"]
    model = keras.Sequential([keras.layers.Dense(3)])  # never built: no symbolic inputs
    x = np.ones((4, 6), np.float32)
    with pytest.raises(SignatureError, match="example="):
        save(model, tmp_path / "a")
    fmt, filename, sig = save(model, tmp_path / "b", example=x)
    assert sig.to_dict() == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 6]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
    }
    got = load(fmt, tmp_path / "b" / filename, sig).predict({"input": x[:3]})
    np.testing.assert_allclose(got["output"], model(x[:3]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_corrupt_keras(keras_case, tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("I am a text file\n")
    with pytest.raises(CorruptArtifactError) as e:
        validate("keras", bad)
    assert str(e.value) == ("model.keras is not a valid Keras model: "
                            "it is not a .keras (zip) archive")
    # a zip that is not a Keras model
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CorruptArtifactError, match="model.keras is not a valid Keras model: "):
        validate("keras", bad)
    folder = tmp_path / "model.savedmodel"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptArtifactError, match="not a valid TensorFlow SavedModel"):
        validate("keras", folder)


def test_export_keras(keras_case, tmp_path):
    import tensorflow as tf

    fmt, filename, sig = keras_case["saved"]
    out = export_triton(fmt, keras_case["root"] / "art" / filename, sig, "mnist-keras", 1,
                        tmp_path, max_batch_size=8)
    check_mnist_config(out, "mnist-keras", "tensorflow_savedmodel", in_name="pixels",
                       in_dims=(28, 28, 1), out_name="logits")
    savedmodel = out / "1" / "model.savedmodel"
    assert (savedmodel / "saved_model.pb").is_file()
    # Triton's TensorFlow backend matches config names to the serving signature's
    serving = tf.saved_model.load(str(savedmodel)).signatures["serving_default"]
    assert set(serving.structured_input_signature[1]) == {"pixels"}
    assert set(serving.structured_outputs) == {"logits"}
    got = serving(pixels=tf.constant(keras_case["x"]))["logits"].numpy()
    np.testing.assert_allclose(got, keras_case["expected"], rtol=1e-4, atol=1e-5)
    # and the exported folder is itself a servable aidc artifact
    runner = load("keras", savedmodel, sig)
    np.testing.assert_allclose(runner.predict({"pixels": keras_case["x"][:1]})["logits"],
                               keras_case["expected"][:1], rtol=1e-4, atol=1e-5)
