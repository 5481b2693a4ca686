"""metadata ledger (key revisions, the sealed chain of protected-row changes); wrapped versions
(the key hierarchy); key purpose and privacy settings

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.BigInteger(), server_default="0", nullable=False))
        # Keys from before the hierarchy keep their versions as HSM objects.
        batch_op.add_column(sa.Column("storage", sa.String(length=16), server_default="HSM_OBJECT", nullable=False))
        batch_op.add_column(
            sa.Column("purpose", sa.String(length=24), server_default="ENCRYPT_DECRYPT", nullable=False)
        )
        batch_op.add_column(sa.Column("subject_field", sa.String(length=128), server_default="", nullable=False))
        batch_op.add_column(sa.Column("retention_period_seconds", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("erasure_finality_seconds", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("key_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("storage", sa.String(length=16), server_default="HSM_OBJECT", nullable=False))
        batch_op.add_column(sa.Column("wrapped_material", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("root_key_id", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("material_mac", sa.String(length=64), server_default="", nullable=False))
        batch_op.create_index(batch_op.f("ix_key_versions_root_key_id"), ["root_key_id"], unique=False)
    op.create_table(
        "ledger_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=600), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ledger_entries")),
    )
    op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_head")),
    )
    # The single row the chain's head lives in; existing rows are sealed into the ledger by the
    # service at its first start (it needs the HSM, which a migration does not have).
    op.bulk_insert(
        sa.table(
            "ledger_head",
            sa.column("id", sa.Integer),
            sa.column("seq", sa.BigInteger),
            sa.column("hash", sa.String),
            sa.column("mac", sa.String),
        ),
        [{"id": 1, "seq": 0, "hash": "0" * 64, "mac": ""}],
    )


def downgrade() -> None:
    op.drop_table("ledger_head")
    op.drop_table("ledger_entries")
    with op.batch_alter_table("key_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_versions_root_key_id"))
        for column in ("material_mac", "root_key_id", "wrapped_material", "storage"):
            batch_op.drop_column(column)
    with op.batch_alter_table("keys", schema=None) as batch_op:
        for column in (
            "erasure_finality_seconds",
            "retention_period_seconds",
            "subject_field",
            "purpose",
            "storage",
            "revision",
        ):
            batch_op.drop_column(column)
