"""The life of a key version, as pure transitions on a Key.

    ENABLED  <-> DISABLED
    ENABLED | DISABLED  -> DESTROY_SCHEDULED   (destroy_time = now + pending window)
    DESTROY_SCHEDULED   -> DISABLED            (cancelled: never straight back to ENABLED)
    DESTROY_SCHEDULED   -> DESTROYED           (by the scheduler once destroy_time has passed)

The primary version can be neither disabled nor scheduled for destruction: rotate first. A
request for the state a version is already in is answered with the key unchanged, so retries
are harmless.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Final

from kms.domain.keys import Key, KeyVersion, VersionState
from kms.errors import InvalidArgument, InvalidStateTransition

DEFAULT_DESTROY_PENDING_WINDOW = timedelta(days=30)
MAX_DESTROY_PENDING_WINDOW = timedelta(days=365 * 10)


def disable(key: Key, number: int, now: datetime) -> Key:
    version = key.version(number)
    if version.state is VersionState.DISABLED:
        return key
    _refuse_primary(key, number, "disabled")
    _require(version, {VersionState.ENABLED}, "disable")
    return _with_state(key, number, VersionState.DISABLED, now)


def enable(key: Key, number: int, now: datetime) -> Key:
    version = key.version(number)
    if version.state is VersionState.ENABLED:
        return key
    _require(version, {VersionState.DISABLED}, "enable", hint="cancel its destruction first")
    return _with_state(key, number, VersionState.ENABLED, now)


def schedule_destruction(key: Key, number: int, now: datetime, pending_window: timedelta, minimum: timedelta) -> Key:
    if pending_window < minimum:
        raise InvalidArgument(f"destroy pending window must be at least {int(minimum.total_seconds())} seconds")
    if pending_window > MAX_DESTROY_PENDING_WINDOW:
        raise InvalidArgument("destroy pending window must be at most 10 years")
    version = key.version(number)
    if version.state is VersionState.DESTROY_SCHEDULED:
        return key
    _refuse_primary(key, number, "destroyed")
    _require(version, {VersionState.ENABLED, VersionState.DISABLED}, "schedule destruction of")
    return _with_state(key, number, VersionState.DESTROY_SCHEDULED, now, destroy_time=now + pending_window)


def cancel_destruction(key: Key, number: int, now: datetime) -> Key:
    version = key.version(number)
    if version.state is VersionState.DISABLED:
        return key
    _require(version, {VersionState.DESTROY_SCHEDULED}, "cancel destruction of")
    return _with_state(key, number, VersionState.DISABLED, now, destroy_time=None)


def is_destruction_due(version: KeyVersion, now: datetime) -> bool:
    return (
        version.state is VersionState.DESTROY_SCHEDULED
        and version.destroy_time is not None
        and version.destroy_time <= now
    )


def mark_destroyed(key: Key, number: int, now: datetime) -> Key:
    """The record of a destruction the HSM has carried out: a tombstone is kept. A WRAPPED
    version's wrapped key goes with it (copies in database backups stay unwrappable under the
    root key until the root is rotated and retired: see docs/operations.md)."""
    if not is_destruction_due(key.version(number), now):
        raise InvalidStateTransition(f"key {key.key_id!r} version {number} is not due for destruction")
    destroyed = _with_state(key, number, VersionState.DESTROYED, now, destroy_time=now)
    return replace(
        destroyed,
        versions=tuple(
            replace(v, wrapped_material=b"", material_mac="") if v.version == number else v for v in destroyed.versions
        ),
    )


def set_min_decryption_version(key: Key, floor: int, now: datetime) -> Key:
    if not 1 <= floor <= key.primary_version:
        raise InvalidArgument(
            f"min_decryption_version must be between 1 and the primary version {key.primary_version}, not {floor}"
        )
    return replace(key, min_decryption_version=floor, update_time=now)


def _refuse_primary(key: Key, number: int, what: str) -> None:
    if number == key.primary_version:
        raise InvalidStateTransition(
            f"key {key.key_id!r} version {number} is the primary version and cannot be {what}; rotate the key first"
        )


def _require(version: KeyVersion, allowed: set[VersionState], action: str, hint: str = "") -> None:
    if version.state not in allowed:
        suffix = f"; {hint}" if hint else ""
        raise InvalidStateTransition(
            f"cannot {action} key {version.key_id!r} version {version.version}: it is {version.state.value}{suffix}"
        )


class _Keep(Enum):
    KEEP = "keep"


_KEEP_DESTROY_TIME: Final = _Keep.KEEP  # destroy_time may be set to None, so None cannot mean "keep"


def _with_state(
    key: Key,
    number: int,
    state: VersionState,
    now: datetime,
    *,
    destroy_time: datetime | _Keep | None = _KEEP_DESTROY_TIME,
) -> Key:
    def changed(version: KeyVersion) -> KeyVersion:
        if version.version != number:
            return version
        updated = replace(version, state=state)
        if destroy_time is not _KEEP_DESTROY_TIME:
            updated = replace(updated, destroy_time=destroy_time)
        return updated

    return replace(key, versions=tuple(changed(v) for v in key.versions), update_time=now)
