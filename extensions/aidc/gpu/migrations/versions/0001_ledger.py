"""The GPU ledger's tables: units, claims, free counts per node, ended holdings, its lock.

Revision ID: 0001
Revises:

A ledger made before its tables had migrations (by ``create_all``) is taken over as it
is: its tables are kept, and the indexes an older aidc did not make are added.
"""
from alembic import op

from aidc.gpu.ledger import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for table in metadata.sorted_tables:
        table.create(bind, checkfirst=True)
        for index in table.indexes:
            index.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(metadata.sorted_tables):
        table.drop(bind, checkfirst=True)
