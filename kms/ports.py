"""The few interfaces the service needs from the outside world.

Adapters implement them: kms.hsm for MasterKeyStore, kms.store for KeyRepository, kms.clock for
Clock. The service depends only on these contracts, and each use case on the narrowest one: the
master keys split into the seam a call uses (MasterKeyCipher) and the inventory that creating,
destroying and reconciling use (MasterKeyInventory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kms.domain.audit import AuditEntry, AuditRecord, ChainProgress, Checkpoint, JournaledEntry, JournalPosition
from kms.domain.keys import Key, KeyVersion, WrappedMaterial
from kms.domain.ledger import LedgerEntry
from kms.domain.policy import Grant, PolicySnapshot
from kms.domain.privacy import Erasure, SubjectKey
from kms.domain.usage import UsageDelta
from kms.errors import InvalidCiphertext


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


@dataclass(frozen=True, slots=True)
class MasterKeyObject:
    """A master key as the HSM lists it.

    ``key_id`` and ``version`` are read from its label; ``create_time`` from its object id.
    ``kind`` is what its key type makes it: "aes" (wraps data keys) or "hmac" (a PSEUDONYMIZE
    key's version). ``sound`` says whether its attributes prove it was generated inside the HSM
    as a sensitive, never-extractable key of that kind with no other capability (AES-256 that
    may only encrypt and decrypt; a 32-byte HMAC key that may only sign and verify).
    """

    master_key_id: str
    label: str
    key_id: str
    version: int
    create_time: datetime
    sound: bool
    kind: str = "aes"


class MasterKeyCipher(Protocol):
    """What a call on the hot path asks of the HSM: operations under a version's master key
    (or its unwrapped version key), and the HSM's random number generator. Key material never
    crosses this interface.

    Every method raises HsmUnavailable when the HSM cannot be reached; callers may retry.
    """

    def encrypt(self, version: KeyVersion, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        """AES-256-GCM under the version's master key with a fresh random 96-bit IV.

        Returns (iv, ciphertext followed by the 16-byte tag). Raises KeyMaterialMissing when
        the HSM has no object for the version.
        """
        ...

    def decrypt(self, version: KeyVersion, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        """Opens what ``encrypt`` produced. Raises InvalidCiphertext when the tag does not
        verify, KeyMaterialMissing when the HSM has no object for the version."""
        ...

    def rewrap(
        self,
        source: KeyVersion,
        iv: bytes,
        sealed: bytes,
        source_associated_data: bytes,
        destination: KeyVersion,
        destination_associated_data: bytes,
    ) -> tuple[bytes, bytes]:
        """decrypt under ``source`` then encrypt under ``destination`` (fresh IV), in one step:
        the data key is never handed back to the caller. Raises as decrypt and encrypt do."""
        ...

    def rewrap_many(
        self, source: KeyVersion, destination: KeyVersion, items: Sequence[tuple[bytes, bytes, bytes, bytes]]
    ) -> list[tuple[bytes, bytes] | InvalidCiphertext]:
        """``rewrap`` of each (iv, sealed, source associated data, destination associated data),
        in order, at the cost of one key lookup each for all of them: per item (new iv, sealed),
        or InvalidCiphertext where it does not open. Raises as ``rewrap`` for the HSM as a whole."""
        ...

    def open_lengths(
        self, version: KeyVersion, items: Sequence[tuple[bytes, bytes, bytes]]
    ) -> list[int | InvalidCiphertext]:
        """Whether each (iv, sealed, associated data) opens under the version's key: the length of
        what it holds, or InvalidCiphertext. What is opened does not cross this interface."""
        ...

    def hmac(self, version: KeyVersion, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under a PSEUDONYMIZE version's key, inside the HSM."""
        ...

    def hmac_many(self, version: KeyVersion, messages: Sequence[bytes]) -> list[bytes]:
        """HMAC-SHA256 of each of ``messages`` (in order) under a PSEUDONYMIZE version's key,
        inside the HSM, at the cost of one key lookup for all of them. Raises as ``encrypt``."""
        ...

    def random_bytes(self, length: int) -> bytes:
        """``length`` bytes from the HSM's random number generator."""
        ...


class MasterKeyInventory(Protocol):
    """Master keys as objects the HSM holds: making them, finding and listing them, destroying
    them, and whether the HSM answers. Used when keys are created, rotated, destroyed and
    reconciled, never per call. Key material never crosses this interface.

    Every method raises HsmUnavailable when the HSM cannot be reached; callers may retry.
    """

    def create(self, key_id: str, version: int, kind: str = "aes") -> KeyVersion:
        """Generates a new token object for ``key_id`` version ``version`` (HSM_OBJECT): AES-256
        for "aes", a 32-byte HMAC-SHA256 key for "hmac".

        Returns the version in state ENABLED, naming the object. The object is durable in the
        HSM when this returns; recording it is the caller's job.
        """
        ...

    def generate_material(self, kind: str = "aes") -> WrappedMaterial:
        """A new version key ("aes", or "hmac" for pseudonymization), generated in the HSM and
        returned only wrapped under the active root key. Leaves nothing in the HSM."""
        ...

    def wrapped_version(self, key_id: str, version: int, material: WrappedMaterial) -> KeyVersion:
        """A new WRAPPED version holding ``material``, bound (by an HSM MAC) to ``key_id`` and
        ``version``, in state ENABLED."""
        ...

    def find(self, key_id: str, version: int) -> list[MasterKeyObject]:
        """The objects labelled for ``key_id`` version ``version`` (normally none or one)."""
        ...

    def list_objects(self) -> list[MasterKeyObject]:
        """Every master key object this service labelled, in any state."""
        ...

    def destroy(self, version: KeyVersion) -> None:
        """Destroys the version's key in the HSM (its token object, or the unwrapped copy a
        WRAPPED version has in this process). Succeeds when it is already gone."""
        ...

    def check(self) -> None:
        """Returns when the HSM answers, else raises HsmUnavailable. May trigger reconnection."""
        ...


class MasterKeyStore(MasterKeyCipher, MasterKeyInventory, Protocol):
    """Both sides of the master keys in the HSM: what the HSM adapter (kms.hsm) provides."""


class RootKeyStore(Protocol):
    """The root keys of the key hierarchy, inside the HSM (kms.hsm.hierarchy)."""

    def active_root(self) -> str:
        """The CKA_ID (hex) of the root that wraps new versions; created on first use."""
        ...

    def roots(self) -> list[str]:
        """Every sound root key (CKA_ID hex)."""
        ...

    def create_root(self) -> str:
        """A new root, which becomes the active one."""
        ...

    def destroy_root(self, root_key_id: str) -> None: ...

    def bind(self, key_id: str, version: int, material: WrappedMaterial) -> str:
        """The HSM's MAC binding ``material`` to ``key_id`` version ``version`` (hex)."""
        ...

    def rewrap_material(
        self, key_id: str, version: int, material: WrappedMaterial, mac: str, kind: str, to_root: str
    ) -> WrappedMaterial:
        """The same version key wrapped under ``to_root``, the key never leaving the HSM.
        Raises KeyMaterialCorrupt when ``material`` is not bound to the key and version."""
        ...


class KeyTransaction(Protocol):
    """A unit of work on one key, holding that key's write lock until it ends.

    Leaving the ``with`` block normally commits; an exception rolls back.
    """

    @property
    def key(self) -> Key | None:
        """The key as stored when the lock was taken, or None if it does not exist."""
        ...

    def save(self, key: Key) -> Key:
        """Writes ``key`` (new or changed, with its versions) within this transaction, with its
        revision incremented and its ledger entry appended; returns it as stored."""
        ...

    @property
    def appended(self) -> list[LedgerEntry]:
        """The ledger entries this transaction appended (valid once it has committed)."""
        ...


class KeyRepository(Protocol):
    """Key metadata. Never key material or plaintext.

    Raises DatabaseUnavailable when the database cannot be reached.
    """

    def get(self, key_id: str) -> Key:
        """Raises KeyNotFound."""
        ...

    def list_keys(self, limit: int, after_key_id: str | None) -> Sequence[Key]:
        """Up to ``limit`` keys with ids greater than ``after_key_id``, in id order."""
        ...

    def transaction(self, key_id: str) -> AbstractContextManager[KeyTransaction]:
        """Locks ``key_id`` for writing (also when it does not exist yet).

        Saving a new key whose id another transaction committed first raises KeyAlreadyExists.
        """
        ...

    def preparation_lock(self, key_id: str) -> AbstractContextManager[None]:
        """Serializes, across replicas, the making of ``key_id``'s next HSM object before its
        transaction, without holding a database lock meanwhile."""
        ...

    def try_transaction(self, key_id: str) -> AbstractContextManager[KeyTransaction | None]:
        """As ``transaction``, but yields None at once if another transaction holds the key
        (how replicas split scheduled work without waiting on each other)."""
        ...

    def due_for_rotation(self, now: datetime, limit: int, max_wraps: int | None = None) -> list[str]:
        """Ids of keys with a rotation period whose next rotation time has come, oldest first;
        then those whose primary version has wrapped ``max_wraps`` data keys or more."""
        ...

    def keys_wrapped_outside(self, root_key_id: str, limit: int, after_key_id: str | None) -> list[str]:
        """Ids of keys with a WRAPPED version (not destroyed) under another root, in id order."""
        ...

    def keys_wrapped_under(self, root_key_id: str, limit: int) -> list[str]:
        """Ids of keys with a WRAPPED version (not destroyed) under ``root_key_id``."""
        ...

    def due_for_destruction(self, now: datetime, limit: int) -> list[tuple[str, int]]:
        """(key id, version) of DESTROY_SCHEDULED versions whose destroy time has come."""
        ...

    def add_usage(self, deltas: Mapping[tuple[str, int], UsageDelta]) -> dict[tuple[str, int], int]:
        """Adds counted uses to the stored totals of each (key id, version); returns the wraps
        each of those versions now has in all (every replica's flushed counts)."""
        ...

    def all_keys(self) -> Iterator[Key]:
        """Every key with its versions, for reconciliation."""
        ...

    def ping(self) -> None:
        """Returns when the database answers, else raises DatabaseUnavailable."""
        ...


class PolicyRepository(Protocol):
    """Grants and group memberships; every change appends to the metadata ledger."""

    def snapshot(self) -> PolicySnapshot:
        """All stored grants and memberships, read consistently (not yet verified)."""
        ...

    def add_grant(self, grant: Grant, now: datetime) -> Grant:
        """Stores ``grant`` under a new grant id and returns it with that id."""
        ...

    def delete_grant(self, grant_id: str) -> bool: ...

    def add_member(self, group: str, identity: str) -> bool: ...

    def remove_member(self, group: str, identity: str) -> bool: ...


class AuditRepository(Protocol):
    def append(self, entries: Sequence[tuple[str, AuditEntry]], sealer: AuditSeal, now: datetime) -> list[AuditRecord]:
        """Appends (origin, entry) pairs to the one chain and seals them with a checkpoint,
        atomically, after checking that the chain's head is sealed. Raises AuditTampered."""
        ...

    def recorded_origins(self, origins: Sequence[str]) -> set[str]:
        """Which of ``origins`` the chain holds already."""
        ...

    def records(
        self,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: str | None = None,
        identity: str | None = None,
        context_digest: str | None = None,
        through_seq: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Records in seq order, filtered (every filter given must match)."""
        ...

    def checkpoints(self, *, through_seq: int | None = None) -> Iterator[Checkpoint]: ...

    def last_seq(self) -> int:
        """The highest seq of a record or a checkpoint (0 for an empty log), read at one instant."""
        ...


class AuditJournal(Protocol):
    """Where a serving process writes audit entries down before a call's result is released:
    cheap, and durable against the process being killed (not against power loss). One process
    appends to a journal at a time; an audit writer moves its entries into the chain."""

    backlog: JournalPosition | None
    """Up to where an earlier process journaled entries that may not be chained yet."""

    def append(self, entries: Sequence[AuditEntry]) -> JournalPosition:
        """Writes ``entries``; returns the position of the last. Raises OSError."""
        ...

    def close(self) -> None: ...


class AuditJournalReader(Protocol):
    """The audit writer's side of a journal: the entries in the order they were appended."""

    def read(self, limit: int) -> Sequence[JournaledEntry]:
        """Up to ``limit`` entries not read before, in order."""
        ...

    def chained(self, through: JournalPosition) -> None:
        """Every entry up to ``through`` is in the chain."""
        ...

    def settle(self) -> JournalPosition | None:
        """Lets go of what is chained; the position up to which everything read is chained."""
        ...


class AuditWriter(Protocol):
    """Moves a journal's entries into the hash-chained, sealed log, away from the serving
    process (kms.audit_writer), and tells how far it got."""

    def start(self, report: Callable[[ChainProgress], None]) -> None:
        """Starts it; ``report`` is called from another thread after each batch."""
        ...

    def hurry(self) -> None:
        """Asks for the next batch now rather than at the next interval."""
        ...

    def stop(self, timeout: float) -> None: ...


class AuditSeal(Protocol):
    """A MAC whose key the database cannot reach (an HSM key)."""

    def seal(self, message: bytes) -> str:
        """The MAC of ``message``, in hex."""
        ...

    def check(self, message: bytes, mac_hex: str) -> bool: ...

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte secret for ``purpose``, computed inside the HSM from the seal key (its MAC
        of the purpose label). It leaves the HSM only as this derived value, for keyed digests
        the service computes per call; a derivation never yields the MAC of a sealed message."""
        ...


class SubjectRepository(Protocol):
    """Data subjects' keys, stored only wrapped, and the receipts of their erasures
    (kms.domain.privacy). Subjects appear only as keyed digests (hex), never in clear.

    Raises DatabaseUnavailable when the database cannot be reached.
    """

    def get(self, key_id: str, subject_digest: str) -> SubjectKey | None: ...

    def add(self, subject: SubjectKey) -> SubjectKey | None:
        """Stores ``subject`` in one statement unless a row for its key and digest exists (a first
        use racing on another replica won: that row is returned) or an erasure of that digest is
        recorded (None)."""
        ...

    def erase(
        self, key_id: str, subject_digest: str, erased_by: str, now: datetime, primary_version: int
    ) -> tuple[Erasure, list[LedgerEntry]]:
        """Deletes the subject's key and records the erasure with its ledger entry, in one
        transaction under the key's lock. ``final_after_version`` is the version that wrapped the
        deleted key, or, for a subject without one, the primary version (a first use racing the
        erasure wraps under it). An erasure already recorded is returned as it is, with no entry."""
        ...

    def erasure(self, key_id: str, subject_digest: str) -> Erasure | None: ...

    def erasures(self, key_id: str, limit: int, before: tuple[datetime, str] | None) -> list[Erasure]:
        """Up to ``limit`` erasures of ``key_id``, newest first, older than ``before`` (erase time,
        digest) when given."""
        ...

    def all_erasures(self) -> Iterator[Erasure]: ...

    def wrapped_below(
        self, key_id: str, version: int, limit: int, after: tuple[int, str] | None = None
    ) -> list[SubjectKey]:
        """Up to ``limit`` subjects of ``key_id`` wrapped by a version below ``version``, in
        (version, digest) order, after ``after`` when given."""
        ...

    def wraps_any(self, key_id: str, version: int) -> bool:
        """Whether version ``version`` of ``key_id`` still wraps some subject's key."""
        ...

    def carry(self, moves: Sequence[tuple[SubjectKey, SubjectKey]]) -> int:
        """Replaces each (old, new) row in one transaction, each only if it still holds ``old``
        (compare-and-set: an erasure or another carrier meanwhile wins); returns how many."""
        ...

    def remove(self, subjects: Sequence[SubjectKey]) -> int:
        """Deletes rows the ledger names as erased (left by a first use that raced an erasure,
        or restored from a backup), each only if unchanged."""
        ...

    def privacy_keys(self) -> list[str]:
        """Ids of keys with a subject_field or a retention_period (read unverified: the caller
        loads each through the ledger-checked cache)."""
        ...
