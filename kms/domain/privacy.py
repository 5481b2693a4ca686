"""Privacy settings of a key, as rules: erasure per data subject, and retention by destruction.

Subjects (``subject_field``). Every data key issued under such a key is wrapped by a key of its
own data subject, named by one encryption-context entry (``subject_field``, e.g. "user_id").
A subject's key is 32 random bytes stored only wrapped by the key's master key version, one row
per (key, subject digest); the subject itself is never stored, only its keyed digest.
Erasing a subject deletes that row: its data keys never open again. A database backup taken
before the erasure still holds the row, wrapped by the version of that time, so an erasure is
*final* (backups included) once every version up to the one that last wrapped the subject's
key is destroyed. To bound that time, the scheduler keeps a cadence (``erasure_finality``,
F, default 30 days):

    rotate the key at least every F/2           (rotation_cadence)
    carry live subjects onto the new version     (a version still wrapping subjects is never destroyed)
    destroy a carried version F/2 after it stopped being primary

so that a subject's key erased at time t was last wrapped by a version superseded by t + F/2
and destroyed by t + F. The pending window of those destructions is what is left of F/2 once
the version is carried (never less than the server's minimum).

Versions of a subject key must be HSM token objects (HSM_OBJECT): destroying a WRAPPED version
deletes its wrapped key from the database, but every backup still holds a copy that the HSM root
key unwraps, so the erasure would not be final in backups. A subject key holds a handful of
versions at a time (about three on the cadence), and its subjects are rows, not HSM objects,
however many there are.

Retention (``retention_period``). A version that stopped being primary longer ago than the
retention is scheduled for destruction by the scheduler, whatever its recent use (retirement's
idle check does not apply: retention is deliberate). Re-wrapping would move data onto newer
versions and defeat it, so keys with a retention are never re-wrapped. Retention and subjects
do not combine: carrying subjects onto new versions would keep old data readable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kms.domain.keys import Key, Purpose, Storage, VersionState
from kms.domain.text import validate_text
from kms.errors import InvalidArgument, InvalidPrivacySetting

DEFAULT_ERASURE_FINALITY = timedelta(days=30)
DEFAULT_RETENTION_PENDING_WINDOW = timedelta(days=30)
MAX_ERASURE_FINALITY = timedelta(days=10 * 365)
MAX_RETENTION_PERIOD = timedelta(days=100 * 365)
MAX_SUBJECT_FIELD_BYTES = 128  # an encryption-context entry name (kms.crypto.context)
MAX_SUBJECT_BYTES = 1024  # an encryption-context value
_LIVE = (VersionState.ENABLED, VersionState.DISABLED)


@dataclass(frozen=True, slots=True)
class PrivacyRules:
    """The server's bounds on privacy settings (from its configuration)."""

    min_rotation_period: timedelta
    min_destroy_pending_window: timedelta
    default_erasure_finality: timedelta = DEFAULT_ERASURE_FINALITY
    retention_pending_window: timedelta = DEFAULT_RETENTION_PENDING_WINDOW

    @property
    def min_erasure_finality(self) -> timedelta:
        # F/2 between rotations, and at least the minimum pending window after that.
        return 2 * max(self.min_rotation_period, self.min_destroy_pending_window)


@dataclass(frozen=True, slots=True)
class SubjectKey:
    """One data subject's key, as stored: wrapped (AES-256-GCM in the HSM) by master key version
    ``version``; ``iv`` and ``sealed`` (ciphertext and tag) are the wrapping. kms.crypto.subject_key
    defines the associated data that binds it to its key id, subject digest and version."""

    key_id: str
    subject_digest: str  # hex, kms.crypto.subject_key.subject_digest
    version: int
    iv: bytes
    sealed: bytes = field(repr=False)
    create_time: datetime


@dataclass(frozen=True, slots=True)
class Erasure:
    """The receipt of one erasure. ``final_after_version``: the highest master key version that
    ever wrapped the subject's key (versions only move forward); the erasure is final, backups
    included, once every version up to it is destroyed."""

    key_id: str
    subject_digest: str
    erase_time: datetime
    erased_by: str
    subject_known: bool
    final_after_version: int
    audit_seq: int = 0


@dataclass(frozen=True, slots=True)
class Finality:
    final: bool
    # When the last version up to final_after_version was (or is expected to be) destroyed.
    final_time: datetime | None


# -- settings ------------------------------------------------------------------------------


def validate_subject_field(name: str) -> str:
    validate_text("subject_field", name, MAX_SUBJECT_FIELD_BYTES)
    if not name or len(name.encode("utf-8")) > MAX_SUBJECT_FIELD_BYTES:
        raise InvalidPrivacySetting(f"subject_field must be 1-{MAX_SUBJECT_FIELD_BYTES} bytes")
    return name


def validate_subject(subject: str) -> str:
    """A subject as EraseSubject receives it: an encryption-context value."""
    if not isinstance(subject, str) or not subject:
        raise InvalidArgument("subject must be the non-empty value of the key's subject_field entry")
    if len(subject.encode("utf-8", "surrogatepass")) > MAX_SUBJECT_BYTES:
        raise InvalidArgument(f"subject must be at most {MAX_SUBJECT_BYTES} bytes")
    try:
        subject.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("subject is not valid Unicode") from None
    return subject


def validate_retention_period(period: timedelta | None, rules: PrivacyRules) -> None:
    if period is None:
        return
    if period < rules.min_rotation_period:
        raise InvalidPrivacySetting(
            f"retention_period must be at least {int(rules.min_rotation_period.total_seconds())} seconds"
        )
    if period > MAX_RETENTION_PERIOD:
        raise InvalidPrivacySetting("retention_period must be at most 100 years")


