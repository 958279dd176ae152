"""Alembic environment of the monitor's tables (run by ``aidc.db.upgrade``)."""

from aidc.db import run_migrations
from aidc.monitor.store import metadata

run_migrations(metadata, version_table="aidc_monitor_alembic_version")
