"""Changing keys and their versions after creation: settings, states, retirement, destruction.

Every change runs under the key's write lock: read, apply a pure transition from
kms.domain.lifecycle, save. Destroying a master key follows the crash-safe order: the version
is already unusable (DESTROY_SCHEDULED, past its window) when the HSM object is destroyed, and
the tombstone is written after; a crash in between leaves a version that the next scheduler
pass (or reconciliation) finishes, never a usable version without its key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Final, TypedDict

from kms.crashpoints import crash_point
from kms.domain import lifecycle, privacy
from kms.domain.keys import Key, Storage, validate_key_id
from kms.domain.policy import Permission
from kms.domain.privacy import PrivacyRules
from kms.errors import KeyNotFound, VersionStillInUse
from kms.ports import Clock, KeyRepository, MasterKeyInventory
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.keys import KeyService, validate_description
from kms.service.lifecycle_ports import Anchoring
from kms.service.usage import UsageRecorder

log = logging.getLogger(__name__)


class _Unset(Enum):
    """The type of UNSET, a setting the caller leaves as it is (None may be a value)."""

    UNSET = "unset"


UNSET: Final = _Unset.UNSET


class KeyChanges(TypedDict, total=False):
    """The settings ``update_key`` may change, as keyword arguments; absent ones stay."""

    description: str
    rotation_period: timedelta | None
    min_decryption_version: int
    storage: Storage
    retention_period: timedelta | None
    erasure_finality: timedelta | None


class LifecycleService:
    def __init__(
        self,
        repository: KeyRepository,
        master_keys: MasterKeyInventory,
        cache: KeyCache,
        clock: Clock,
        usage: UsageRecorder,
        keys: KeyService,
        authorizer: Authorizer,
        anchor: Anchoring,
        *,
        min_destroy_pending_window: timedelta,
        privacy: PrivacyRules | None = None,
        still_wraps_subjects: Callable[[str, int], bool] = lambda key_id, version: False,
    ) -> None:
        self._privacy = privacy or PrivacyRules(timedelta(hours=1), min_destroy_pending_window)
        # Whether a version still wraps subjects' keys (kms.service.carry): it is destroyed only
        # once they are carried onto a newer version.
        self._still_wraps_subjects = still_wraps_subjects
        self._anchor = anchor
        self._authorizer = authorizer
        self._repository = repository
        self._master_keys = master_keys
        self._cache = cache
        self._clock = clock
        self._usage = usage
        self._keys = keys
        self._min_window = min_destroy_pending_window

    def update_key(
        self,
        call: Call,
        key_id: str,
        *,
        description: str | _Unset = UNSET,
        rotation_period: timedelta | _Unset | None = UNSET,
        min_decryption_version: int | _Unset = UNSET,
        storage: Storage | _Unset = UNSET,
        retention_period: timedelta | _Unset | None = UNSET,
        erasure_finality: timedelta | _Unset | None = UNSET,
    ) -> Key:
        """Changes the given settings only. A new rotation period (or erasure finality) counts
        from the primary version's creation (see Key.rescheduled)."""
        changed = [
            name
            for name, value in (
                ("description", description),
                ("rotation_period", rotation_period),
                ("min_decryption_version", min_decryption_version),
                ("storage", storage),
                ("retention_period", retention_period),
                ("erasure_finality", erasure_finality),
            )
            if value is not UNSET
        ]
        detail = "update " + ",".join(changed)
        if min_decryption_version is not UNSET:
            detail += f" (min_decryption_version {min_decryption_version})"
        call.trail.note(key_id=key_id, detail=detail)
        if description is not UNSET:
            validate_description(description)
        if rotation_period is not UNSET:
            self._keys.validate_rotation_period(rotation_period)
        if retention_period is not UNSET:
            privacy.validate_retention_period(retention_period, self._privacy)
        if erasure_finality is not UNSET:
            privacy.validate_erasure_finality(erasure_finality, self._privacy)

        def update(key: Key, now: datetime) -> Key:
            if description is not UNSET and description != key.description:
                key = replace(key, description=description, update_time=now)
            if rotation_period is not UNSET and rotation_period != key.rotation_period:
                key = key.with_rotation_period(rotation_period, now)
            if min_decryption_version is not UNSET and min_decryption_version != key.min_decryption_version:
                key = lifecycle.set_min_decryption_version(key, min_decryption_version, now)
            if storage is not UNSET and storage is not key.storage:
                key = replace(key, storage=storage, update_time=now)
            if retention_period is not UNSET and retention_period != key.retention_period:
                key = replace(key, retention_period=retention_period, update_time=now)
            if erasure_finality is not UNSET and erasure_finality != key.erasure_finality:
                key = replace(key, erasure_finality=erasure_finality, update_time=now).rescheduled()
            return privacy.check_combination(key)

        return self._change(call, key_id, update, "key updated")

    def disable_version(self, call: Call, key_id: str, version: int) -> Key:
        return self._change(
            call, key_id, lambda k, now: lifecycle.disable(k, version, now), "version disabled", version
        )

    def enable_version(self, call: Call, key_id: str, version: int) -> Key:
        return self._change(call, key_id, lambda k, now: lifecycle.enable(k, version, now), "version enabled", version)

    def schedule_destruction(
        self, call: Call, key_id: str, version: int, pending_window: timedelta | None = None
    ) -> Key:
        window = lifecycle.DEFAULT_DESTROY_PENDING_WINDOW if pending_window is None else pending_window
        call.trail.note(detail=f"pending window {int(window.total_seconds())}s")
        return self._change(
            call,
            key_id,
            lambda k, now: lifecycle.schedule_destruction(k, version, now, window, self._min_window),
            "version destruction scheduled",
            version,
        )

    def cancel_destruction(self, call: Call, key_id: str, version: int) -> Key:
        return self._change(
            call, key_id, lambda k, now: lifecycle.cancel_destruction(k, version, now), "destruction cancelled", version
        )

    def retire_version(
        self, call: Call, key_id: str, version: int, *, min_idle: timedelta, pending_window: timedelta | None = None
    ) -> Key:
        """Disables a version and schedules its destruction, refusing while usage shows it was
        used within ``min_idle`` (counts from every replica, flushed first from this one)."""
        window = lifecycle.DEFAULT_DESTROY_PENDING_WINDOW if pending_window is None else pending_window
        call.trail.note(
            key_id=key_id,
            key_version=version,
            detail=f"min idle {int(min_idle.total_seconds())}s, pending window {int(window.total_seconds())}s",
        )
        validate_key_id(key_id)
        self._authorizer.require(call, Permission.ADMIN, key_id)
        self._usage.flush()

        def retire(key: Key, now: datetime) -> Key:
            used = key.version(version).usage
            if used.last_used_time is not None and used.last_used_time > now - min_idle:
                idle = now - used.last_used_time
                raise VersionStillInUse(
                    key_id,
                    version,
                    f"last used {_ago(idle)} ago ({used.decrypts} decrypts, {used.data_keys_issued} data keys issued "
                    f"in all); it must be idle for {_ago(min_idle)}. Re-wrap what it protects first (kms rewrap)",
                )
            if key.version(version).state.value == "ENABLED":
                key = lifecycle.disable(key, version, now)
            return lifecycle.schedule_destruction(key, version, now, window, self._min_window)

        return self._change(call, key_id, retire, "version retired", version)

    def destroy_if_due(self, call: Call, key_id: str, version: int) -> bool:
        """Destroys the master key of a version whose destruction is due, keeping a tombstone.
        Returns False when there is nothing to do or another replica holds the key."""
        call.trail.note(key_id=key_id, key_version=version)
        with self._repository.try_transaction(key_id) as transaction:
            if transaction is None:
                return False
            key = self._cache.locked(key_id, transaction.key)
            if key is None:
                return False
            now = self._clock.now()
            if not lifecycle.is_destruction_due(key.version(version), now):
                return False
            if key.subject_field and self._still_wraps_subjects(key_id, version):
                log.warning(
                    "destruction waits until the version's subjects are carried",
                    extra={"fields": {"key_id": key_id, "version": version}},
                )
                return False
            call.trail.note(detail=f"master key {key.version(version).master_key_id} destroyed in the HSM")
            self._master_keys.destroy(key.version(version))
            crash_point("destroy_version.after_hsm_destroy")
            destroyed = transaction.save(lifecycle.mark_destroyed(key, version, now))
        self._cache.put(destroyed, transaction.appended)
        self._anchor.anchor_now()
        log.warning("master key destroyed", extra={"fields": {"key_id": key_id, "version": version}})
        return True

    def schedule_planned(
        self, call: Call, key_id: str, plan: Callable[[Key, datetime], list[tuple[int, datetime]]], why: str
    ) -> list[int]:
        """The scheduler's destructions by policy (retention, erasure finality): ``plan`` names
        (version, destroy time) from the key as read under its lock; each is scheduled with the
        pending window up to that time (at least the minimum). Retirement's idle check does not
        apply: these destructions are the key's own settings. Returns the versions scheduled
        (none when another replica holds the key)."""
        call.trail.note(key_id=key_id)
        with self._repository.try_transaction(key_id) as transaction:
            if transaction is None:
                return []
            key = self._cache.locked(key_id, transaction.key)
            if key is None:
                return []
            now = self._clock.now()
            scheduled, changed = [], key
            for number, destroy_time in plan(key, now):
                window = max(destroy_time - now, self._min_window)
                changed = lifecycle.schedule_destruction(changed, number, now, window, self._min_window)
                scheduled.append(number)
            if not scheduled:
                return []
            changed = transaction.save(changed)
            crash_point("policy_destruction.before_commit")
        crash_point("policy_destruction.after_commit")
        self._cache.put(changed, transaction.appended)
        self._anchor.anchor_now()
        call.trail.note(
            key_version=scheduled[-1],
            detail=f"{why}: versions {', '.join(map(str, scheduled))} scheduled for destruction",
        )
        fields = {"key_id": key_id, "versions": scheduled, "why": why}
        log.info("versions scheduled for destruction", extra={"fields": fields})
        return scheduled

    def _change(
        self, call: Call, key_id: str, transition: Callable[[Key, datetime], Key], event: str, version: int = 0
    ) -> Key:
        call.trail.note(key_id=key_id, key_version=version or None)
        validate_key_id(key_id)
        self._authorizer.require(call, Permission.ADMIN, key_id)
        call.check_deadline()
        with self._repository.transaction(key_id) as transaction:
            current = self._cache.locked(key_id, transaction.key)
            if current is None:
                raise KeyNotFound(key_id)
            changed = transition(current, self._clock.now())
            if changed is not current:
                changed = transaction.save(changed)
        self._cache.put(changed, transaction.appended)
        # A change here may take something away (a disabled version, a higher floor): the HSM
        # anchor moves past it before the caller hears of it, so that no rollback undoes it.
        self._anchor.anchor_now()
        fields: dict[str, object] = {"key_id": key_id, "identity": call.identity}
        if version:
            fields["version"] = version
        log.info(event, extra={"fields": fields})
        return changed


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
