"""project_quotas: per-project limits on instances, vCPUs, memory, overlay and image bytes (#12)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_quotas",
        sa.Column(
            "project",
            sa.String(length=63),
            sa.ForeignKey("projects.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("instances", sa.Integer(), nullable=True),
        sa.Column("vcpus", sa.Float(), nullable=True),
        sa.Column("memory_mib", sa.BigInteger(), nullable=True),
        sa.Column("overlay_bytes", sa.BigInteger(), nullable=True),
        sa.Column("image_bytes", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("project_quotas")
