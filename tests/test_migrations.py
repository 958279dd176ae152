"""Every store's alembic migrations, on SQLite and on a real PostgreSQL server (no platform).

A store is a ``migrations`` folder of the ``aidc`` package (jobs, models, and every later
one, found by the glob below). Each must build, from an empty database and from a
database at its previous revision, exactly the tables its code defines, and record its
revision in a version table of its own, so that all stores share one database.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

import aidc
from aidc import db
from aidc.gpu.ledger import GPULedger

STORES = sorted(Path(aidc.__file__).parent.glob("*/migrations"))
_names = itertools.count()


def version_table(migrations: Path) -> str:
    """The version table the store's env.py names (``aidc_jobs_alembic_version``)."""
    text = (migrations / "env.py").read_text()
    return text.split('version_table="', 1)[1].split('"', 1)[0]


def revisions(migrations: Path) -> list[str]:
    """The store's revisions, oldest first."""
    script = ScriptDirectory(str(migrations))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """An empty database, on SQLite (a file) or on the session's PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"migrations{next(_names)}")
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


def recorded_revision(engine, migrations: Path) -> str:
    with engine.connect() as c:
        return c.execute(sa.text(f"SELECT version_num FROM {version_table(migrations)}")).scalar_one()


def test_the_stores_are_found():
    assert {p.parent.name for p in STORES} >= {"jobs", "models"}
    assert len({version_table(m) for m in STORES}) == len(STORES)  # one version table each


@pytest.mark.parametrize("migrations", STORES, ids=lambda p: p.parent.name)
def test_upgrade_of_an_empty_database_builds_the_tables_the_code_defines(engine, migrations):
    db.upgrade(engine, migrations)
    db.check(engine, migrations)  # raises on any difference from the table definitions
    assert recorded_revision(engine, migrations) == revisions(migrations)[-1]
    db.upgrade(engine, migrations)  # a second start changes nothing
    assert recorded_revision(engine, migrations) == revisions(migrations)[-1]


@pytest.mark.parametrize("migrations", STORES, ids=lambda p: p.parent.name)
def test_upgrade_from_the_previous_revision_keeps_rows(engine, migrations):
    history = revisions(migrations)
    previous = history[-2] if len(history) > 1 else history[0]
    db.upgrade(engine, migrations, previous)
    assert recorded_revision(engine, migrations) == previous
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE aidc_migration_probe (id INTEGER PRIMARY KEY)"))
        c.execute(sa.text("INSERT INTO aidc_migration_probe (id) VALUES (7)"))
    before = sa.inspect(engine).get_table_names()
    db.upgrade(engine, migrations)
    db.check(engine, migrations)
    assert recorded_revision(engine, migrations) == history[-1]
    assert set(before) <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as c:  # an upgrade touches no table but its store's
        assert c.execute(sa.text("SELECT id FROM aidc_migration_probe")).scalar_one() == 7


def test_every_store_and_the_hub_share_one_database(engine):
    """As on a platform with ``--db-url``: JupyterHub's tables, the GPU ledger and every
    store in one database, each store still at its newest revision and intact."""
    from jupyterhub import orm

    url = engine.url.render_as_string(hide_password=False)
    orm.new_session_factory(url)().close()  # JupyterHub's tables and its alembic_version
    GPULedger(db_url=url).engine.dispose()
    for migrations in STORES:
        db.upgrade(engine, migrations)
    for migrations in STORES:
        db.check(engine, migrations)
        assert recorded_revision(engine, migrations) == revisions(migrations)[-1]
    tables = set(sa.inspect(engine).get_table_names())
    assert {"users", "alembic_version", "gpu_units", "gpu_claims", "gpu_node_free"} <= tables
