"""usage_records, artifact_fetches, price_plans: metering and prices (#12)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("site_id", sa.String(length=36), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sa.Column("piece", sa.Integer(), primary_key=True),
        sa.Column("project", sa.String(length=63), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=True),
        sa.Column("start_at", _WHEN, nullable=False),
        sa.Column("end_at", _WHEN, nullable=False),
        sa.Column("ms", sa.BigInteger(), nullable=False),
        sa.Column("vcpus", sa.Float(), nullable=False),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", _WHEN, nullable=False),
        sa.Column("received_at", _WHEN, nullable=False),
    )
    op.create_index("ix_usage_records_project_start", "usage_records", ["project", "start_at"])
    op.create_table(
        "artifact_fetches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("project", sa.String(length=63), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("artifact", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("since", _WHEN, nullable=False),
        sa.Column("at", _WHEN, nullable=False),
    )
    op.create_index("ix_artifact_fetches_project_at", "artifact_fetches", ["project", "at"])
    op.create_table(
        "price_plans",
        sa.Column("project", sa.String(length=63), primary_key=True),
        sa.Column("app", sa.String(length=63), primary_key=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("free", sa.Boolean(), nullable=False),
        sa.Column("instance_hour", sa.String(length=40), nullable=False),
        sa.Column("vcpu_hour", sa.String(length=40), nullable=False),
        sa.Column("gib_hour", sa.String(length=40), nullable=False),
        sa.Column("gib_fetched", sa.String(length=40), nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("price_plans")
    op.drop_index("ix_artifact_fetches_project_at", table_name="artifact_fetches")
    op.drop_table("artifact_fetches")
    op.drop_index("ix_usage_records_project_start", table_name="usage_records")
    op.drop_table("usage_records")
