"""Databases of the platform services: one engine recipe, one migration runner, one time format.

Which database a store uses is decided in one place, :meth:`aidc.paths.DataDir.db_url`:
SQLite files in the data directory by default, or the one database chosen with
``aidc up --db-url`` / ``c.Platform.db_url`` (PostgreSQL) shared by the hub, the GPU
ledger, the jobs store, the model registry and every later store.

The jobs store and the model registry keep their tables in SQLAlchemy Core, SQLite by
default (WAL, so readers never wait for a writer) and any SQLAlchemy URL otherwise, each
with its alembic migrations and a version table of its own, so several of them can share
one database. The GPU ledger has its own engine (see :func:`aidc.gpu.ledger.make_engine`:
it also moves WAL checkpoints out of its decisions).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; on SQLite: WAL, a 30 s busy wait, the folder created."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, json_serializer=_dumps, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30}, json_serializer=_dumps)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return engine


def redacted(url: str) -> str:
    """``url`` safe to print or log: its password (if any) as ``***``."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a database URL)"


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _alembic_config(migrations: Path, connection):
    from alembic.config import Config

    # stdout given now: alembic's default is the sys.stdout of when alembic.config was first
    # imported, which a test's captured output (closed since) may have been
    cfg = Config(stdout=sys.stdout)
    cfg.set_main_option("script_location", str(migrations))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: sa.Engine, migrations: Path, revision: str = "head") -> None:
    """Bring the tables of the alembic folder ``migrations`` to ``revision`` (the newest)."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(migrations, connection), revision)


def check(engine: sa.Engine, migrations: Path) -> None:
    """Raise if the store's tables in the database differ from its table definitions in the
    code (alembic's autogenerate comparison; other stores' tables are not looked at)."""
    from alembic import command

    with engine.connect() as connection:
        command.check(_alembic_config(migrations, connection))


def run_migrations(metadata: sa.MetaData, version_table: str) -> None:
    """The body of a migrations folder's ``env.py`` (called by alembic inside :func:`upgrade`)."""
    from alembic import context

    def own_tables(name, type_, _parent) -> bool:
        # the platform database holds every store's tables: compare this store's only
        return type_ != "table" or name in metadata.tables

    context.configure(
        connection=context.config.attributes["connection"],
        target_metadata=metadata,
        version_table=version_table,
        include_name=own_tables,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


def utcnow() -> dt.datetime:
    """Now, as the naive UTC time the tables store."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def iso(value: dt.datetime | None) -> str | None:
    """A stored time as ISO 8601 UTC (``...Z``) for the APIs."""
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z") if value else None
