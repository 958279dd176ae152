"""Model code runs as the model's owner, never as the models service.

Loading a model runs code its author chose: a SavedModel's graph, a Keras model's layers,
an ONNX custom operator. The models service runs as root on a real platform (it must
read every user's artifacts and start processes), so both the upload check
(:mod:`aidc.models.validate`) and every replica (:mod:`aidc.models.server`) run as the
Unix account of the model's owner instead, exactly as that user's jobs and servers do:
whatever a model does, it can do no more than its owner could from their own notebook.

The artifact store under the platform's data directory is private to the service, so
the artifact is copied into a fresh directory owned by that account
(:func:`stage`) for the process to read. Without root (development mode) there is one
account anyway: processes run as the service's, from the artifact in place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..hub import system_users
from ..hub.system_users import RunAs


def owner_account(owner: str) -> RunAs | None:
    """The Unix account of hub user ``owner`` when the service is root and it exists; else None."""
    if not system_users.running_as_root():
        return None
    try:
        return RunAs.of(system_users.system_name(owner))
    except UsageError:
        return None  # e.g. a user of company sign-in without a local account


@dataclass
class Staged:
    """An artifact copy the identity may read, removed with :meth:`remove`."""

    path: Path
    directory: Path | None  # None: the artifact in place (no identity change)

    def remove(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def run_root(data_dir: str) -> Path:
    """Where this platform stages artifacts: one folder per platform, emptied at service start.

    Mode 0711: each owner can reach their own 0700 copy and list nothing.
    """
    tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"aidc-models-{tag}"


def reset(root: Path) -> None:
    """Remove copies a previous service process left behind (killed before it could)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(root, 0o711)


def stage(artifact: Path, identity: RunAs | None, root: Path, prefix: str = "model-") -> Staged:
    """Give ``identity`` its own copy of ``artifact`` (a file or a SavedModel folder)."""
    if identity is None:
        return Staged(artifact, None)
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=root))  # 0700
    target = directory / artifact.name
    if artifact.is_dir():
        shutil.copytree(artifact, target)
    else:
        shutil.copy2(artifact, target)
    for root, dirs, files in os.walk(directory):
        for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(entry, identity.uid, identity.gid)
    return Staged(target, directory)


def process_options(identity: RunAs | None, staged: Staged, extra_env: dict[str, str] | None = None) -> dict:
    """``Popen`` keyword arguments for a model process: as ``identity``, in its copy's folder.

    Its environment is the service's without the service's hub credentials, plus ``extra_env``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env.update(extra_env or {})
    options: dict = {"env": env, "cwd": str(staged.directory) if staged.directory else None}
    if identity is not None:
        options["env"] = identity.environment(env)
        options.update(identity.popen_kwargs())
    return options
