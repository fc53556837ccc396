"""sites: an index of the sites behind their desired state, for the sync-lag pass (#10)

The liveness pass runs every few seconds and looked for lagging sites by reading the
whole sites table. The index names only sites behind their revision (few, in a
steady fleet). Its columns change only when a revision is made or applied, so the
heartbeat's UPDATE (last_seen, gauges) stays a HOT update on PostgreSQL: an index on
last_seen, tried first, made every heartbeat write every index of the table and
slowed a 10,000-site fleet to a third.

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
    op.create_index(
        "ix_sites_behind",
        "sites",
        ["revision_changed_at"],
        sqlite_where=sa.text(BEHIND),
        postgresql_where=sa.text(BEHIND),
    )


def downgrade() -> None:
    op.drop_index("ix_sites_behind", table_name="sites")
