"""instances: an index in their list order, so each page is read by key (#10)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_instances_list_order", "instances", ["created_at", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_instances_list_order", table_name="instances")
