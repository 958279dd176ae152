"""Real Unix accounts for platform users, as The Littlest JupyterHub does.

(Below the hub: the hub's spawner and user commands, the jobs service's kernels and the
models service's replicas all run as these accounts. ``aidc.hub.system_users`` is this
module under its old name.)

When the platform runs as root, hub user ``alice`` is the Unix account
``jupyter-alice``: her server, kernels and files run and belong to that account, and
her home directory is 0700. Every such account is in the ``aidc-users`` group, which is
how aidc recognises accounts it created (it never adopts or deletes any other account).

The accounts must run the platform's Python environment, which may sit inside a folder
they cannot enter (a checkout under ``/root``, a CI clone in a private temp folder).
:func:`grant_runtime_access` gives the ``aidc-users`` group *traverse-only* permission
(POSIX ACL ``g:aidc-users:--x``) on each folder above the environment and the checkout
that others cannot already pass through. Traverse-only means: members can reach the
files below by their exact path, but cannot list the folder, and nothing becomes
readable that was not already world-readable. In production, installing the checkout
under ``/opt`` makes this a no-op.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import ConflictError, PlatformError, UsageError

USERS_GROUP = "aidc-users"
#: ``AIDC_UNIX_USER_PREFIX`` lets two platforms (say, a developer's and the test
#: suite's) share one host without sharing account names.
DEFAULT_PREFIX = os.environ.get("AIDC_UNIX_USER_PREFIX", "jupyter-")

#: hub user names that become Unix names: lowercase, start with a letter, at most 32
#: characters once prefixed (useradd's limit).
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,22}$")


@dataclass(frozen=True)
class RunAs:
    """A Unix account a process of the platform runs as: a job's kernel, a model replica.

    (``None`` instead of one: the platform's own account, in development mode.)
    """

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def of(cls, unix_name: str) -> RunAs:
        """The account ``unix_name`` from the system's user and group databases."""
        try:
            pw = pwd.getpwnam(unix_name)
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"there is no Unix account {unix_name!r} on this machine") from None
        groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)

    def popen_kwargs(self) -> dict:
        """``subprocess.Popen`` arguments that make the child this account."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with this account's ``HOME``, ``USER``, ``LOGNAME`` and ``TMPDIR`` (its
        private temporary folder, :func:`private_tmp`, made if missing)."""
        return {**env, "HOME": self.home, "USER": self.name, "LOGNAME": self.name,
                **tmpdir_env(self.home, self.uid, self.gid)}


#: each account's own temporary folder, in its home (``TMPDIR`` of its processes)
PRIVATE_TMP = ".tmp"


def private_tmp(home: str, uid: int, gid: int) -> str | None:
    """``<home>/.tmp``, made (0700, the account's) if missing; None where it cannot be.

    The shared ``/tmp`` is a place where any account can create a name first: a folder
    another program expects to make (``/tmp/dask-scratch-space``,
    ``/tmp/torchinductor_<user>``, ...) can be made by someone else beforehand and then
    read, or filled with what that program will load. Every process the platform starts
    for an account (its server and kernels, its jobs' kernels, its model replicas) gets
    this folder as ``TMPDIR`` instead, which Python's ``tempfile``, Dask and most tools
    honour. It is made by root from a descriptor of the home, never by following a name:
    a home that is not the account's, or a ``.tmp`` that is not a folder of the account's
    (a link, say), gets no private folder (the system's is used, as before)."""
    try:
        home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(home_fd).st_uid != uid:
            return None
        try:
            os.mkdir(PRIVATE_TMP, 0o700, dir_fd=home_fd)
            made = True
        except FileExistsError:
            made = False
        fd = os.open(PRIVATE_TMP, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=home_fd)
        try:
            if made and os.fstat(fd).st_uid != uid:
                os.fchown(fd, uid, gid)
            elif not _handed_over(fd, uid):
                return None
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(home_fd)
    return os.path.join(home, PRIVATE_TMP)


def _handed_over(fd: int, uid: int, wait: float = 0.1) -> bool:
    """Whether the folder ``fd`` is the account's, allowing a moment for a concurrent
    :func:`private_tmp` (two jobs of a new account starting at once) that made it as root
    to hand it over; one that stays another's is not used."""
    deadline = time.monotonic() + wait
    while os.fstat(fd).st_uid != uid:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def tmpdir_env(home: str, uid: int, gid: int) -> dict[str, str]:
    """``{"TMPDIR": <private folder>}`` for the account, or nothing when it has none."""
    folder = private_tmp(home, uid, gid)
    return {"TMPDIR": folder} if folder else {}


def running_as_root() -> bool:
    return os.geteuid() == 0


def validate_name(name: str) -> str:
    """Refuse hub user names that cannot safely become Unix account names."""
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"invalid user name {name!r}: use 1-23 characters, lowercase letters, digits, "
            "'-' or '_', starting with a letter"
        )
    return name


def system_name(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}{name}"


def _run(cmd: list[str], input: str | None = None) -> None:
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PlatformError(f"{cmd[0]} failed: {(proc.stderr or proc.stdout).strip()}")


