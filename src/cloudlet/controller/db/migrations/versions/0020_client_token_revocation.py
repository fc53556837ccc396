"""client_tokens and client_token_keys.retired_at: revoking a client token, retiring a key (#12)

Revision ID: 0020
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("client_token_keys") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "client_tokens",
        sa.Column("jti", sa.String(length=64), primary_key=True),
        sa.Column("project", sa.String(length=63), sa.ForeignKey("projects.name"), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("apps", sa.JSON(), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_client_tokens_project", "client_tokens", ["project"])
    op.create_index(
        "ix_client_tokens_revoked",
        "client_tokens",
        ["expires_at"],
        sqlite_where=sa.text("revoked_at IS NOT NULL"),
        postgresql_where=sa.text("revoked_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_client_tokens_revoked", table_name="client_tokens")
    op.drop_index("ix_client_tokens_project", table_name="client_tokens")
    op.drop_table("client_tokens")
    with op.batch_alter_table("client_token_keys") as batch:
        batch.drop_column("retired_at")
