"""The jobs, job events, sweeps and schedules tables.

Revision ID: 0001
Revises:
"""
from alembic import op

from aidc.jobs.store import events, jobs, schedules, sweeps

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = (jobs, events, sweeps, schedules)


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        table.drop(bind, checkfirst=True)
