"""decommission intent: a draining site is decommissioned once empty only if asked to be

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(
            sa.Column("decommission_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
    # Sites draining before this migration were all being decommissioned.
    op.execute("UPDATE sites SET decommission_requested_at = created_at WHERE state = 'draining'")


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("decommission_requested_at")
