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
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import PlatformError, UsageError
from .. import accounts, artifacts
from ..accounts import RunAs


def owner_account(owner: str) -> RunAs | None:
    """The Unix account of hub user ``owner`` when the service is root and it exists; else None."""
    if not accounts.running_as_root():
        return None
    try:
        return RunAs.of(accounts.system_name(owner))
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


def reset(root: Path, keep: set[str] = frozenset()) -> None:
    """Remove copies a previous service process left behind (killed before it could),
    except the folders named in ``keep`` (those of replicas still running, to adopt)."""
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        try:
            entries = list(os.scandir(root))
        except OSError:
            entries = []
        for entry in entries:
            if entry.name in keep and entry.is_dir(follow_symlinks=False):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
    ensure_root(root)


def ensure_root(root: Path) -> None:
    """Make ``root`` (mode 0711), or accept it only if this process made it.

    It sits in the shared temporary folder under a predictable name, so another account
    could make it first, or put a link there, and then see or swap the copies: anything
    at that name that is not a plain folder of this process's user is removed first.
    """
    for _ in range(3):
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            st = os.lstat(root)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                break
            # planted by someone else (or a link): root may remove it from sticky /tmp
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(root, ignore_errors=True)
            else:
                os.unlink(root)
            continue
        break
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PlatformError(f"{root} is not a folder of the models service's own; remove it")
    os.chmod(root, 0o711, follow_symlinks=False)


def stage(artifact: Path | str, identity: RunAs | None, root: Path, prefix: str = "model-") -> Staged:
    """Give ``identity`` its own copy of ``artifact`` (a file or a SavedModel folder).

    ``artifact`` is a local path, or the URL of a version's artifact in an encrypted store
    (:func:`aidc.artifacts.encryption_of`): that one is decrypted into the private copy,
    which exists then even without an identity change, and goes with :meth:`Staged.remove`
    (the replica's plaintext never lies in the store or a shared cache).

    The copy is handed over bottom-up and without following links: while any part of it
    still belongs to the service, its folder (0700, the service's) keeps the owner out,
    so the owner can never swap an entry for a link that a later ``chown`` would follow.
    """
    encrypted = isinstance(artifact, str)
    if identity is None and not encrypted:
        return Staged(artifact, None)
    ensure_root(root)
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=root))  # 0700
    if encrypted:
        target = artifacts.copy_out(artifact, directory / artifact.rstrip("/").rsplit("/", 1)[-1])
        if identity is None:
            return Staged(target, directory)
    else:
        target = directory / artifact.name
        if artifact.is_dir():
            shutil.copytree(artifact, target)
        else:
            shutil.copy2(artifact, target)
    for folder, dirs, files in os.walk(directory, topdown=False):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), identity.uid, identity.gid, follow_symlinks=False)
    os.chown(directory, identity.uid, identity.gid, follow_symlinks=False)
    return Staged(target, directory)


def process_options(identity: RunAs | None, staged: Staged, extra_env: dict[str, str] | None = None) -> dict:
    """``Popen`` keyword arguments for a model process: as ``identity``, in its copy's folder.

    Its environment is the service's without the service's hub and database credentials,
    plus ``extra_env``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_") and k != "AIDC_DB_URL"}
    env.update(extra_env or {})
    options: dict = {"env": env, "cwd": str(staged.directory) if staged.directory else None}
    if identity is not None:
        options["env"] = identity.environment(env)
        options.update(identity.popen_kwargs())
    return options
