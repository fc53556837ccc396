"""checkpoints: periodic checkpoints of instances, what a failover restarts them from

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("project", sa.String(length=63), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("app_version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("pause_s", sa.Float(), nullable=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_checkpoints_instance_id", "checkpoints", ["instance_id"])
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("checkpoint_interval_s", sa.Float(), nullable=True))
    with op.batch_alter_table("handoffs") as batch:
        batch.add_column(sa.Column("checkpoint_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("handoffs") as batch:
        batch.drop_column("checkpoint_id")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("checkpoint_interval_s")
    op.drop_index("ix_checkpoints_instance_id", table_name="checkpoints")
    op.drop_table("checkpoints")
