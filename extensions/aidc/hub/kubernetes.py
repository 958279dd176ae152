"""Kubernetes: the Zero to JupyterHub ``values.yaml``, generated from the resource profiles.

Past one machine the platform runs on Kubernetes with Zero to JupyterHub (z2jh) and
KubeSpawner. The profiles users choose from stay declared once
(:mod:`aidc.gpu.profiles`); this module turns them into KubeSpawner ``profile_list``
entries and a z2jh values file, so the spawn form on Kubernetes offers exactly what the
one-machine form offers::

    python -m aidc.hub.kubernetes [--profiles-json FILE] [-o PATH]

On Kubernetes the cluster does what the GPU ledger does on one machine: a pod asks for
extended resources (``nvidia.com/gpu`` ...) that the NVIDIA device plugin advertises, and
the scheduler keeps it Pending until a node has them free. The resource names depend on
how the NVIDIA GPU operator / device plugin is set up:

- whole GPUs: ``nvidia.com/gpu``;
- MIG instances with the ``mixed`` MIG strategy: one resource per MIG profile, such as
  ``nvidia.com/mig-3g.20gb`` (a profile only says "one MIG instance", so the size is a
  setting here, :data:`DEFAULT_MIG_RESOURCE`);
- time-sliced shares with ``renameByDefault: true``: ``nvidia.com/gpu.shared``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import AidcError, UsageError
from ..gpu.inventory import MIG, SHARE, WHOLE
from ..gpu.profiles import DEFAULT_PROFILES, ResourceProfile, profiles_from_config
from ..paths import project_root

WHOLE_GPU_RESOURCE = "nvidia.com/gpu"
#: GPU operator, MIG strategy "mixed": a resource per MIG profile (A100 40GB: 3g.20gb)
DEFAULT_MIG_RESOURCE = "nvidia.com/mig-3g.20gb"
#: device plugin time-slicing with ``renameByDefault: true``
DEFAULT_SHARE_RESOURCE = "nvidia.com/gpu.shared"
DEFAULT_IMAGE = "quay.io/jupyter/minimal-notebook:latest"

#: label set by GPU feature discovery (part of the GPU operator) on nodes with NVIDIA GPUs
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
#: the taint cloud GPU node pools (and many clusters) put on GPU nodes
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
#: z2jh's default ``scheduling.userPods.tolerations``. A profile's ``tolerations``
#: *replace* the chart's list (KubeSpawner merges dicts, not lists), so GPU profiles
#: repeat these to keep user pods schedulable on user-dedicated nodes.
Z2JH_USER_POD_TOLERATIONS = tuple(
    {"key": key, "operator": "Equal", "value": "user", "effect": "NoSchedule"}
    for key in ("hub.jupyter.org/dedicated", "hub.jupyter.org_dedicated")
)

#: servers idle an hour are stopped; keep in step with the one-machine idle limit
IDLE_TIMEOUT_S = 3600
CULL_EVERY_S = 600
#: as ``Spawner.start_timeout`` on one machine: room for a wait for a free GPU (a pod
#: stays Pending until the scheduler finds one) plus the start itself
START_TIMEOUT_S = 720

DEFAULT_OUTPUT = Path("hub_config") / "kubernetes" / "values.yaml"
COMMAND = "python -m aidc.hub.kubernetes"


def _memory(gb: float) -> str:
    """``memory_gb`` as KubeSpawner's byte spec. Its ``G`` is 2**30, as on one machine."""
    if float(gb).is_integer():
        return f"{int(gb)}G"
    return f"{math.ceil(gb * 1024)}M"


def _number(value: float) -> int | float:
    """2.0 -> 2, so the YAML reads like the declaration."""
    return int(value) if float(value).is_integer() else float(value)


def _gpu_resource(profile: ResourceProfile, mig_resource: str, share_resource: str) -> str:
    try:
        names = {WHOLE: WHOLE_GPU_RESOURCE, MIG: mig_resource, SHARE: share_resource}
        return names[profile.gpu_kind]
    except KeyError:
        raise UsageError(
            f"profile {profile.id!r} has gpu_kind {profile.gpu_kind!r}; "
            f"use one of {WHOLE}, {MIG}, {SHARE}"
        ) from None


