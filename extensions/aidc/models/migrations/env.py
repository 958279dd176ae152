"""Alembic environment of the models tables (run by ``aidc.db.upgrade``)."""

from aidc.db import run_migrations
from aidc.models.registry import metadata

run_migrations(metadata, version_table="aidc_models_alembic_version")
