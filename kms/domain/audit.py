"""The audit log's integrity: canonical record bytes, the hash chain, and its verification.

Each record's hash is SHA-256 over its canonical bytes, which include the previous record's
hash; so changing, removing, inserting or reordering a record breaks the chain at that point.
Because anyone can compute SHA-256, the chain alone cannot stop someone with write access to
the database from rewriting everything after a point consistently: every appended batch is
therefore sealed by a checkpoint, an HMAC-SHA256 over (seq, hash) computed inside the HSM with
a key that never leaves it. Records after the last checkpoint, or a rewritten stretch between
two checkpoints, are reported as such.

Canonical bytes of record ``seq`` (integers big-endian):

    "kms-audit-v1" || uint64 seq || prev_hash (32 bytes)
    then, each as uint32 length || UTF-8: time (ISO 8601, UTC, microseconds, "Z"), identity,
    rpc, key_id, key_version (decimal), outcome, reason, request_id, peer, context_digest,
    item (decimal, -1 for the call itself), detail, origin

Checkpoint MAC input: "kms-audit-checkpoint-v1" || uint64 seq || hash (32 bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

GENESIS = "0" * 64
_RECORD_TAG = b"kms-audit-v1"
_CHECKPOINT_TAG = b"kms-audit-checkpoint-v1"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited event, as the service reports it (before it has a place in the chain)."""

    time: datetime
    identity: str
    rpc: str
    outcome: str
    key_id: str = ""
    key_version: int = 0
    reason: str = ""
    request_id: str = ""
    peer: str = ""
    context_digest: str = ""
    item: int = -1
    detail: str = ""


# Longest value each text field may hold (the audit tables' column widths). Many come from the
# caller, unvalidated (the key id of a refused request, say): they are clipped, never refused,
# so that no request can produce a record the log cannot store.
FIELD_LIMITS = {
    "identity": 512,
    "rpc": 64,
    "key_id": 64,
    "outcome": 32,
    "reason": 64,
    "request_id": 64,
    "peer": 256,
    "context_digest": 64,
    "detail": 512,
}

_LIMITS = tuple(FIELD_LIMITS.values())


def clipped(entry: AuditEntry) -> AuditEntry:
    """``entry`` with every text field cut to its limit and NUL characters (which PostgreSQL
    text cannot hold) replaced; the entry itself when nothing needed changing."""
    values = [getattr(entry, name) for name in FIELD_LIMITS]
    # The common case, on every call's path: nothing to change, found with one scan for NUL.
    if "\x00" not in "".join(values) and all(map(_within, values, _LIMITS)):
        return entry
    changes = {}
    for (name, limit), value in zip(FIELD_LIMITS.items(), values, strict=True):
        if len(value) > limit or "\x00" in value:
            changes[name] = value.replace("\x00", "\ufffd")[:limit]
    return replace(entry, **changes)


