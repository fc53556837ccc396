"""rollouts: app versions, agent packages and a site's agent target, rollouts in waves (#11)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("app_version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("applied_revision", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("agent_target", sa.String(length=64), nullable=True))
    op.create_table(
        "app_versions",
        sa.Column(
            "app_id",
            sa.String(length=36),
            sa.ForeignKey("apps.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("components", sa.JSON(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
    )
    # Every existing app's definition is its version 1.
    op.execute(
        "INSERT INTO app_versions (app_id, version, components, resources, created_at) "
        "SELECT id, 1, components, resources, created_at FROM apps"
    )
    op.create_table(
        "agent_packages",
        sa.Column("version", sa.String(length=64), primary_key=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=True),
        sa.Column("project", sa.String(length=63), nullable=False),
        sa.Column("from_version", sa.String(length=64), nullable=True),
        sa.Column("to_version", sa.String(length=64), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("max_parallel", sa.Integer(), nullable=False),
        sa.Column("canary", sa.Integer(), nullable=False),
        sa.Column("health_timeout_s", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.Column("finished_at", _AT, nullable=True),
    )
    op.create_index("ix_rollouts_app_id", "rollouts", ["app_id"])
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    # One running rollout per app, and one agent upgrade, even when two start at once.
    op.create_index(
        "ux_rollouts_running",
        "rollouts",
        ["kind", sa.text("coalesce(app_id, '')")],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "rollout_items",
        sa.Column(
            "rollout_id",
            sa.String(length=36),
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("entity_id", sa.String(length=36), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("from_version", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.Column("started_at", _AT, nullable=True),
        sa.Column("finished_at", _AT, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rollout_items")
    op.drop_index("ux_rollouts_running", table_name="rollouts")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_index("ix_rollouts_app_id", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_table("agent_packages")
    op.drop_table("app_versions")
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("agent_target")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("applied_revision")
        batch.drop_column("app_version")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("version")
