"""Alembic environment of the datasets tables (run by ``aidc.db.upgrade``)."""

from aidc.data.store import metadata
from aidc.db import run_migrations

run_migrations(metadata, version_table="aidc_datasets_alembic_version")