def _override(profile: ResourceProfile, mig_resource: str, share_resource: str) -> dict[str, Any]:
    """What KubeSpawner sets for one profile: guarantees equal limits, so a server gets
    what its profile says (as on one machine, where its cores are its own)."""
    if profile.gpus < 0 or profile.cpu_cores <= 0 or profile.memory_gb <= 0:
        raise UsageError(
            f"profile {profile.id!r}: gpus must be 0 or more, cpu_cores and memory_gb more than 0"
        )
    cpu = _number(profile.cpu_cores)
    memory = _memory(profile.memory_gb)
    environment = {
        "AIDC_PROFILE": profile.id,
        "OMP_NUM_THREADS": str(max(1, math.floor(profile.cpu_cores))),
    }
    override: dict[str, Any] = {
        "cpu_guarantee": cpu,
        "cpu_limit": cpu,
        "mem_guarantee": memory,
        "mem_limit": memory,
    }
    if profile.gpus:
        resource = {_gpu_resource(profile, mig_resource, share_resource): str(profile.gpus)}
        # Kubernetes wants requests == limits for extended resources
        override["extra_resource_guarantees"] = dict(resource)
        override["extra_resource_limits"] = dict(resource)
        override["node_selector"] = dict(GPU_NODE_SELECTOR)
        override["tolerations"] = [dict(t) for t in (*Z2JH_USER_POD_TOLERATIONS, GPU_TOLERATION)]
    else:
        # Images built on CUDA images set NVIDIA_VISIBLE_DEVICES=all, and where the NVIDIA
        # runtime is the node's default a pod without a GPU request would then see every
        # GPU; "void" hides them, as on one machine.
        environment["NVIDIA_VISIBLE_DEVICES"] = "void"
        environment["CUDA_VISIBLE_DEVICES"] = ""
    override["environment"] = environment
    return override


def profile_list(
    profiles: Iterable[ResourceProfile],
    *,
    mig_resource: str = DEFAULT_MIG_RESOURCE,
    share_resource: str = DEFAULT_SHARE_RESOURCE,
) -> list[dict[str, Any]]:
    """KubeSpawner ``profile_list`` entries, one per profile, slug = profile id."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for p in profiles:
        if p.id in seen:
            # KubeSpawner would silently offer the first of two profiles with one slug
            raise UsageError(f"profile id {p.id!r} is declared twice")
        seen.add(p.id)
        entries.append(
            {
                "slug": p.id,
                "display_name": p.display_name,
                "description": p.description,
                "default": bool(p.default),
                "kubespawner_override": _override(p, mig_resource, share_resource),
            }
        )
    if not entries:
        raise UsageError("no resource profiles: declare at least one")
    return entries


def _image(image: str) -> dict[str, str]:
    """``name:tag`` -> z2jh's ``{name, tag}`` (a registry port is not a tag)."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return {"name": image, "tag": "latest"}
    return {"name": name, "tag": tag}


def values(
    profiles: Iterable[ResourceProfile],
    *,
    image: str = DEFAULT_IMAGE,
    mig_resource: str = DEFAULT_MIG_RESOURCE,
    share_resource: str = DEFAULT_SHARE_RESOURCE,
) -> dict[str, Any]:
    """The z2jh values: only keys of the chart's schema, and only what the profiles and
    the one-machine platform's behaviour decide. Everything else keeps the chart default."""
    return {
        "hub": {
            "config": {
                # The chart's default is DummyAuthenticator (anyone, any password). Until
                # a real authenticator is set (README next to values.yaml), nobody signs in.
                "JupyterHub": {"authenticator_class": "null"},
            },
        },
        "singleuser": {
            "image": _image(image),
            "defaultUrl": "/lab",
            "startTimeout": START_TIMEOUT_S,
            "profileList": profile_list(
                profiles, mig_resource=mig_resource, share_resource=share_resource
            ),
        },
        "cull": {
            "enabled": True,
            "timeout": IDLE_TIMEOUT_S,
            "every": CULL_EVERY_S,
        },
    }


