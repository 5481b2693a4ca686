"""The few interfaces the service needs from the outside world.

Adapters implement them: kms.hsm for MasterKeyStore, kms.store for KeyRepository, kms.clock for
Clock. The service depends only on these contracts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kms.domain.audit import AuditEntry, AuditRecord, Checkpoint
from kms.domain.keys import Key, KeyVersion, WrappedMaterial
from kms.domain.ledger import LedgerEntry
from kms.domain.policy import Grant, PolicySnapshot
from kms.domain.usage import UsageDelta


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


@dataclass(frozen=True, slots=True)
class MasterKeyObject:
    """A master key as the HSM lists it.

    ``key_id`` and ``version`` are read from its label; ``create_time`` from its object id.
    ``sound`` says whether its attributes prove it was generated inside the HSM as a
    sensitive, never-extractable AES-256 key that may only encrypt and decrypt.
    """

    master_key_id: str
    label: str
    key_id: str
    version: int
    create_time: datetime
    sound: bool


class MasterKeyStore(Protocol):
    """Master keys inside the HSM. Key material never crosses this interface.

    Every method raises HsmUnavailable when the HSM cannot be reached; callers may retry.
    """

    def create(self, key_id: str, version: int) -> KeyVersion:
        """Generates a new AES-256 token object for ``key_id`` version ``version`` (HSM_OBJECT).

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

    def destroy(self, version: KeyVersion) -> None:
        """Destroys the version's key in the HSM (its token object, or the unwrapped copy a
        WRAPPED version has in this process). Succeeds when it is already gone."""
        ...

    def hmac(self, version: KeyVersion, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under a PSEUDONYMIZE version's key, inside the HSM."""
        ...

    def random_bytes(self, length: int) -> bytes:
        """``length`` bytes from the HSM's random number generator."""
        ...

    def check(self) -> None:
        """Returns when the HSM answers, else raises HsmUnavailable. May trigger reconnection."""
        ...


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
    ) -> Iterator[AuditRecord]:
        """Records in seq order, filtered (every filter given must match)."""
        ...

    def checkpoints(self) -> Iterator[Checkpoint]: ...


class AuditJournal(Protocol):
    """Where a replica writes audit entries down before a call's result is released: cheap,
    and durable against the process being killed (not against power loss)."""

    def append(self, entries: Sequence[AuditEntry]) -> list[str]:
        """Writes ``entries`` and returns their origins, in order. Raises OSError."""
        ...

    def recover(self) -> list[tuple[str, AuditEntry]]:
        """Entries written by a previous process that may not have reached the chain."""
        ...

    def committed(self, origins: Sequence[str]) -> None:
        """The entries of ``origins`` are in the chain: a file all of whose entries are may go."""
        ...

    def close(self) -> None: ...


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
