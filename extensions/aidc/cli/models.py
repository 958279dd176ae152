"""``aidc models ...``: the model registry and deployments from the terminal (same client as ``aidc.models``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import models as api
from ..client import Client
from ..display import text_table
from ..errors import UsageError
from .parsing import CommandGroup


def add_parser(sub, common) -> None:
    action = CommandGroup(sub, "models", "register, deploy and roll back models", common).action
    r = action("register", "register a model file (.onnx, TorchScript .pt, .keras) as a new version", register)
    r.add_argument("name")
    r.add_argument("file")
    r.add_argument("--signature", help="signature JSON (or @file); inferred for ONNX and Keras files")
    r.add_argument("--example", metavar="FILE.npy",
                   help="a batch of inputs saved with numpy.save (.npy, or .npz for several "
                        "named inputs): the signature is inferred from it (needed for TorchScript)")
    r.add_argument("--metric", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    r.add_argument("--visibility", choices=["private", "group", "public"])

    ls = action("list", "models you can see", list_)
    ls.add_argument("--json", action="store_true")
    sh = action("show", "a model's versions, aliases and deployment", show)
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")

    al = action("alias", "point an alias (e.g. production) at a version", alias)
    al.add_argument("name")
    al.add_argument("alias")
    al.add_argument("version")

    d = action("deploy", "serve a version (waits until ready)", deploy)
    d.add_argument("name")
    d.add_argument("--version", default="latest", help="number, alias or 'latest'")
    d.add_argument("--replicas", type=int, help="replica processes per version (default: as "
                   "deployed now, 1 for a new deployment)")
    d.add_argument("--gpus", type=int, help="GPUs for the deployment (default: as deployed now, 0 "
                   "for a new deployment)")
    d.add_argument("--canary", metavar="VERSION", help="also serve this version to a share of requests")
    d.add_argument("--canary-weight", type=float, default=0.1)

    p = action("predict", "call a deployed model and print its outputs", predict)
    p.add_argument("name")
    p.add_argument("--version", help="a deployed version (number or alias; default: the deployment's "
                   "traffic split, canary included)")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", metavar="FILE.npy",
                       help="the input batch saved with numpy.save (.npy, or .npz for several "
                            "named inputs)")
    given.add_argument("--json", dest="json_input", metavar="JSON",
                       help="the input batch as JSON: a nested list ('[[1, 2, 3, 4]]'), or an "
                            "object of input name to nested list; cast to the model's datatypes "
                            "as aidc.models.predict does")
    p.add_argument("--json-output", action="store_true",
                   help="print the outputs as JSON (a nested list, or an object of output name "
                        "to nested list), for scripts")

    u = action("undeploy", "stop serving a model", undeploy)
    u.add_argument("name")
    rb = action("rollback", "drop the canary, or return to the version served before", rollback)
    rb.add_argument("name")
    pr = action("promote", "make the canary the primary version", promote)
    pr.add_argument("name")

    ex = action("export", "write a Triton/KServe model repository for a version", export)
    ex.add_argument("name")
    ex.add_argument("--version", default="latest")
    ex.add_argument("--format", choices=["triton"], default="triton")
    ex.add_argument("directory")


def register(args) -> int:
    path = Path(args.file)
    if not path.exists():
        raise UsageError(f"{args.file} does not exist")
    signature = None
    if args.signature:
        text = Path(args.signature[1:]).read_text() if args.signature.startswith("@") else args.signature
        try:
            signature = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--signature is not JSON: {e}") from None
    example = _load_arrays("--example", args.example) if args.example else None
    torchscript = path.suffix in (".pt", ".pth", ".torchscript")
    if torchscript and signature is None and example is None:
        raise UsageError(
            f"{path.name} is TorchScript, which does not record its inputs: add --example "
            "FILE.npy (a batch of inputs saved with numpy.save, e.g. x[:2]) or --signature "
            "JSON (e.g. '{\"inputs\": [{\"name\": \"input\", \"datatype\": \"FP32\", "
            "\"shape\": [-1, 4]}], \"outputs\": [...]}')"
        )
    metrics = {k: json.loads(v) if v.replace(".", "", 1).lstrip("-").isdigit() else v for k, v in args.metric}
    model = path
    if torchscript:
        import torch
        model = torch.jit.load(str(path))
    try:
        v = api.register(model, name=args.name, signature=signature, metrics=metrics,
                         visibility=args.visibility, example=example)
    except UsageError as e:
        # the Python API's messages name its arguments; name the CLI's flags instead
        text = str(e).replace("example=", "--example FILE.npy").replace("signature=", "--signature")
        if text == str(e):
            raise
        raise type(e)(text) from None
    print(f"registered {v.name} version {v.version} ({v.format})")
    return 0


def _load_arrays(flag: str, filename: str):
    """An array (.npy) or a dict of name to array (.npz) given with ``flag``."""
    import numpy as np

    path = Path(filename)
    if not path.exists():
        raise UsageError(f"{flag}: {filename} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError(f"{flag}: {filename} is not a numpy .npy or .npz file ({e})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return loaded


def list_(args) -> int:
    found = api.list_models()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no models")
        return 0
    rows = []
    for m in found:
        latest = f"v{m['versions'][-1]['version']}" if m["versions"] else "-"
        dep = m["deployment"]
        served = api.Deployment(dep, m["name"]).summary() if dep else "not deployed"
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(m["aliases"].items()))
        rows.append([m["name"], latest, served, aliases])
    print(text_table(["NAME", "LATEST", "DEPLOYMENT", "ALIASES"], rows))
    return 0


def show(args) -> int:
    m = api.get(args.name)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{m['name']} (owner {m['owner']}, {m['visibility']})")
    for v in m["versions"]:
        tags = [a for a, n in m["aliases"].items() if n == v["version"]]
        metrics = " ".join(f"{k}={val}" for k, val in v["metrics"].items())
        lineage = f" from job {v['lineage']['job']}" if v["lineage"].get("job") else ""
        print(f"  v{v['version']:<4} {v['format']:<12} {', '.join(tags):<20} {metrics}{lineage}")
    dep = m["deployment"]
    if dep:
        print(f"  deployed: {api.Deployment(dep, m['name']).summary().removeprefix('serving ')}")
    return 0


def alias(args) -> int:
    result = api.set_alias(args.name, args.alias, args.version)
    print(f"{args.name}: {args.alias} -> v{result['version']}")
    return 0


def deploy(args) -> int:
    canary = {"version": args.canary, "weight": args.canary_weight} if args.canary else None
    dep = api.deploy(args.name, version=args.version, replicas=args.replicas, gpus=args.gpus, canary=canary)
    print(f"{args.name}: {dep.summary()}")
    return 0


def predict(args) -> int:
    """Inputs from a .npy/.npz file or JSON, through ``aidc.models.predict`` (which casts
    them to the model's datatypes and refuses lossy casts with the reason)."""
    import numpy as np

    if args.input:
        inputs = _load_arrays("--input", args.input)
    else:
        try:
            inputs = json.loads(args.json_input)
        except ValueError as e:
            raise UsageError(f"--json is not JSON: {e}; e.g. --json '[[1.0, 2.0, 3.0, 4.0]]'"
                             ) from None
        if not isinstance(inputs, (list, dict)):
            raise UsageError("--json takes a nested list (the input batch) or an object of input "
                             "name to nested list")
    outputs = api.predict(args.name, inputs, version=args.version)
    if args.json_output:  # as aidc.models.predict returns it: one output bare, several by name
        print(json.dumps({k: np.asarray(v).tolist() for k, v in outputs.items()}
                         if isinstance(outputs, dict) else np.asarray(outputs).tolist()))
        return 0
    named = outputs if isinstance(outputs, dict) else {"output": outputs}
    with np.printoptions(precision=4, suppress=True, threshold=200, linewidth=100):
        for key, value in named.items():
            value = np.asarray(value)
            print(f"{key}: {value.dtype} {list(value.shape)}")
            print(np.array2string(value))
    return 0


def undeploy(args) -> int:
    api.undeploy(args.name)
    print(f"{args.name}: not deployed")
    return 0


def rollback(args) -> int:
    print(f"{args.name}: {api.rollback(args.name).summary()}")
    return 0


def promote(args) -> int:
    print(f"{args.name}: {api.promote(args.name).summary()}")
    return 0


def export(args) -> int:
    import tempfile

    from ..models.export import export_triton
    from ..models.signature import Signature

    c = Client()
    version = c.get_json(f"{api.client.API}/models/{args.name}/versions/{args.version}")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = api.client.download(args.name, version["version"], Path(tmp), client=c)
        out = export_triton(version["format"], artifact, Signature.from_dict(version["signature"]),
                            args.name, version["version"], Path(args.directory))
    print(f"wrote {out}", file=sys.stderr)
    return 0
