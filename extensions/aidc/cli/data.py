"""``aidc data ...``: datasets from the terminal (same client as ``aidc.data``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import data as api
from ..services.visibility import VISIBILITIES
from .parsing import CommandGroup


def add_parser(sub, common) -> None:
    action = CommandGroup(sub, "data", "put, list and get versioned datasets", common).action
    p = action("put", "store files or folders as the next version of a dataset", put)
    p.add_argument("name")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="files or folders (given with others, a folder keeps its name as a prefix)")
    p.add_argument("--description", default="")
    p.add_argument("--visibility", choices=list(VISIBILITIES),
                   help="private: you and admins (a new dataset's default); group: also your "
                        "groups; public: everyone signed in (an existing dataset keeps its own "
                        "unless given)")
    p.add_argument("--alias", help="also point this alias (e.g. train-2026-12) at the new version")

    ls = action("list", "datasets you can see", list_)
    ls.add_argument("--json", action="store_true")
    sh = action("show", "a dataset's versions, files and aliases", show)
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")

    g = action("get", "download a version's files", get)
    g.add_argument("name")
    g.add_argument("-V", "--version", default=None, help="number or alias (default: the latest)")
    g.add_argument("-o", "--output", metavar="DIR",
                   help="copy the files into DIR (default: print the local cache folder)")

    al = action("alias", "point an alias at a version", alias)
    al.add_argument("name")
    al.add_argument("alias")
    al.add_argument("version")


def put(args) -> int:
    source = args.files[0] if len(args.files) == 1 else args.files
    v = api.put(args.name, source, description=args.description, visibility=args.visibility,
                alias=args.alias)
    print(f"stored {v.name} version {v.version}: {len(v.files)} file(s), {_size(v.size)}, "
          f"sha256 {v.sha256[:16]}")
    return 0


def list_(args) -> int:
    found = api.list()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for d in found:
        latest = d["versions"][-1] if d["versions"] else None
        newest = f"v{latest['version']}" if latest else "-"
        size = _size(latest["size"]) if latest else "-"
        aliases = ", ".join(f"{a}=v{n}" for a, n in sorted(d["aliases"].items()))
        print(f"{d['name']:<24} {newest:<6} {size:>10}  {d['owner']:<16} {d['visibility']:<8} {aliases}")
    return 0


def show(args) -> int:
    d = api.show(args.name)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"{d['name']} (owner {d['owner']}, {d['visibility']})")
    if d["description"]:
        print(f"  {d['description']}")
    for v in d["versions"]:
        tags = ", ".join(a for a, n in d["aliases"].items() if n == v["version"])
        print(f"  v{v['version']:<4} {_size(v['size']):>10}  sha256 {v['sha256'][:16]}  {v['created']}  {tags}")
        for f in v["files"]:
            described = _schema(f.get("schema"))
            print(f"        {f['name']}  {_size(f['size'])}" + (f"  {described}" if described else ""))
    return 0


def _schema(schema: dict | None) -> str:
    """One line of what a file holds: arrays with dtype and shape, or a table's columns."""
    if not schema:
        return ""
    if "arrays" in schema:
        return ", ".join(f"{k} {a['dtype'].lstrip('<>|=')} {tuple(a['shape'])}" for k, a in schema["arrays"].items())
    columns = schema.get("columns") or {}
    names = [f"{k} {t}" for k, t in columns.items()] if isinstance(columns, dict) else list(columns)
    rows = f"{schema['rows']} rows: " if "rows" in schema else ""
    return rows + ", ".join(names)


def get(args) -> int:
    folder = api.path(args.name, args.version)
    if not args.output:
        print(folder)
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".partial")):
        target = out / f.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        print(target)
    return 0


def alias(args) -> int:
    result = api.alias(args.name, args.alias, args.version)
    print(f"{args.name}: {args.alias} -> v{result['version']}")
    return 0


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
