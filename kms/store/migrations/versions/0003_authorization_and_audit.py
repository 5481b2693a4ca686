"""authorization and audit

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("identity", sa.String(length=512), nullable=False),
        sa.Column("rpc", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("key_version", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=256), nullable=False),
        sa.Column("context_digest", sa.String(length=64), nullable=False),
        sa.Column("item", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(length=512), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_records")),
        sa.UniqueConstraint("origin", name=op.f("uq_audit_records_origin")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_records_identity"), ["identity"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_records_key_id"), ["key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_records_time"), ["time"], unique=False)

    op.create_table(
        "grants",
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("principal", sa.String(length=520), nullable=False),
        sa.Column("resource", sa.String(length=72), nullable=False),
        sa.Column("permissions", sa.String(length=128), nullable=False),
        sa.Column("context_json", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=520), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("grant_id", name=op.f("pk_grants")),
    )
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_grants_principal"), ["principal"], unique=False)

    op.create_table(
        "group_members",
        sa.Column("group_name", sa.String(length=64), nullable=False),
        sa.Column("identity", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("group_name", "identity", name=op.f("pk_group_members")),
    )
    op.create_table(
        "policy_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_state")),
    )
    # The single rows the policy revision and the audit chain's head live in.
    op.bulk_insert(
        sa.table("policy_state", sa.column("id", sa.Integer), sa.column("revision", sa.BigInteger)),
        [{"id": 1, "revision": 0}],
    )
    op.bulk_insert(
        sa.table(
            "audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.BigInteger), sa.column("hash", sa.String)
        ),
        [{"id": 1, "seq": 0, "hash": "0" * 64}],
    )


def downgrade() -> None:
    op.drop_table("policy_state")
    op.drop_table("group_members")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_grants_principal"))

    op.drop_table("grants")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_records_time"))
        batch_op.drop_index(batch_op.f("ix_audit_records_key_id"))
        batch_op.drop_index(batch_op.f("ix_audit_records_identity"))

    op.drop_table("audit_records")
    op.drop_table("audit_head")
    op.drop_table("audit_checkpoints")
