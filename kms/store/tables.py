"""The schema. Metadata only: no column ever holds key material or plaintext."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from kms.store.types import UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every model here maps one Table (DeclarativeBase allows any FromClause); the Core
    # statements in this package (insert, update, delete) take a Table.
    __table__: ClassVar[Table]


class KeyRow(Base):
    __tablename__ = "keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    primary_version: Mapped[int]
    min_decryption_version: Mapped[int] = mapped_column(default=1)
    rotation_period_seconds: Mapped[int | None] = mapped_column(BigInteger)
    next_rotation_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    # Incremented by every change; the ledger names the digest of each revision.
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    storage: Mapped[str] = mapped_column(String(16), default="HSM_OBJECT", server_default="HSM_OBJECT")
    purpose: Mapped[str] = mapped_column(String(24), default="ENCRYPT_DECRYPT", server_default="ENCRYPT_DECRYPT")
    subject_field: Mapped[str] = mapped_column(String(128), default="", server_default="")
    retention_period_seconds: Mapped[int | None] = mapped_column(BigInteger)
    erasure_finality_seconds: Mapped[int | None] = mapped_column(BigInteger)

    versions: Mapped[list[KeyVersionRow]] = relationship(
        back_populates="key", order_by="KeyVersionRow.version", lazy="selectin", cascade="all, delete-orphan"
    )

    __table_args__ = (Index(None, "next_rotation_time"),)


class KeyVersionRow(Base):
    __tablename__ = "key_versions"

    key_id: Mapped[str] = mapped_column(ForeignKey("keys.key_id"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(24))
    # The HSM object's CKA_ID (hex) and CKA_LABEL.
    master_key_id: Mapped[str] = mapped_column(String(64), unique=True)
    master_key_label: Mapped[str] = mapped_column(String(160))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    destroy_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Usage, only ever incremented (see SqlKeyRepository.add_usage), never rewritten by a save.
    data_keys_issued: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    decrypts: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_used_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # WRAPPED versions: the key wrapped under the root key root_key_id, and its binding MAC.
    storage: Mapped[str] = mapped_column(String(16), default="HSM_OBJECT", server_default="HSM_OBJECT")
    wrapped_material: Mapped[bytes | None] = mapped_column(LargeBinary)
    root_key_id: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    material_mac: Mapped[str] = mapped_column(String(64), default="", server_default="")

    key: Mapped[KeyRow] = relationship(back_populates="versions")

    __table_args__ = (Index(None, "state", "destroy_time"),)


# --- authorization -------------------------------------------------------------------


class GrantRow(Base):
    __tablename__ = "grants"

    grant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(String(520), index=True)
    resource: Mapped[str] = mapped_column(String(72))
    permissions: Mapped[str] = mapped_column(String(128))  # comma-separated names
    context_json: Mapped[str] = mapped_column(Text, default="{}")
    created_by: Mapped[str] = mapped_column(String(520))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class GroupMemberRow(Base):
    __tablename__ = "group_members"

    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    identity: Mapped[str] = mapped_column(String(512), primary_key=True)


class PolicyStateRow(Base):
    """One row: a revision number bumped by every policy change, which replicas poll."""

    __tablename__ = "policy_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)


# --- audit -------------------------------------------------------------------------


class AuditRecordRow(Base):
    """Append-only and hash-chained (see kms.domain.audit)."""

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    identity: Mapped[str] = mapped_column(String(512), index=True)
    rpc: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64), index=True)
    key_version: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    peer: Mapped[str] = mapped_column(String(256))
    context_digest: Mapped[str] = mapped_column(String(64))
    item: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(String(512))
    # Where the record was first written down: "<journal file id>:<n>", so that replaying a
    # replica's journal after a crash never adds a record twice.
    origin: Mapped[str] = mapped_column(String(64), unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRow(Base):
    """A MAC, computed in the HSM, over the chain's hash at ``seq``."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    mac: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """One row, locked by every append: the newest seq and hash, so replicas extend one chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


# --- the metadata ledger (kms.domain.ledger) ---------------------------------------------


class LedgerEntryRow(Base):
    """One change of a protected row, hash-chained; the head is sealed by the HSM."""

    __tablename__ = "ledger_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(600))
    revision: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class LedgerHeadRow(Base):
    """One row, locked by every append: the newest entry and the HSM's MAC over it."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


# --- data subjects (kms.domain.privacy) --------------------------------------------------


class SubjectKeyRow(Base):
    """One data subject's key, wrapped by master key version ``version`` in the HSM (12-byte IV,
    then ciphertext and tag): never the subject, only its keyed digest (32 bytes)."""

    __tablename__ = "subject_keys"

    key_id: Mapped[str] = mapped_column(ForeignKey("keys.key_id"), primary_key=True)
    subject_digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary(60))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)

    # Carrying finds what an old version still wraps; destruction waits until nothing is left.
    __table_args__ = (Index(None, "key_id", "version", "subject_digest"),)


class ErasureRow(Base):
    """The receipt of an erasure; the metadata ledger holds its digest (kind "erasure")."""

    __tablename__ = "erasures"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    erase_time: Mapped[datetime] = mapped_column(UtcDateTime)
    erased_by: Mapped[str] = mapped_column(String(520))
    subject_known: Mapped[bool]
    final_after_version: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index(None, "key_id", "erase_time"),)
