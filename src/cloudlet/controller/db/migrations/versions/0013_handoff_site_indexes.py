"""handoffs: indexes by source and destination site (#9, #10)

Every desired-state document asks for the open handoffs and the failover restores of
its site; without these, each read the whole handoffs table, which keeps every move
ever made.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_handoffs_source_site_id", "handoffs", ["source_site_id"])
    op.create_index("ix_handoffs_dest_site_id", "handoffs", ["dest_site_id"])


def downgrade() -> None:
    op.drop_index("ix_handoffs_dest_site_id", table_name="handoffs")
    op.drop_index("ix_handoffs_source_site_id", table_name="handoffs")