def ensure_group() -> int:
    """Create the ``aidc-users`` group if needed; return its GID."""
    try:
        return grp.getgrnam(USERS_GROUP).gr_gid
    except KeyError:
        _run(["groupadd", "--system", USERS_GROUP])
        return grp.getgrnam(USERS_GROUP).gr_gid


def account(unix_name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(unix_name)
    except KeyError:
        return None


def owner_tag(data_dir: str | os.PathLike | None) -> str:
    """The account comment (GECOS) naming the platform (data directory) that owns it.

    GECOS may not hold ':' ',' or newlines; such paths are named by their hash.
    """
    if not data_dir:
        return "aidc"
    text = str(data_dir)
    if any(ch in text for ch in ":,\n="):
        text = "sha256=" + hashlib.sha256(text.encode()).hexdigest()[:24]
    return f"aidc {text}"


def is_managed(unix_name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``unix_name`` exists and was created by aidc (is in ``aidc-users``).

    With ``data_dir``, also whether it belongs to that platform: an account made by
    another platform on the same host is never adopted, changed or removed.
    """
    pw = account(unix_name)
    if pw is None:
        return False
    try:
        group = grp.getgrnam(USERS_GROUP)
    except KeyError:
        return False
    if not (pw.pw_gid == group.gr_gid or unix_name in group.gr_mem):
        return False
    return data_dir is None or pw.pw_gecos == owner_tag(data_dir)


def create_account(unix_name: str, data_dir: str | os.PathLike | None = None) -> pwd.struct_passwd:
    """Create (or adopt, if this platform made it before) the account with a private home."""
    pw = account(unix_name)
    if pw is not None and not is_managed(unix_name, data_dir):
        raise ConflictError(
            f"a Unix account named {unix_name!r} already exists and does not belong to this "
            f"platform ({pw.pw_gecos or 'not created by aidc'}); aidc will not take it over"
        )
    gid = ensure_group()
    if pw is None:
        _run([
            "useradd", "--create-home", "--shell", "/bin/bash", "--gid", str(gid),
            "--comment", owner_tag(data_dir), unix_name,
        ])
        pw = pwd.getpwnam(unix_name)
    home = Path(pw.pw_dir)
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    os.chmod(home, 0o700)
    private_tmp(pw.pw_dir, pw.pw_uid, pw.pw_gid)
    return pw


def set_password(unix_name: str, password: str) -> None:
    """Set the account's password (what PAM checks at the login page)."""
    if not password or "\n" in password or ":" in unix_name:
        raise UsageError("the password must be one non-empty line")
    _run(["chpasswd"], input=f"{unix_name}:{password}\n")


def delete_account(
    unix_name: str, keep_home: bool = False, data_dir: str | os.PathLike | None = None
) -> Path | None:
    """Remove an aidc-created account; its home is deleted, or kept root-owned if asked.

    Returns where a kept home was moved. The home is never left owned by a UID that a
    future account could receive.
    """
    pw = account(unix_name)
    if pw is None:
        return None
    if not is_managed(unix_name, data_dir):
        raise ConflictError(f"{unix_name!r} does not belong to this platform; not removing it")
    subprocess.run(["pkill", "-KILL", "-u", unix_name], capture_output=True)
    kept: Path | None = None
    home = Path(pw.pw_dir)
    if keep_home and home.exists():
        kept = home.with_name(f".removed-{unix_name}-{int(time.time())}")
        home.rename(kept)
        for dirpath, dirnames, filenames in os.walk(kept):
            for n in [dirpath, *(os.path.join(dirpath, f) for f in dirnames + filenames)]:
                os.lchown(n, 0, 0)
        os.chmod(kept, 0o700)
        _run(["userdel", unix_name])
    else:
        _run(["userdel", "--remove", unix_name])
        if home.exists():  # userdel may leave it when the mail spool is missing
            shutil.rmtree(home, ignore_errors=True)
    return kept


def _others_can_traverse(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o001)


def grant_runtime_access(paths: Iterable[Path]) -> list[Path]:
    """Let ``aidc-users`` traverse (only traverse) every folder above ``paths``.

    Returns the folders that were changed. Raises :class:`PlatformError` when a folder
    needs it and ``setfacl`` (Debian package ``acl``) is missing.
    """
    ensure_group()
    needed: list[Path] = []
    for p in paths:
        p = Path(p).resolve()
        for parent in [p, *p.parents]:
            if parent.is_dir() and not _others_can_traverse(parent) and parent not in needed:
                needed.append(parent)
    if not needed:
        return []
    setfacl = shutil.which("setfacl")
    if setfacl is None:
        raise PlatformError(
            "user accounts cannot reach the platform's Python environment "
            f"({', '.join(map(str, needed))} is closed to them) and `setfacl` is missing: "
            "install the `acl` package (make install does), or install aidc under /opt"
        )
    for d in needed:
        _run([setfacl, "-m", f"g:{USERS_GROUP}:--x", str(d)])
    return needed