def validate_erasure_finality(finality: timedelta | None, rules: PrivacyRules) -> None:
    if finality is None:
        return
    if finality < rules.min_erasure_finality:
        raise InvalidPrivacySetting(
            f"erasure_finality must be at least {int(rules.min_erasure_finality.total_seconds())} seconds (twice the "
            "longer of the minimum rotation period and the minimum destroy pending window)"
        )
    if finality > MAX_ERASURE_FINALITY:
        raise InvalidPrivacySetting("erasure_finality must be at most 10 years")


def check_combination(key: Key) -> Key:
    """Returns ``key`` if its privacy settings fit together (see the module docstring)."""
    _check(key.subject_field, key.purpose, key.storage, key.retention_period, key.erasure_finality)
    return key


def settle_new_key(
    subject_field: str,
    retention_period: timedelta | None,
    erasure_finality: timedelta | None,
    storage: Storage | None,
    purpose: Purpose,
    rules: PrivacyRules,
) -> tuple[Storage | None, timedelta | None]:
    """Checks a new key's privacy settings before anything is made; returns its storage and its
    erasure finality (the server's default for a key with a subject_field). A key with a
    subject_field must be HSM_OBJECT; one with a retention_period is HSM_OBJECT unless WRAPPED is
    asked for, because only a destroyed HSM object is gone from backups too (a WRAPPED version
    stays readable in backups until its root key is rotated and retired)."""
    if retention_period is not None:
        storage = storage or Storage.HSM_OBJECT
    if subject_field:
        validate_subject_field(subject_field)
        storage = storage or Storage.HSM_OBJECT
        erasure_finality = erasure_finality or rules.default_erasure_finality
    validate_retention_period(retention_period, rules)
    validate_erasure_finality(erasure_finality, rules)
    if storage is not None:
        _check(subject_field, purpose, storage, retention_period, erasure_finality)
    elif erasure_finality is not None:
        raise InvalidPrivacySetting("erasure_finality applies to keys with a subject_field only")
    return storage, erasure_finality


def _check(
    subject_field: str,
    purpose: Purpose,
    storage: Storage,
    retention_period: timedelta | None,
    erasure_finality: timedelta | None,
) -> None:
    if subject_field:
        if purpose is not Purpose.ENCRYPT_DECRYPT:
            raise InvalidPrivacySetting("subject_field applies to ENCRYPT_DECRYPT keys only")
        if storage is not Storage.HSM_OBJECT:
            raise InvalidPrivacySetting(
                "a key with a subject_field keeps its versions as HSM objects (storage HSM_OBJECT): a destroyed "
                "WRAPPED version stays in every database backup, so erasures would never be final there"
            )
        if retention_period is not None:
            raise InvalidPrivacySetting(
                "retention_period and subject_field do not combine: subjects are carried onto new versions, which "
                "would keep old data readable; erase subjects instead"
            )
    elif erasure_finality is not None:
        raise InvalidPrivacySetting("erasure_finality applies to keys with a subject_field only")


# -- versions over time ----------------------------------------------------------------------


def superseded_at(key: Key, number: int) -> datetime | None:
    """When version ``number`` stopped being primary: the next version's creation (versions
    become primary in order); None for the newest version."""
    if number >= key.latest_version:
        return None
    return key.version(number + 1).create_time


def retention_due(key: Key, now: datetime) -> list[int]:
    """Versions to schedule for destruction by retention: superseded longer ago than the
    retention and still ENABLED or DISABLED (never the primary)."""
    if key.retention_period is None:
        return []
    due = []
    for version in key.versions:
        since = superseded_at(key, version.version)
        if (
            version.version != key.primary_version
            and version.state in _LIVE
            and since is not None
            and since + key.retention_period <= now
        ):
            due.append(version.version)
    return due


def finality_plan(
    key: Key, now: datetime, carried: Callable[[int], bool], min_window: timedelta
) -> list[tuple[int, datetime]]:
    """(version, destroy time) for the superseded versions of a subject key that no longer wrap
    any subject (``carried(version)``): destroyed F/2 after they stopped being primary, and no
    sooner than the minimum pending window from now."""
    if not key.subject_field or key.erasure_finality is None:
        return []
    half = key.erasure_finality / 2
    plan = []
    for version in key.versions:
        since = superseded_at(key, version.version)
        if version.version == key.primary_version or version.state not in _LIVE or since is None:
            continue
        if carried(version.version):
            plan.append((version.version, max(since + half, now + min_window)))
    return plan


def finality(key: Key, erasure: Erasure, now: datetime) -> Finality:
    """Whether ``erasure`` is final in backups, and when it was or is expected to be: the
    destruction of the last version up to ``final_after_version``. Expected times come from
    destroy times already scheduled, else from the cadence (a version superseded at s is
    destroyed at s + F/2; the primary is superseded at its next rotation); unknown without one."""
    if erasure.final_after_version == 0:
        return Finality(True, erasure.erase_time)
    relevant = [v for v in key.versions if v.version <= erasure.final_after_version]
    if relevant and all(v.state is VersionState.DESTROYED for v in relevant):
        times = [v.destroy_time for v in relevant if v.destroy_time is not None]
        return Finality(True, max(times) if times else None)
    half = key.erasure_finality / 2 if key.erasure_finality is not None else None
    expected: list[datetime] = []
    for version in relevant:
        if version.state is VersionState.DESTROYED:
            continue
        if version.state is VersionState.DESTROY_SCHEDULED and version.destroy_time is not None:
            expected.append(version.destroy_time)
            continue
        if half is None:
            return Finality(False, None)
        since = superseded_at(key, version.version)
        if since is None:
            since = key.next_rotation_time
        if since is None:
            return Finality(False, None)
        expected.append(max(since + half, now))
    return Finality(False, max(expected) if expected else None)
