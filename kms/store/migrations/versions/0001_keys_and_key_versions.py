"""keys and key versions

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("primary_version", sa.Integer(), nullable=False),
        sa.Column("min_decryption_version", sa.Integer(), nullable=False),
        sa.Column("rotation_period_seconds", sa.BigInteger(), nullable=True),
        sa.Column("next_rotation_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_keys")),
    )
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keys_next_rotation_time"), ["next_rotation_time"], unique=False)

    op.create_table(
        "key_versions",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("master_key_label", sa.String(length=160), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroy_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["keys.key_id"], name=op.f("fk_key_versions_key_id_keys")),
        sa.PrimaryKeyConstraint("key_id", "version", name=op.f("pk_key_versions")),
        sa.UniqueConstraint("master_key_id", name=op.f("uq_key_versions_master_key_id")),
    )


def downgrade() -> None:
    op.drop_table("key_versions")
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keys_next_rotation_time"))

    op.drop_table("keys")
