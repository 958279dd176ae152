"""Secrets users keep for their jobs: an API token, a password, a key.

A secret is its owner's alone (another user's secret of the same name is a different
secret, and theirs is a 404 to anyone else). Its value is written once, through the API
(``aidc secrets set NAME`` reads it from standard input), and never read back by a user:
the jobs service reads it when it starts an attempt of a job that names it, hands it to
the job's kernel as the environment variable of the same name, and records the read in
the audit log with the job's id. A job's record keeps the names only.

Values are files below :attr:`SecretStore.root` (``<data-dir>/jobs/secrets/<owner>/<NAME>``,
a folder only the platform's account can enter), encrypted at rest like datasets and
model artifacts (:func:`aidc.artifacts.encrypt_under`, the file's path as its identity,
so a value copied over another user's file does not decrypt there; ``aidc keys rotate``
re-wraps them). Names and times are rows of the jobs database.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from traitlets import Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from .. import artifacts
from ..db import iso, utcnow
from ..errors import ConflictError, NotFoundError, UsageError
from ..paths import DataDir
from .store import JobStore, job_secrets

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

#: variables the platform sets in a job's kernel itself (aidc.jobs.execute.kernel_env), and
#: prefixes of those that change how programs start or where they load code from
RESERVED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "SHELL", "MPLBACKEND", "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
})
RESERVED_PREFIXES = ("AIDC_", "JUPYTER", "JPY_", "LD_", "PYTHON")


def check_name(name) -> str:
    """``name`` if it may name a secret (and so an environment variable), else a UsageError."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(f"invalid secret name {name!r}: a secret is named like an environment "
                         "variable, letters, digits and _ (not starting with a digit), at most "
                         "128 characters")
    if name.upper() in RESERVED or name.upper().startswith(RESERVED_PREFIXES):
        raise UsageError(f"{name!r} cannot name a secret: the platform sets that variable in jobs "
                         "itself "
                         f"(reserved: {', '.join(sorted(RESERVED))} and names starting with "
                         f"{', '.join(RESERVED_PREFIXES)})")
    return name


def secret_view(row: dict) -> dict:
    """A secret as the API shows it: never its value."""
    return {"name": row["name"], "created": iso(row["created"]), "updated": iso(row["updated"])}


