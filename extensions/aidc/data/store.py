"""The datasets' metadata: named datasets, their immutable versions and aliases.

Tables of their own in the platform database (the one ``platform_db_url`` names, as the
model registry's), with their own alembic version table. A version row is written
only once all its files are stored and their hashes checked (see
:mod:`aidc.data.uploads`): a row is what makes a version exist, so a crash or an
interrupted upload leaves no half version, only files that :meth:`DatasetStore.locations`
lets the service clean away.

Only the data service writes here.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from ..catalog import CatalogReads, aliases_table, entries_table
from ..db import make_engine, upgrade, utcnow
from ..errors import ConflictError, NotFoundError
from ..paths import data_dir as platform_data_dir
from .names import check_alias, check_name, check_visibility, parse_version

#: tries to publish a version while concurrent uploads of the same dataset publish theirs
PUBLISH_ATTEMPTS = 8

metadata = sa.MetaData()

datasets = entries_table("aidc_datasets", metadata)

versions = sa.Table(
    "aidc_dataset_versions", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("files", sa.JSON, nullable=False),  # [{"name", "size", "sha256"}], sorted by name
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("location", sa.Text, nullable=False),  # the version's folder under DataStorage.url
    sa.Column("description", sa.Text),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("created", sa.DateTime, nullable=False),
)

aliases = aliases_table("aidc_dataset_aliases", metadata)


def version_hash(files: list[dict]) -> str:
    """The content hash of a version: sha256 over its files' names and content hashes.

    Two uploads of the same files (in any order) have the same hash, so a job's lineage
    names data by content as well as by number.
    """
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["name"]):
        h.update(f"{f['name']}\0{f['sha256']}\n".encode())
    return h.hexdigest()


class DatasetStore(CatalogReads, LoggingConfigurable):
    """Reads and writes the datasets tables."""

    entries_table, versions_table, aliases_table = datasets, versions, aliases

    db_url = Unicode(help="SQLAlchemy URL of the platform database (default: the ledger's).").tag(config=True)

    data_dir = Unicode(help="The platform data directory.").tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(platform_data_dir().root)

    @default("db_url")
    def _default_db_url(self) -> str:
        from ..gpu.platform import platform_db_url
        return platform_db_url(self.data_dir)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.engine = make_engine(self.db_url)
        upgrade(self.engine, Path(__file__).with_name("migrations"))

    # -- datasets -------------------------------------------------------------------
    def dataset(self, name: str) -> dict:
        with self.engine.connect() as c:
            row = c.execute(sa.select(datasets).where(datasets.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"no dataset {name!r}")
        return dict(row._mapping)

    def find_datasets(self) -> list[dict]:
        return self.find_entries()

    def used_bytes(self, owner: str) -> int:
        """What ``owner``'s datasets hold, all versions together (what the quota counts)."""
        q = (sa.select(sa.func.coalesce(sa.func.sum(versions.c.size), 0))
             .select_from(versions.join(datasets, versions.c.name == datasets.c.name))
             .where(datasets.c.owner == owner))
        with self.engine.connect() as c:
            return int(c.execute(q).scalar() or 0)

    def locations(self) -> set[str]:
        """Every published version's folder (what the storage must keep)."""
        with self.engine.connect() as c:
            return {r.location for r in c.execute(sa.select(versions.c.location))}

    def add_version(self, name: str, owner: str, groups: list[str], *, files: list[dict],
                    location: str, visibility: str | None = None, description: str | None = None,
                    alias: str | None = None, admin: bool = False) -> dict:
        """Publish a version whose files are stored: the dataset on its first version, the
        next number atomically, and ``alias`` pointed at it, in one transaction.

        A dataset of another owner takes the version only from an ``admin``: someone who
        found the name free may have been overtaken by another user's first version."""
        check_name(name)
        if visibility is not None:
            check_visibility(visibility)
        if alias is not None:
            check_alias(alias)
        files = sorted(files, key=lambda f: f["name"])
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                number = self._publish(name, owner, groups, files, location, visibility,
                                       description, alias, admin)
                break
            except (sa.exc.IntegrityError, sa.exc.OperationalError):
                # another upload of the same name published first (the dataset row or the
                # version number is taken, or SQLite's snapshot is stale): count again
                if attempt == PUBLISH_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return self.version(name, number)

    def _publish(self, name: str, owner: str, groups: list[str], files: list[dict], location: str,
                 visibility: str | None, description: str | None, alias: str | None,
                 admin: bool) -> int:
        with self.engine.begin() as c:
            row = c.execute(sa.select(datasets).where(datasets.c.name == name)).first()
            if row is not None and row.owner != owner and not admin:
                raise ConflictError(f"dataset {name!r} was just created by someone else; "
                                    "upload under another name")
            if row is None:
                c.execute(datasets.insert().values(
                    name=name, owner=owner, groups=sorted(groups), visibility=visibility or "private",
                    description=description or "", created=utcnow()))
            else:
                changes: dict[str, Any] = {}
                if visibility is not None:
                    changes["visibility"] = visibility
                if description:
                    changes["description"] = description
                if changes:
                    c.execute(datasets.update().where(datasets.c.name == name).values(**changes))
            last = c.execute(sa.select(sa.func.max(versions.c.version)).where(versions.c.name == name)).scalar()
            number = (last or 0) + 1
            c.execute(versions.insert().values(
                name=name, version=number, files=files, size=sum(int(f["size"]) for f in files),
                sha256=version_hash(files), location=location, description=description or "",
                created_by=owner, created=utcnow()))
            if alias is not None:
                self._point(c, name, alias, number)
        return number

    def version(self, name: str, ref: int | str | None = None) -> dict:
        """``ref``: a version number, an alias, or None/``latest``."""
        number = self.resolve(name, ref)
        with self.engine.connect() as c:
            row = c.execute(sa.select(versions).where(versions.c.name == name,
                                                      versions.c.version == number)).first()
        if row is None:
            raise NotFoundError(f"dataset {name!r} has no version {ref}")
        return dict(row._mapping)

    def resolve(self, name: str, ref: int | str | None = None) -> int:
        """The version number ``ref`` means now."""
        self.dataset(name)
        ref = parse_version(ref)
        if ref is None:
            with self.engine.connect() as c:
                last = c.execute(sa.select(sa.func.max(versions.c.version))
                                 .where(versions.c.name == name)).scalar()
            if last is None:
                raise NotFoundError(f"dataset {name!r} has no versions")
            return int(last)
        if isinstance(ref, int):
            return ref
        found = self.aliases(name).get(ref)
        if found is None:
            raise NotFoundError(f"dataset {name!r} has no version or alias {ref!r}")
        return found

    def set_alias(self, name: str, alias: str, version: int | str) -> dict:
        check_alias(alias)
        number = self.version(name, version)["version"]
        with self.engine.begin() as c:
            self._point(c, name, alias, number)
        return {"name": name, "alias": alias, "version": number}

    @staticmethod
    def _point(c, name: str, alias: str, number: int) -> None:
        c.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias))
        c.execute(aliases.insert().values(name=name, alias=alias, version=number, updated=utcnow()))
