"""Alembic environment for the model registry tables (run by :func:`aidc.models.registry.upgrade`)."""

from alembic import context

from aidc.models.registry import metadata

VERSION_TABLE = "aidc_models_alembic_version"

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