class SecretStore(LoggingConfigurable):
    """Reads and writes users' secrets (rows in the jobs database, values in files)."""

    root = Unicode(
        help="""Local folder of the encrypted secret values. Default: `<data-dir>/jobs/secrets`.
        Only the platform's account may read it; `aidc keys rotate` re-wraps what is in it.""",
    ).tag(config=True)

    data_dir = Unicode(help="The platform data directory.").tag(config=True)

    min_value_length = Integer(
        8,
        help="""The fewest characters a secret's value may have. Output of jobs is searched for
        the values of their secrets and each match replaced: a very short value would match
        ordinary text (and tell which text it is).""",
    ).tag(config=True)

    max_value_bytes = Integer(
        16 * 1024,
        help="""The largest a secret's value may be, in bytes of UTF-8 (an API token, a password,
        a private key; not a file: put those in a dataset).""",
    ).tag(config=True)

    max_per_user = Integer(100, help="How many secrets one user may keep.").tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(DataDir.from_arg(None).root)

    @default("root")
    def _default_root(self) -> str:
        return str(Path(self.data_dir).resolve() / "jobs" / "secrets")

    def __init__(self, store: JobStore, **kwargs):
        super().__init__(**kwargs)
        self.engine = store.engine
        Path(self.root).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def encrypt_at_rest(self, config=None) -> None:
        """Encrypt values from now on under the platform's key ring, as datasets and model
        artifacts are (``aidc keys rotate`` re-wraps them); nothing when encryption is off."""
        from ..security.keys import KeyRing

        keys = KeyRing.for_data_dir(self.data_dir, config)
        if keys is not None:
            keys.check(create=True)
            artifacts.encrypt_under(self.root, keys)

    def _url(self, owner: str, name: str) -> str:
        return f"{self.root.rstrip('/')}/{quote(owner, safe='')}/{name}"

    @staticmethod
    def _where(owner: str, name: str):
        return sa.and_(job_secrets.c.owner == owner, job_secrets.c.name == name)

    def _row(self, owner: str, name: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(job_secrets).where(self._where(owner, name))).first()
        return dict(row._mapping) if row else None

    def get(self, owner: str, name: str) -> dict:
        """The secret's row (name and times); NotFoundError when ``owner`` has none of that name."""
        row = self._row(owner, check_name(name))
        if row is None:
            raise NotFoundError(f"you have no secret {name!r} (`aidc secrets list` shows yours)")
        return row

    def find(self, owner: str) -> list[dict]:
        q = sa.select(job_secrets).where(job_secrets.c.owner == owner).order_by(job_secrets.c.name)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def put(self, owner: str, name: str, value) -> tuple[dict, bool]:
        """Store ``value`` as ``owner``'s secret ``name`` (replacing it); the row and
        whether it is new."""
        check_name(name)
        if not isinstance(value, str):
            raise UsageError('the body must be {"value": "..."}: the secret\'s value as a string')
        size = len(value.encode("utf-8", "surrogatepass"))
        if "\0" in value:
            raise UsageError("a secret's value cannot contain NUL characters (it becomes an "
                             "environment variable)")
        if len(value) < self.min_value_length:
            raise UsageError(f"a secret's value must have at least {self.min_value_length} "
                             "characters (shorter ones could not be told apart from ordinary "
                             "output to redact them)")
        if size > self.max_value_bytes:
            raise UsageError(f"a secret's value may have at most {self.max_value_bytes} bytes; "
                             f"it has {size}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("a secret's value must be text (valid UTF-8)") from None
        existing = self._row(owner, name)
        if existing is None and len(self.find(owner)) >= self.max_per_user:
            raise ConflictError(f"you keep {self.max_per_user} secrets already, the most one user "
                                "may; delete one first (`aidc secrets delete NAME`)")
        # encrypted, as below the root (SecretStore.encrypt_at_rest)
        artifacts.write_bytes(self._url(owner, name), value.encode("utf-8"))
        now = utcnow()
        with self.engine.begin() as c:
            if existing is None:
                c.execute(job_secrets.insert().values(owner=owner, name=name, created=now,
                                                      updated=now))
            else:
                c.execute(job_secrets.update().where(self._where(owner, name)).values(updated=now))
        return self.get(owner, name), existing is None

    def delete(self, owner: str, name: str) -> None:
        self.get(owner, name)
        with self.engine.begin() as c:
            c.execute(job_secrets.delete().where(self._where(owner, name)))
        artifacts.delete(self._url(owner, name))

    def remove_owner(self, owner: str) -> list[str]:
        """Remove every secret of ``owner`` (their user was removed): the rows, then the
        whole folder of values (also a value a crash left without its row). Returns the names
        that had rows, so a new user of the same name starts with none."""
        names = [row["name"] for row in self.find(owner)]
        with self.engine.begin() as c:
            c.execute(job_secrets.delete().where(job_secrets.c.owner == owner))
        artifacts.delete(f"{self.root.rstrip('/')}/{quote(owner, safe='')}")
        return names

    def check_names(self, owner: str, names) -> list[str]:
        """A job's ``secrets`` field: a list of names of ``owner``'s secrets, each once.
        UsageError naming the secrets that do not exist."""
        if names is None:
            return []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError('secrets must be a list of names of your secrets, e.g. ["HF_TOKEN"]')
        unique = list(dict.fromkeys(check_name(n) for n in names))
        have = {row["name"] for row in self.find(owner)}
        missing = [n for n in unique if n not in have]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise UsageError(f"no secret{plural} {', '.join(map(repr, missing))}: create it first "
                             "with `aidc secrets set NAME` (the value on standard input)")
        return unique

    def value(self, owner: str, name: str) -> str:
        """The value of ``owner``'s secret ``name`` (for a job of theirs that names it)."""
        if self._row(owner, name) is None:
            raise NotFoundError(f"the secret {name!r} no longer exists (deleted after the job was "
                                "submitted)")
        data = artifacts.read_bytes(self._url(owner, name))
        if data is None:
            self.log.error("aidc jobs: the value of %s's secret %s is missing from %s", owner, name,
                           self.root)
            raise NotFoundError(f"the value of the secret {name!r} is missing (the platform's "
                                "administrator was told); set it again")
        return data.decode("utf-8")
