"""The metadata ledger: a hash chain, sealed in the HSM, of every change to the rows that decide
who may use which key version.

Whoever can write to the database can change rows: add a grant, re-enable a disabled version,
lower a decryption floor, restore a revoked grant from a backup. None of that may gain them
anything. So every change to a protected row also appends an entry to the ledger naming the row
(kind and name), its new revision, and the SHA-256 digest of its canonical bytes (below); the
entries form a hash chain whose head is sealed by an HMAC computed inside the HSM. Each replica
follows the chain, checking every link and the seal, and keeps, per row, the digest its latest
entry names. A row is believed only if its digest is that one:

- an inserted row has no entry, so it grants nothing;
- a changed row no longer has its digest;
- an older row restored (a revoked grant, a version before it was disabled) has the digest of
  an earlier entry, not the latest;
- entries cannot be forged, dropped or reordered without breaking the chain or its seal, and the
  seal's key never leaves the HSM.

What the chain cannot see by itself is the whole database rolled back to an earlier, consistent
state (a restored backup): that is what the HSM anchor is for (kms.service.integrity).

Canonical bytes (all integers big-endian; text as uint32 length || UTF-8; times as ISO 8601 UTC
with microseconds and "Z", or "" for none):

    key     "kms-key-v1" || key_id || revision || description || primary_version ||
            min_decryption_version || rotation_period_seconds ("" for none) || next_rotation_time
            || create_time || update_time || storage || purpose || subject_field ||
            retention_period_seconds || erasure_finality_seconds || uint32 number of versions ||
            per version: version || state || master_key_id || master_key_label || create_time ||
            destroy_time || storage || material digest ("" when the version lives as an HSM
            object)
    grant   "kms-grant-v1" || grant_id || principal || resource || permissions (sorted, joined
            by ",") || constraint (the canonical context encoding, hex) || created_by
    member  "kms-member-v1" || group || identity
    erasure "kms-erasure-v1" || key_id || subject_digest || erase_time || erased_by ||
            subject_known ("1" or "0") || final_after_version

An erasure entry (name: key_id LF subject_digest, revision 1) never goes away: a subject the
ledger names as erased is refused whatever its rows say, so restoring its deleted key row or
deleting the erasure record gains nothing (kms.service.subjects).

Entry hash: SHA-256("kms-ledger-v1" || uint64 seq || prev_hash (32 bytes) || kind || name ||
uint64 revision || digest (32 bytes, or none for a removed row)). The head's seal: the HSM's
HMAC of "kms-ledger-head-v1" || uint64 seq || hash (32 bytes).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kms.crypto.context import encode_context
from kms.domain.keys import Key
from kms.domain.policy import Grant
from kms.domain.privacy import Erasure

GENESIS = "0" * 64
KEY = "key"
GRANT = "grant"
MEMBER = "member"
ERASURE = "erasure"
KINDS = (KEY, GRANT, MEMBER, ERASURE)

_ENTRY_TAG = b"kms-ledger-v1"
_HEAD_TAG = b"kms-ledger-head-v1"


# -- canonical bytes -----------------------------------------------------------------------


def _text(value: str) -> bytes:
    encoded = value.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(encoded)) + encoded


def _time(value: datetime | None) -> bytes:
    return _text("" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _int(value: int) -> bytes:
    return _text(str(value))


def _seconds(value: timedelta | None) -> bytes:
    return _text("" if value is None else str(int(value.total_seconds())))


def key_bytes(key: Key) -> bytes:
    parts = [
        b"kms-key-v1",
        _text(key.key_id),
        _int(key.revision),
        _text(key.description),
        _int(key.primary_version),
        _int(key.min_decryption_version),
        _text("" if key.rotation_period is None else str(int(key.rotation_period.total_seconds()))),
        _time(key.next_rotation_time),
        _time(key.create_time),
        _time(key.update_time),
        _text(key.storage.value),
        _text(key.purpose.value),
        _text(key.subject_field),
        _seconds(key.retention_period),
        _seconds(key.erasure_finality),
        struct.pack(">I", len(key.versions)),
    ]
    for version in key.versions:
        parts += [
            _int(version.version),
            _text(version.state.value),
            _text(version.master_key_id),
            _text(version.master_key_label),
            _time(version.create_time),
            _time(version.destroy_time),
            _text(version.storage.value),
            _text(version.material_digest),
        ]
    return b"".join(parts)


def grant_bytes(grant: Grant) -> bytes:
    permissions = ",".join(sorted(p.value for p in grant.permissions))
    constraint = encode_context(dict(grant.context)).hex() if grant.context else ""
    return b"".join(
        [
            b"kms-grant-v1",
            _text(grant.grant_id),
            _text(grant.principal),
            _text(grant.resource),
            _text(permissions),
            _text(constraint),
            _text(grant.created_by),
        ]
    )


def member_bytes(group: str, identity: str) -> bytes:
    return b"".join([b"kms-member-v1", _text(group), _text(identity)])


def member_name(group: str, identity: str) -> str:
    return f"{group}\n{identity}"


def erasure_bytes(erasure: Erasure) -> bytes:
    return b"".join(
        [
            b"kms-erasure-v1",
            _text(erasure.key_id),
            _text(erasure.subject_digest),
            _time(erasure.erase_time),
            _text(erasure.erased_by),
            _text("1" if erasure.subject_known else "0"),
            _int(erasure.final_after_version),
        ]
    )


def erasure_name(key_id: str, subject_digest: str) -> str:
    return f"{key_id}\n{subject_digest}"


def digest(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()


def key_digest(key: Key) -> str:
    return digest(key_bytes(key))


def grant_digest(grant: Grant) -> str:
    return digest(grant_bytes(grant))


def member_digest(group: str, identity: str) -> str:
    return digest(member_bytes(group, identity))


def erasure_digest(erasure: Erasure) -> str:
    return digest(erasure_bytes(erasure))


# -- the chain -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """A protected row's new state: ``digest`` of its canonical bytes, or "" when it is gone."""

    kind: str
    name: str
    revision: int
    digest: str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    change: Change
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class LedgerHead:
    seq: int
    hash: str
    mac: str


