"""Alembic environment of the GPU ledger's tables (run by ``aidc.db.upgrade``)."""

from aidc.db import run_migrations
from aidc.gpu.ledger import metadata

run_migrations(metadata, version_table="aidc_ledger_alembic_version")
