"""The monitor's time-series table.

Revision ID: 0001
Revises:
"""
from alembic import op

from aidc.monitor.store import samples

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    samples.create(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    samples.drop(op.get_bind(), checkfirst=True)
