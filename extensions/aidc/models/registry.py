"""The model registry: named models, immutable versions, aliases, deployments.

Metadata lives in the platform database (``<data-dir>/aidc.sqlite`` or ``AIDC_DB_URL``),
in tables of its own with their own alembic version table; artifacts live under an
fsspec URL (``<data-dir>/models/artifacts`` by default) in the platform's artifact store
(:mod:`aidc.artifacts`), one folder per version, published atomically and never written
again once registered. A version records where it came from (lineage:
the job, its output notebook and parameters) when it was registered from a job.

Visibility: a model belongs to its owner; ``visibility`` ``"group"`` opens it to the
owner's groups, ``"public"`` to every signed-in user (and, for inference, to callers
without a model token if the platform allows public read). Only the owner and admins
register new versions, move aliases and deploy.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from traitlets import List, Unicode, default
from traitlets.config import LoggingConfigurable

from ..artifacts import ArtifactStore
from ..catalog import MODELS, CatalogReads, aliases_table, check_visibility, entries_table
from ..db import make_engine, upgrade, utcnow
from ..errors import ConflictError, NotFoundError, UsageError

metadata = sa.MetaData()

models = entries_table("aidc_models", metadata)

versions = sa.Table(
    "aidc_model_versions", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("artifact_url", sa.Text, nullable=False),
    sa.Column("signature", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False, default=dict),
    sa.Column("tags", sa.JSON, nullable=False, default=dict),
    sa.Column("lineage", sa.JSON, nullable=False, default=dict),
    sa.Column("size", sa.Integer, nullable=False, default=0),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("created", sa.DateTime, nullable=False),
)

aliases = aliases_table(
    "aidc_model_aliases", metadata,
    sa.Column("previous", sa.Integer),  # where the alias pointed before its last move
)

deployments = sa.Table(
    "aidc_deployments", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("previous_version", sa.Integer),  # what rollback returns to
    sa.Column("canary_version", sa.Integer),
    sa.Column("canary_weight", sa.Float, nullable=False, default=0.0),
    sa.Column("replicas", sa.Integer, nullable=False, default=1),
    sa.Column("gpus", sa.Integer, nullable=False, default=0),
    sa.Column("max_batch_size", sa.Integer, nullable=False, default=32),
    sa.Column("max_queue_delay_ms", sa.Float, nullable=False, default=2.0),
    sa.Column("deployed_by", sa.String(255), nullable=False),
    sa.Column("updated", sa.DateTime, nullable=False),
)

check_name = MODELS.check_name
check_alias = MODELS.check_alias


class ModelRegistry(CatalogReads, LoggingConfigurable):
    """Reads and writes the registry tables (the models service is their only writer)."""

    entries_table, versions_table, aliases_table = models, versions, aliases

    db_url = Unicode(help="SQLAlchemy URL of the platform database (default: the ledger's).").tag(config=True)

    artifacts_url = Unicode(
        help="fsspec URL of the folder holding model artifacts (default `<data-dir>/models/artifacts`).",
    ).tag(config=True)

    data_dir = Unicode(help="The platform data directory.").tag(config=True)

    public_models = List(
        Unicode(),
        help="""Models open to public read: names or glob patterns (``["demo-*"]``).

        Anyone, without a token, may read these models' v2 metadata and readiness and
        call their inference endpoint (``/services/models/v2/models/NAME/...``); the
        registry API, deploying and every other model still need a hub token. The
        server's own ``/v2`` and ``/v2/health`` routes open too, as v2 clients probe
        them. Empty (the default): every route needs a token.""",
    ).tag(config=True)

    def is_public(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.public_models)

    @default("db_url")
    def _default_db_url(self) -> str:
        from ..gpu.platform import platform_db_url
        return platform_db_url(self.data_dir)

    @default("artifacts_url")
    def _default_artifacts(self) -> str:
        return str(Path(self.data_dir).resolve() / "models" / "artifacts")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.engine = make_engine(self.db_url)
        self.artifacts = ArtifactStore(url=self.artifacts_url, parent=self)
        upgrade(self.engine, Path(__file__).with_name("migrations"))
        # model rows and resolved references, read on every inference request; the
        # service is the registry's only writer, so its writes are what invalidate them
        self._cache: dict[tuple, Any] = {}

    @contextlib.contextmanager
    def _write(self):
        try:
            with self.engine.begin() as c:
                yield c
        finally:
            self._cache.clear()

    # -- models and versions ----------------------------------------------------------
    def model(self, name: str) -> dict:
        cached = self._cache.get(("model", name))
        if cached is None:
            with self.engine.connect() as c:
                row = c.execute(sa.select(models).where(models.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"no model {name!r}")
            cached = self._cache[("model", name)] = dict(row._mapping)
        return dict(cached)

    def find_models(self) -> list[dict]:
        return self.find_entries()

    def add_version(self, name: str, owner: str, groups: list[str], **values: Any) -> dict:
        """Create the model on its first version; the next version number, atomically."""
        check_name(name)
        if values.get("visibility") is not None:
            check_visibility(values["visibility"])
        with self._write() as c:
            row = c.execute(sa.select(models).where(models.c.name == name)).first()
            if row is None:
                c.execute(models.insert().values(name=name, owner=owner, groups=sorted(groups),
                                                 visibility=values.pop("visibility", None) or "private",
                                                 description=values.pop("description", None),
                                                 created=utcnow()))
            else:
                values.pop("visibility", None)
                values.pop("description", None)
            last = c.execute(sa.select(sa.func.max(versions.c.version)).where(versions.c.name == name)).scalar()
            number = (last or 0) + 1
            c.execute(versions.insert().values(name=name, version=number, created_by=owner,
                                               created=utcnow(), **values))
        return self.version(name, number)

    def version(self, name: str, ref: int | str = "latest") -> dict:
        """``ref``: a version number, ``latest``, or an alias."""
        number = self.resolve(name, ref)
        with self.engine.connect() as c:
            row = c.execute(sa.select(versions).where(versions.c.name == name,
                                                      versions.c.version == number)).first()
        if row is None:
            raise NotFoundError(f"model {name!r} has no version {ref}")
        return dict(row._mapping)

    def resolve(self, name: str, ref: int | str | None = "latest") -> int:
        """The version number ``ref`` (a number, ``latest``/None, or an alias) means now."""
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, str))):
            raise UsageError(f"a version is a number, an alias or latest, not {json.dumps(ref)}")
        key = ("resolve", name, ref)
        number = self._cache.get(key)
        if number is None:
            number = self._cache[key] = self._resolve(name, ref)
        return number

    def _resolve(self, name: str, ref: int | str | None) -> int:
        self.model(name)
        if ref is None or ref == "latest":
            with self.engine.connect() as c:
                last = c.execute(sa.select(sa.func.max(versions.c.version)).where(versions.c.name == name)).scalar()
            if last is None:
                raise NotFoundError(f"model {name!r} has no versions")
            return int(last)
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return int(ref)
        found = self.aliases(name).get(str(ref))
        if found is None:
            raise NotFoundError(f"model {name!r} has no version or alias {ref!r}")
        return found

    def set_alias(self, name: str, alias: str, version: int) -> dict:
        check_alias(alias)
        self.version(name, version)
        with self._write() as c:
            old = c.execute(sa.select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)).scalar()
            c.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias))
            c.execute(aliases.insert().values(name=name, alias=alias, version=version, previous=old,
                                              updated=utcnow()))
        return {"name": name, "alias": alias, "version": version, "previous": old}

    def delete_alias(self, name: str, alias: str) -> None:
        with self._write() as c:
            if not c.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias)).rowcount:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}")

    def set_visibility(self, name: str, visibility: str) -> None:
        check_visibility(visibility)
        with self._write() as c:
            c.execute(models.update().where(models.c.name == name).values(visibility=visibility))

    def set_artifact_url(self, name: str, version: int, url: str) -> None:
        with self._write() as c:
            c.execute(versions.update().where(versions.c.name == name, versions.c.version == version)
                      .values(artifact_url=url))

    # -- artifacts ------------------------------------------------------------------------
    def publish_artifact(self, name: str, version: int, folder: Path) -> str:
        """Publish the local ``folder`` as the artifact of ``version`` and record its URL.

        The folder is published whole or not at all (:func:`aidc.artifacts.put_dir`), so
        a version never points at a half-written artifact. The caller gives the folder
        up: a local store takes it as it is (a rename, however large the model).
        """
        url = self.artifacts.url_for(name, str(version))
        self.artifacts.put_dir(folder, url, move=True)
        self.set_artifact_url(name, version, url)
        return url

    # -- deployments --------------------------------------------------------------------
    def deployment(self, name: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(deployments).where(deployments.c.name == name)).first()
        return dict(row._mapping) if row else None

    def find_deployments(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(deployments).order_by(deployments.c.name))]

    def put_deployment(self, name: str, **values: Any) -> dict:
        values["updated"] = utcnow()
        with self._write() as c:
            if c.execute(sa.select(deployments.c.name).where(deployments.c.name == name)).first():
                c.execute(deployments.update().where(deployments.c.name == name).values(**values))
            else:
                c.execute(deployments.insert().values(name=name, **values))
        return self.deployment(name)

    def delete_deployment(self, name: str) -> None:
        with self._write() as c:
            if not c.execute(deployments.delete().where(deployments.c.name == name)).rowcount:
                raise ConflictError(f"model {name!r} is not deployed")
