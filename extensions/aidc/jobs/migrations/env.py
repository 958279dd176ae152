"""Alembic environment of the jobs tables (run by ``aidc.db.upgrade``)."""

from aidc.db import run_migrations
from aidc.jobs.store import metadata

run_migrations(metadata, version_table="aidc_jobs_alembic_version")
