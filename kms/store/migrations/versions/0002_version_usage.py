"""version usage counters; index for due destructions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("key_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_keys_issued", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("decrypts", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("last_used_time", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_key_versions_state_destroy_time"), ["state", "destroy_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("key_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_versions_state_destroy_time"))
        batch_op.drop_column("last_used_time")
        batch_op.drop_column("decrypts")
        batch_op.drop_column("data_keys_issued")