HEADER = """\
# Zero to JupyterHub values for aidc on Kubernetes (checked against the chart 4.4.0 schema).
# GENERATED from {source} by
#   {command}
# Do not edit by hand: change the profiles (extensions/aidc/gpu/profiles.py, or your
# --profiles-json file) and regenerate.
# Deploy (see hub_config/kubernetes/README.md):
#   helm upgrade --install aidc jupyterhub/jupyterhub --version 4.4.0 \\
#     --namespace aidc --create-namespace \\
#     --values hub_config/kubernetes/values.yaml --values your-site.yaml
# Put site settings in your own file, layered after this one, for example:
#   hub.config.JupyterHub.authenticator_class (sign-in is off until you set one),
#   hub.db.type: postgres with hub.db.url (optional; the chart's default is sqlite-pvc),
#   proxy.https, ingress.
"""


def render(
    profiles: Iterable[ResourceProfile],
    *,
    command: str = COMMAND,
    source: str = "aidc's default resource profiles",
    **options: str,
) -> str:
    """The text of ``values.yaml``: the header, then the values as block YAML."""
    body = yaml.safe_dump(
        copy.deepcopy(values(profiles, **options)),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
    return HEADER.format(command=command, source=source) + body


def write_values(
    path: str | Path,
    profiles: Iterable[ResourceProfile],
    *,
    command: str = COMMAND,
    source: str = "aidc's default resource profiles",
    **options: str,
) -> Path:
    """Write ``values.yaml`` (creating its folder); returns the path written."""
    path = Path(path)
    text = render(profiles, command=command, source=source, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_profiles_json(path: str | Path) -> list[ResourceProfile]:
    """Profiles from a JSON list of dicts, as in ``c.GPUAllocationMixin.resource_profiles``."""
    try:
        entries = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON: {e}") from None
    if not (isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries)):
        raise UsageError(f"{path} must hold a non-empty JSON list of profile objects")
    try:
        return profiles_from_config(entries)
    except TypeError as e:
        fields = ", ".join(ResourceProfile.__dataclass_fields__)
        raise UsageError(f"{path}: {e} (a profile has the fields {fields})") from None


def default_output() -> Path:
    root = project_root()
    if root is None:
        raise UsageError("not running from an aidc checkout: say where to write with -o PATH")
    return root / DEFAULT_OUTPUT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Write the Zero to JupyterHub values.yaml from aidc's resource profiles.",
    )
    parser.add_argument("--profiles-json", metavar="FILE",
                        help="JSON list of profiles (default: aidc's default profiles)")
    parser.add_argument("-o", "--output", metavar="PATH",
                        help=f"where to write (default: {DEFAULT_OUTPUT} in the checkout; "
                        "- for stdout)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="single-user image, name:tag")
    parser.add_argument("--mig-resource", default=DEFAULT_MIG_RESOURCE,
                        help="resource name of a MIG instance (MIG strategy mixed)")
    parser.add_argument("--share-resource", default=DEFAULT_SHARE_RESOURCE,
                        help="resource name of a time-sliced GPU share")
    args = parser.parse_args(argv)
    try:
        command = [COMMAND]
        if args.profiles_json:
            profiles = load_profiles_json(args.profiles_json)
            source = f"the profiles in {Path(args.profiles_json).name}"
            command.append(f"--profiles-json {args.profiles_json}")
        else:
            profiles = list(DEFAULT_PROFILES)
            source = "aidc's default resource profiles"
        options = {"image": args.image, "mig_resource": args.mig_resource,
                   "share_resource": args.share_resource}
        for flag, value, default in (
            ("--image", args.image, DEFAULT_IMAGE),
            ("--mig-resource", args.mig_resource, DEFAULT_MIG_RESOURCE),
            ("--share-resource", args.share_resource, DEFAULT_SHARE_RESOURCE),
        ):
            if value != default:
                command.append(f"{flag} {value}")
        if args.output == "-":
            sys.stdout.write(render(profiles, command=" ".join(command), source=source, **options))
            return 0
        out = Path(args.output) if args.output else default_output()
        write_values(out, profiles, command=" ".join(command), source=source, **options)
    except AidcError as e:
        print(f"aidc: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
