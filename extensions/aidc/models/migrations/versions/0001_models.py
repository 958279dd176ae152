"""The models, versions, aliases and deployments tables.

Revision ID: 0001
Revises:
"""
from alembic import op

from aidc.models.registry import aliases, deployments, models, versions

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = (models, versions, aliases, deployments)


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        table.drop(bind, checkfirst=True)