def entry_hash(seq: int, change: Change, prev_hash: str) -> str:
    parts = [
        _ENTRY_TAG,
        struct.pack(">Q", seq),
        bytes.fromhex(prev_hash),
        _text(change.kind),
        _text(change.name),
        struct.pack(">Q", change.revision),
        bytes.fromhex(change.digest) if change.digest else b"",
    ]
    return hashlib.sha256(b"".join(parts)).hexdigest()


def extend(head_seq: int, head_hash: str, changes: Iterable[Change]) -> list[LedgerEntry]:
    entries = []
    for change in changes:
        head_seq += 1
        digest_ = entry_hash(head_seq, change, head_hash)
        entries.append(LedgerEntry(head_seq, change, head_hash, digest_))
        head_hash = digest_
    return entries


def head_message(seq: int, hash_hex: str) -> bytes:
    return _HEAD_TAG + struct.pack(">Q", seq) + bytes.fromhex(hash_hex)


class BrokenChain(Exception):
    """The ledger as read does not continue the chain this replica already verified."""


@dataclass
class LedgerState:
    """What the verified chain says each protected row must be: per (kind, name), the latest
    revision and digest ("" when the row was removed). Applying entries checks every link."""

    seq: int = 0
    hash: str = GENESIS
    rows: dict[str, dict[str, tuple[int, str]]] = field(default_factory=lambda: {kind: {} for kind in KINDS})

    def follow(self, entries: Sequence[LedgerEntry]) -> tuple[int, str]:
        """The (seq, hash) ``entries`` lead to from this state's head, changing nothing. Raises
        BrokenChain at the first entry that does not follow."""
        seq, head = self.seq, self.hash
        for entry in entries:
            if entry.seq != seq + 1:
                raise BrokenChain(f"ledger entry {seq + 1} is missing (found {entry.seq})")
            if entry.prev_hash != head or entry_hash(entry.seq, entry.change, head) != entry.hash:
                raise BrokenChain(f"ledger entry {entry.seq} does not follow entry {seq}")
            if entry.change.kind not in self.rows:
                raise BrokenChain(f"ledger entry {entry.seq} names an unknown kind")
            seq, head = entry.seq, entry.hash
        return seq, head

    def apply(self, entries: Sequence[LedgerEntry]) -> list[Change]:
        """Appends ``entries`` (checked with ``follow`` first); returns their changes."""
        self.seq, self.hash = self.follow(entries)
        for entry in entries:
            change = entry.change
            self.rows[change.kind][change.name] = (change.revision, change.digest)
        return [entry.change for entry in entries]

    def expected(self, kind: str, name: str) -> tuple[int, str] | None:
        return self.rows[kind].get(name)

    def live(self, kind: str) -> Mapping[str, tuple[int, str]]:
        return {name: row for name, row in self.rows[kind].items() if row[1]}
