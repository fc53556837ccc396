"""resumable overlays: the base VM's RAM an overlay was made against, and its device state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("overlays") as batch:
        batch.add_column(sa.Column("memory_base_digest", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("resumable", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_foreign_key(
            "fk_overlays_memory_base_digest_images", "images", ["memory_base_digest"], ["digest"]
        )
        batch.create_index("ix_overlays_memory_base_digest", ["memory_base_digest"])


def downgrade() -> None:
    with op.batch_alter_table("overlays") as batch:
        batch.drop_index("ix_overlays_memory_base_digest")
        batch.drop_constraint("fk_overlays_memory_base_digest_images", type_="foreignkey")
        batch.drop_column("resumable")
        batch.drop_column("memory_base_digest")
