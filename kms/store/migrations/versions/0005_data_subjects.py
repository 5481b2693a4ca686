"""data subjects: one wrapped key per (key, subject digest), and the receipts of erasures

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("subject_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(length=60), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["keys.key_id"], name=op.f("fk_subject_keys_key_id_keys")),
        sa.PrimaryKeyConstraint("key_id", "subject_digest", name=op.f("pk_subject_keys")),
    )
    # Carrying walks an old version's subjects in this order; destruction asks whether any is left.
    op.create_index(
        op.f("ix_subject_keys_key_id_version_subject_digest"),
        "subject_keys",
        ["key_id", "version", "subject_digest"],
        unique=False,
    )
    op.create_table(
        "erasures",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("subject_digest", sa.String(length=64), nullable=False),
        sa.Column("erase_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_by", sa.String(length=520), nullable=False),
        sa.Column("subject_known", sa.Boolean(), nullable=False),
        sa.Column("final_after_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "subject_digest", name=op.f("pk_erasures")),
    )
    op.create_index(op.f("ix_erasures_key_id_erase_time"), "erasures", ["key_id", "erase_time"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_erasures_key_id_erase_time"), table_name="erasures")
    op.drop_table("erasures")
    op.drop_index(op.f("ix_subject_keys_key_id_version_subject_digest"), table_name="subject_keys")
    op.drop_table("subject_keys")
