"""alarms: raised and cleared once per (alarm id, entity), history kept; restart counts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("alarm_id", sa.String(length=63), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("entity", sa.String(length=255), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=True),
        sa.Column("project", sa.String(length=63), nullable=True),
        sa.Column("instance_id", sa.String(length=36), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_alarms_site_id", "alarms", ["site_id"])
    op.create_index("ix_alarms_raised_at", "alarms", ["raised_at"])
    # One active alarm per (alarm id, entity): a second raise is a no-op.
    op.create_index(
        "ux_alarms_active",
        "alarms",
        ["alarm_id", "entity"],
        unique=True,
        sqlite_where=sa.text("cleared_at IS NULL"),
        postgresql_where=sa.text("cleared_at IS NULL"),
    )
    with op.batch_alter_table("sites") as batch:
        batch.add_column(
            sa.Column("availability_changed_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("crash_restarts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("crash_restarts")
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("availability_changed_at")
    op.drop_index("ux_alarms_active", table_name="alarms")
    op.drop_index("ix_alarms_raised_at", table_name="alarms")
    op.drop_index("ix_alarms_site_id", table_name="alarms")
    op.drop_table("alarms")
