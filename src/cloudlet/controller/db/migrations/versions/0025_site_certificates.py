"""site_certificates: the certificates the controller's CA issued to sites (#12)

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "site_certificates",
        sa.Column("serial", sa.String(length=40), primary_key=True),
        sa.Column(
            "site_id",
            sa.String(length=36),
            sa.ForeignKey("sites.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_site_certificates_site_id", "site_certificates", ["site_id"])
    op.create_index(
        "ix_site_certificates_revoked",
        "site_certificates",
        ["not_after"],
        sqlite_where=sa.text("revoked_at IS NOT NULL"),
        postgresql_where=sa.text("revoked_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_site_certificates_revoked", table_name="site_certificates")
    op.drop_index("ix_site_certificates_site_id", table_name="site_certificates")
    op.drop_table("site_certificates")
