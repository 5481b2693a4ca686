"""Keys, their versions, and which version may do what.

Every check of "may this version wrap, unwrap or pseudonymize" goes through
``Key.version_for_decrypt``, ``Key.primary_for_encrypt`` or ``Key.version_for_pseudonymize``, so
the rules (the version's state, the key's floor, the key's purpose) live in one place.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from kms.errors import (
    InvalidKeyId,
    KeyVersionBelowMinimum,
    KeyVersionDestroyed,
    KeyVersionDestroyScheduled,
    KeyVersionDisabled,
    KeyVersionNotFound,
    WrongKeyPurpose,
)

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_key_id(key_id: str) -> str:
    """Returns ``key_id`` if it is 1-64 characters of [A-Za-z0-9_-], else raises InvalidKeyId."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise InvalidKeyId("key id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
    return key_id


class Storage(enum.Enum):
    """Where a version's key lives. WRAPPED: generated in the HSM and stored in the database
    only wrapped under an HSM root key (kms.hsm.hierarchy), so the HSM holds a handful of
    objects whatever the number of keys. HSM_OBJECT: a token object of its own in the HSM."""

    WRAPPED = "WRAPPED"
    HSM_OBJECT = "HSM_OBJECT"


class Purpose(enum.Enum):
    """What a key's versions do: wrap data keys (AES-256-GCM), or make pseudonyms (HMAC-SHA256)."""

    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    PSEUDONYMIZE = "PSEUDONYMIZE"


