"""Secrets for jobs: the ``aidc_job_secrets`` table (names and times; the values are
encrypted files) and the names of those a job gets (``aidc_jobs.secrets``).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from aidc.jobs.store import job_secrets

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    job_secrets.create(bind, checkfirst=True)
    # 0001 builds aidc_jobs from the code's definition: a new database has the column already
    if "secrets" not in {c["name"] for c in sa.inspect(bind).get_columns("aidc_jobs")}:
        with op.batch_alter_table("aidc_jobs") as batch:
            batch.add_column(sa.Column("secrets", sa.JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("aidc_jobs") as batch:
        batch.drop_column("secrets")
    job_secrets.drop(op.get_bind(), checkfirst=True)
