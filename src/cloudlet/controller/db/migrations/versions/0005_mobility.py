"""mobility: instance epochs and client positions, departures, handoffs, app failover

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("client_latitude", sa.Float(), nullable=True))
        batch.add_column(sa.Column("client_longitude", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("follow_client", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("placement", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("moved_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(
            sa.Column("relocatable", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("failover_after_s", sa.Float(), nullable=True))
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("access_latency_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("local_api_url", sa.String(length=255), nullable=True))
    op.create_table(
        "instance_departures",
        sa.Column("instance_id", sa.String(length=36), primary_key=True),
        sa.Column(
            "site_id",
            sa.String(length=36),
            sa.ForeignKey("sites.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_instance_departures_revision", "instance_departures", ["revision"])
    op.create_table(
        "handoffs",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("project", sa.String(length=63), nullable=False),
        sa.Column("source_site_id", sa.String(length=36), nullable=False),
        sa.Column("dest_site_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("phases", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token", sa.String(length=64), nullable=True),
        sa.Column("address", sa.String(length=255), nullable=True),
        sa.Column("dest_revision", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_handoffs_instance_id", "handoffs", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_handoffs_instance_id", "handoffs")
    op.drop_table("handoffs")
    op.drop_index("ix_instance_departures_revision", "instance_departures")
    op.drop_table("instance_departures")
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("local_api_url")
        batch.drop_column("access_latency_ms")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("failover_after_s")
        batch.drop_column("relocatable")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("moved_at")
        batch.drop_column("placement")
        batch.drop_column("follow_client")
        batch.drop_column("client_longitude")
        batch.drop_column("client_latitude")
        batch.drop_column("epoch")
