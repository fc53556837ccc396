"""publisher_keys, artifact_signatures and signing_policies: signed images and overlays (#12)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "publisher_keys",
        sa.Column("kid", sa.String(length=64), primary_key=True),
        sa.Column("project", sa.String(length=63), sa.ForeignKey("projects.name"), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("project", "name"),
    )
    op.create_table(
        "artifact_signatures",
        sa.Column("kind", sa.String(length=16), primary_key=True),
        sa.Column("digest", sa.String(length=64), primary_key=True),
        sa.Column(
            "kid", sa.String(length=64), sa.ForeignKey("publisher_keys.kid"), primary_key=True
        ),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_artifact_signatures_kid", "artifact_signatures", ["kid"])
    op.create_table(
        "signing_policies",
        sa.Column(
            "project", sa.String(length=63), sa.ForeignKey("projects.name"), primary_key=True
        ),
        sa.Column("require_signatures", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("signing_policies")
    op.drop_index("ix_artifact_signatures_kid", table_name="artifact_signatures")
    op.drop_table("artifact_signatures")
    op.drop_table("publisher_keys")
