"""What the model registry and the dataset catalog share: named entries that one user owns
and shares by visibility, each with immutable numbered versions and movable aliases.

Models (:mod:`aidc.models.registry`) and datasets (:mod:`aidc.data.store`) are named,
owned and shared by the same rules, so the columns that say who owns an entry and who may
see it, the shape of the alias table, and what a name and an alias may be are declared
here once; each store adds only what is its own (a model version's format and signature,
a dataset version's files). A Lab panel or dashboard that lists both reads the same fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .errors import UsageError
from .services.visibility import VISIBILITIES

#: a name appears in URLs and in the storage layout (``<root>/<name>/...``): no path in it
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def entries_table(table_name: str, metadata: sa.MetaData) -> sa.Table:
    """The table of a catalog's named entries: who owns each and who else may see it."""
    return sa.Table(
        table_name, metadata,
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, index=True),
        sa.Column("groups", sa.JSON, nullable=False, default=list),
        sa.Column("visibility", sa.String(16), nullable=False, default="private"),
        sa.Column("description", sa.Text),
        sa.Column("created", sa.DateTime, nullable=False),
    )


def aliases_table(table_name: str, metadata: sa.MetaData, *extra: sa.Column) -> sa.Table:
    """The table of a catalog's aliases: (entry, alias) -> version, plus ``extra`` columns."""
    return sa.Table(
        table_name, metadata,
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        *extra,
        sa.Column("updated", sa.DateTime, nullable=False),
    )


class CatalogReads:
    """The reads every catalog's store answers alike: its entries, an entry's versions (in
    order) and its aliases. A store sets the three tables and ``engine``."""

    engine: sa.Engine
    entries_table: sa.Table
    versions_table: sa.Table
    aliases_table: sa.Table

    def find_entries(self) -> list[dict]:
        t = self.entries_table
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(t).order_by(t.c.name))]

    def versions(self, name: str) -> list[dict]:
        t = self.versions_table
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(t).where(t.c.name == name).order_by(t.c.version))]

    def aliases(self, name: str) -> dict[str, int]:
        t = self.aliases_table
        with self.engine.connect() as c:
            return {r.alias: r.version for r in c.execute(
                sa.select(t).where(t.c.name == name).order_by(t.c.alias))}


@dataclass(frozen=True)
class Naming:
    """The naming rules of one catalog, with messages that name what it holds."""

    #: what an entry is called in messages: "model", "dataset"
    kind: str
    #: an alias to suggest in the message for an invalid one
    alias_example: str

    def check_name(self, name: Any) -> str:
        """``name`` if it is a valid entry name: no path components, nothing hidden."""
        if not isinstance(name, str) or not NAME.match(name) or ".." in name:
            raise UsageError(f"invalid {self.kind} name {name!r}: use 1-128 lowercase letters, "
                             "digits, '-', '_' or '.', starting with a letter or digit "
                             "(no '/' or '..')")
        return name

    def check_alias(self, alias: Any) -> str:
        if (not isinstance(alias, str) or not ALIAS.match(alias) or alias == "latest"
                or ".." in alias):
            raise UsageError(f"invalid alias {alias!r}: use a lowercase word such as "
                             f"{self.alias_example!r} ('latest' is reserved: it always means "
                             "the newest version)")
        return alias


def check_visibility(visibility: Any) -> str:
    if not isinstance(visibility, str) or visibility not in VISIBILITIES:
        raise UsageError(f"invalid visibility {visibility!r}: use one of {', '.join(VISIBILITIES)} "
                         "(private: you and admins; group: also your groups; public: everyone "
                         "signed in)")
    return visibility


MODELS = Naming("model", "production")
DATASETS = Naming("dataset", "train-2026-12")