def _within(value: str, limit: int) -> bool:
    return len(value) <= limit


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An entry in its place in the chain. ``origin`` names where it was first written down
    (a replica's journal), which makes replaying a journal idempotent."""

    seq: int
    entry: AuditEntry
    origin: str
    prev_hash: str
    hash: str


# Where an entry sits in a replica's journal: (file name, line number from 1). Positions of one
# journal sort in the order the entries were appended.
JournalPosition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class JournaledEntry:
    """An entry as the audit writer reads it back from a journal."""

    position: JournalPosition
    origin: str
    entry: AuditEntry


@dataclass(frozen=True, slots=True)
class ChainProgress:
    """What the audit writer reports after each batch: everything journaled up to ``through``
    is in the chain (None: nothing yet); ``state`` is "ok", "failing" (the last batch could
    not be written; it is retried) or "tampered" (the chain's head is not sealed: nothing is
    written until it is)."""

    through: JournalPosition | None
    state: str = "ok"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    time: datetime
    mac: str


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_bytes(seq: int, entry: AuditEntry, origin: str, prev_hash: str) -> bytes:
    fields = (
        format_time(entry.time),
        entry.identity,
        entry.rpc,
        entry.key_id,
        str(entry.key_version),
        entry.outcome,
        entry.reason,
        entry.request_id,
        entry.peer,
        entry.context_digest,
        str(entry.item),
        entry.detail,
        origin,
    )
    parts = [_RECORD_TAG, struct.pack(">Q", seq), bytes.fromhex(prev_hash)]
    for value in fields:
        encoded = value.encode("utf-8", "surrogatepass")
        parts += [struct.pack(">I", len(encoded)), encoded]
    return b"".join(parts)


def chain_hash(seq: int, entry: AuditEntry, origin: str, prev_hash: str) -> str:
    return hashlib.sha256(record_bytes(seq, entry, origin, prev_hash)).hexdigest()


def extend(head_seq: int, head_hash: str, entries: Iterable[tuple[str, AuditEntry]]) -> list[AuditRecord]:
    """Places (origin, entry) pairs after the head, in order."""
    records = []
    for offset, (origin, entry) in enumerate(entries, start=1):
        seq = head_seq + offset
        digest = chain_hash(seq, entry, origin, head_hash)
        records.append(AuditRecord(seq, entry, origin, head_hash, digest))
        head_hash = digest
    return records


def checkpoint_message(seq: int, hash_hex: str) -> bytes:
    return _CHECKPOINT_TAG + struct.pack(">Q", seq) + bytes.fromhex(hash_hex)


def context_digest(key: bytes, encoded_context: bytes) -> str:
    """HMAC-SHA256 of the canonical context encoding under ``key``, in hex.

    Keyed, so that whoever reads the log cannot recover a context by hashing candidates (a
    tenant id, an e-mail address); the key is derived inside the HSM (AuditSeal.derive) and
    never stored. The service computes it for a reader who filters records by context."""
    return hmac.new(key, encoded_context, hashlib.sha256).hexdigest()


@dataclass
class Verification:
    records: int = 0
    checkpoints: int = 0
    problem_seq: int = 0
    problem: str = ""

    @property
    def intact(self) -> bool:
        return not self.problem


def verify(
    records: Iterable[AuditRecord], checkpoints: Iterable[Checkpoint], mac_ok: Callable[[bytes, str], bool]
) -> Verification:
    """Walks the log in seq order and reports the first problem, and where it is."""
    result = Verification()
    pending: Iterator[Checkpoint] = iter(checkpoints)
    checkpoint = next(pending, None)
    expected, previous_hash, sealed_seq = 1, GENESIS, 0

    def fail(seq: int, problem: str) -> Verification:
        result.problem_seq, result.problem = seq, problem
        return result

    for record in records:
        if record.seq != expected:
            if record.seq > expected:
                missing = f"{expected}" if record.seq == expected + 1 else f"{expected}-{record.seq - 1}"
                return fail(expected, f"record {missing} is missing (removed)")
            return fail(record.seq, f"record {record.seq} is out of order")
        if record.prev_hash != previous_hash:
            return fail(
                record.seq,
                f"record {record.seq} does not follow record {record.seq - 1} (inserted, removed or reordered)",
            )
        if chain_hash(record.seq, record.entry, record.origin, record.prev_hash) != record.hash:
            return fail(record.seq, f"record {record.seq} was changed")
        while checkpoint is not None and checkpoint.seq <= record.seq:
            if checkpoint.seq < record.seq or checkpoint.hash != record.hash:
                return fail(
                    checkpoint.seq,
                    f"records {sealed_seq + 1}-{checkpoint.seq} do not match their checkpoint (rewritten)",
                )
            if not mac_ok(checkpoint_message(checkpoint.seq, checkpoint.hash), checkpoint.mac):
                return fail(checkpoint.seq, f"checkpoint at record {checkpoint.seq} is forged")
            sealed_seq = checkpoint.seq
            result.checkpoints += 1
            checkpoint = next(pending, None)
        previous_hash, expected = record.hash, expected + 1
        result.records += 1
    last = expected - 1
    if checkpoint is not None:
        return fail(last + 1, f"records {last + 1}-{checkpoint.seq} are missing (removed from the end)")
    if last > sealed_seq:
        return fail(
            sealed_seq + 1,
            f"records {sealed_seq + 1}-{last} are not sealed by any checkpoint (appended outside the service)",
        )
    return result
