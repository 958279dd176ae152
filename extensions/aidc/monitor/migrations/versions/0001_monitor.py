"""The monitor's first time-series table (one row per point, labels in every row; replaced
by ``monitor_series`` and ``monitor_points`` in 0002).

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

samples = sa.Table(
    "monitor_samples", sa.MetaData(),
    sa.Column("tier", sa.SmallInteger, primary_key=True),
    sa.Column("metric", sa.String(100), primary_key=True),
    sa.Column("labels", sa.String(1000), primary_key=True),
    sa.Column("t", sa.Float, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_monitor_samples_time", "tier", "t"),
    sa.Index("ix_monitor_samples_read", "tier", "metric", "t"),
)


def upgrade() -> None:
    samples.create(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    samples.drop(op.get_bind(), checkfirst=True)