class VersionState(enum.Enum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    DESTROY_SCHEDULED = "DESTROY_SCHEDULED"
    DESTROYED = "DESTROYED"


_UNUSABLE = {
    VersionState.DISABLED: KeyVersionDisabled,
    VersionState.DESTROY_SCHEDULED: KeyVersionDestroyScheduled,
    VersionState.DESTROYED: KeyVersionDestroyed,
}


@dataclass(frozen=True, slots=True)
class WrappedMaterial:
    """A version key as it leaves the HSM: wrapped under the root key ``root_key_id`` (CKA_ID,
    hex). Only the HSM can unwrap it (kms.hsm.hierarchy)."""

    blob: bytes = field(repr=False)
    root_key_id: str


@dataclass(frozen=True, slots=True)
class VersionUsage:
    """How much a version has been used, as counted by every replica (lower bounds: counts are
    written in batches, so a crash loses the last few seconds of them)."""

    data_keys_issued: int = 0  # wraps: new data keys and re-wraps onto this version
    decrypts: int = 0  # unwraps: decrypts and re-wraps away from this version
    last_used_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One master key generation. ``master_key_id`` names its object in the HSM."""

    key_id: str
    version: int
    state: VersionState
    master_key_id: str
    master_key_label: str
    create_time: datetime
    destroy_time: datetime | None = None
    usage: VersionUsage = VersionUsage()
    storage: Storage = Storage.HSM_OBJECT
    # For WRAPPED versions: the key wrapped under the root key ``root_key_id`` (its CKA_ID, hex),
    # and the HSM's MAC binding it to this key id and version (kms.hsm.hierarchy).
    wrapped_material: bytes = field(default=b"", repr=False)
    root_key_id: str = ""
    material_mac: str = ""

    @property
    def material_digest(self) -> str:
        """What the metadata ledger records of the stored material: SHA-256 over root key id,
        wrapped key and binding MAC, in hex; "" for an HSM_OBJECT version (nothing is stored)."""
        if self.storage is Storage.HSM_OBJECT:
            return ""
        return hashlib.sha256(
            self.root_key_id.encode() + b"\0" + self.wrapped_material + b"\0" + self.material_mac.encode()
        ).hexdigest()

    def must_have_material(self, now: datetime) -> bool:
        """Whether the HSM object must exist: not for a tombstone, nor for a version whose
        destruction is due (the HSM may have destroyed it before the record was updated)."""
        if self.state is VersionState.DESTROYED:
            return False
        due = self.destroy_time is not None and self.destroy_time <= now
        return not (self.state is VersionState.DESTROY_SCHEDULED and due)


@dataclass(frozen=True, slots=True)
class Key:
    key_id: str
    description: str
    primary_version: int
    versions: tuple[KeyVersion, ...]
    create_time: datetime
    update_time: datetime
    rotation_period: timedelta | None = None
    next_rotation_time: datetime | None = None
    min_decryption_version: int = 1
    # Incremented by every stored change; the metadata ledger names each revision's digest.
    revision: int = 0
    # Where new versions' keys live (a rotation follows it; older versions keep theirs).
    storage: Storage = Storage.HSM_OBJECT
    purpose: Purpose = Purpose.ENCRYPT_DECRYPT
    # Privacy settings (kms.domain.privacy): the context entry naming the data subject, how
    # long a version is kept once it stopped being primary, and the bound on erasure finality.
    subject_field: str = ""
    retention_period: timedelta | None = None
    erasure_finality: timedelta | None = None

    def version(self, number: int) -> KeyVersion:
        # Versions are numbered 1..n without gaps, so the tuple index is the number minus one.
        if 1 <= number <= len(self.versions):
            found = self.versions[number - 1]
            if found.version == number:
                return found
        for candidate in self.versions:
            if candidate.version == number:
                return candidate
        raise KeyVersionNotFound(self.key_id, number)

    @property
    def latest_version(self) -> int:
        return max((v.version for v in self.versions), default=0)

    def primary_for_encrypt(self) -> KeyVersion:
        """The version that wraps new data keys; raises if it may not (WrongKeyPurpose for a
        key that does not wrap data keys)."""
        self._require_purpose(Purpose.ENCRYPT_DECRYPT)
        return self._usable(self.version(self.primary_version))

    def version_for_decrypt(self, number: int) -> KeyVersion:
        """The version ``number`` if it may unwrap, else raises naming the version and why."""
        self._require_purpose(Purpose.ENCRYPT_DECRYPT)
        return self._at_or_above_floor(number)

    def version_for_pseudonymize(self, number: int | None = None) -> KeyVersion:
        """The version that computes tokens: the primary, or ``number`` when the caller pins one
        (so that tokens keep joining after a rotation). A pinned version obeys the rules of
        decryption: ENABLED and not below min_decryption_version."""
        self._require_purpose(Purpose.PSEUDONYMIZE)
        if number is None:
            return self._usable(self.version(self.primary_version))
        return self._at_or_above_floor(number)

    def _at_or_above_floor(self, number: int) -> KeyVersion:
        version = self.version(number)
        if number < self.min_decryption_version:
            raise KeyVersionBelowMinimum(self.key_id, number, self.min_decryption_version)
        return self._usable(version)

    def _require_purpose(self, needed: Purpose) -> None:
        if self.purpose is not needed:
            raise WrongKeyPurpose(self.key_id, self.purpose.value, needed.value)

    def _usable(self, version: KeyVersion) -> KeyVersion:
        unusable = _UNUSABLE.get(version.state)
        if unusable is not None:
            raise unusable(self.key_id, version.version)
        return version

    def with_new_primary(self, version: KeyVersion, now: datetime) -> Key:
        """The pure step of a rotation: ``version`` is appended and becomes primary."""
        if version.version != self.latest_version + 1:
            raise ValueError("versions are numbered consecutively")
        return replace(
            self,
            versions=(*self.versions, version),
            primary_version=version.version,
            update_time=now,
            next_rotation_time=now + cadence if (cadence := self.rotation_cadence) else None,
        )

    def is_rotation_due(self, now: datetime, max_wraps: int | None = None) -> bool:
        """Due by its schedule, or because its primary version has wrapped ``max_wraps`` data
        keys (the IV budget of random 96-bit GCM IVs, see docs/wrapped-key-format.md)."""
        if self.next_rotation_time is not None and self.next_rotation_time <= now:
            return True
        return max_wraps is not None and self.version(self.primary_version).usage.data_keys_issued >= max_wraps

    @property
    def rotation_cadence(self) -> timedelta | None:
        """How often the scheduler rotates the key: its rotation_period, or half its
        erasure_finality when that is sooner for a key with a subject_field, so that erasures
        become final in backups in time (kms.domain.privacy)."""
        periods = [self.rotation_period] if self.rotation_period else []
        if self.subject_field and self.erasure_finality:
            periods.append(self.erasure_finality / 2)
        return min(periods) if periods else None

    def rescheduled(self) -> Key:
        """The next rotation time recomputed from the primary version's creation and the cadence
        (after a change of rotation_period or erasure_finality)."""
        cadence = self.rotation_cadence
        next_rotation = self.version(self.primary_version).create_time + cadence if cadence else None
        return replace(self, next_rotation_time=next_rotation)

    def with_rotation_period(self, period: timedelta | None, now: datetime) -> Key:
        """A new schedule counts from the primary version's creation, so shortening the period
        of a key whose primary is already older than the new period makes it due at once."""
        return replace(self, rotation_period=period, update_time=now).rescheduled()

    def with_adopted_version(self, version: KeyVersion, now: datetime) -> Key:
        """Records an existing master key as the next version without changing the primary."""
        if version.version != self.latest_version + 1:
            raise ValueError("versions are numbered consecutively")
        return replace(self, versions=(*self.versions, version), update_time=now)


def new_key(
    key_id: str,
    description: str,
    first_version: KeyVersion,
    now: datetime,
    rotation_period: timedelta | None = None,
) -> Key:
    return Key(
        key_id=validate_key_id(key_id),
        description=description,
        primary_version=first_version.version,
        versions=(first_version,),
        create_time=now,
        update_time=now,
        rotation_period=rotation_period,
        next_rotation_time=now + rotation_period if rotation_period else None,
    )
