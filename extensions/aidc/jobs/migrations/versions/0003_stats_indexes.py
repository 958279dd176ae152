"""Indexes on the jobs' created and started times and on status with finished time, which
``/api/stats`` counts and reads by (``JobStore.stats_between``), so that its aggregates
read the range asked for instead of every job.

Revision ID: 0003
Revises: 0002
"""
from alembic import op

from aidc.jobs.store import jobs

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAMES = ("ix_aidc_jobs_created", "ix_aidc_jobs_started", "ix_aidc_jobs_status_finished")


def upgrade() -> None:
    # 0001 builds aidc_jobs from the code's definition: a new database has them already
    bind = op.get_bind()
    for index in jobs.indexes:
        if index.name in NAMES:
            index.create(bind, checkfirst=True)


def downgrade() -> None:
    for name in NAMES:
        op.drop_index(name, table_name="aidc_jobs")
