"""Alembic environment for the jobs tables (run by :func:`aidc.jobs.store.upgrade`)."""

from alembic import context

from aidc.jobs.store import metadata

VERSION_TABLE = "aidc_jobs_alembic_version"

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
