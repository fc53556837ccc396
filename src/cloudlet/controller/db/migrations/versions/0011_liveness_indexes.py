"""sites: indexes for the liveness pass, so it reads the sites it judges, not all (#10)

The pass runs every few seconds; on PostgreSQL at 5,000 sites its scans of the whole
sites table (offline verdicts, the next deadline, sync lag) were a third of the
database's time.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BEHIND = "applied_revision < revision"


def upgrade() -> None:
    op.create_index("ix_sites_availability_last_seen", "sites", ["availability", "last_seen"])
    op.create_index(
        "ix_sites_behind",
        "sites",
        ["revision_changed_at"],
        sqlite_where=sa.text(BEHIND),
        postgresql_where=sa.text(BEHIND),
    )


def downgrade() -> None:
    op.drop_index("ix_sites_behind", table_name="sites")
    op.drop_index("ix_sites_availability_last_seen", table_name="sites")
