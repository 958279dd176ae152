"""The datasets, dataset versions and dataset aliases tables.

Revision ID: 0001
Revises:
"""
from alembic import op

from aidc.data.store import aliases, datasets, versions

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = (datasets, versions, aliases)


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        table.drop(bind, checkfirst=True)
