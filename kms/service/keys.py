"""Creating, reading and rotating keys.

Crash safety rests on one ordering: a version's master key is created in the HSM *before* the
database transaction that records the version commits, and both happen while the key's write
lock is held. A crash between the two leaves an HSM object that no committed version names (a
leftover); it can never leave a committed version without its object. The next create or
rotation of that version slot, or the start-up reconciliation, adopts the leftover instead of
generating another key, so nothing accumulates and nothing that might protect data is thrown
away.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from kms.crashpoints import crash_point
from kms.domain.keys import Key, KeyVersion, VersionState, new_key, validate_key_id
from kms.domain.policy import Permission
from kms.domain.text import validate_text
from kms.errors import InvalidArgument, InvalidPageToken, InvalidRotationPeriod, KeyAlreadyExists, KeyNotFound
from kms.ports import Clock, KeyRepository, KeyTransaction, MasterKeyStore
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.usage import UsageRecorder

log = logging.getLogger(__name__)

MAX_DESCRIPTION_LENGTH = 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_ROTATION_PERIOD = timedelta(days=100 * 365)
MAX_LIST_SCANS = 20  # pages read per ListKeys call when filtering by permission


class KeyService:
    def __init__(
        self,
        repository: KeyRepository,
        master_keys: MasterKeyStore,
        cache: KeyCache,
        clock: Clock,
        usage: UsageRecorder,
        authorizer: Authorizer,
        *,
        min_rotation_period: timedelta,
    ) -> None:
        self._authorizer = authorizer
        self._repository = repository
        self._master_keys = master_keys
        self._cache = cache
        self._clock = clock
        self._usage = usage
        self._min_rotation_period = min_rotation_period

    def create_key(
        self, call: Call, key_id: str, description: str = "", rotation_period: timedelta | None = None
    ) -> Key:
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        validate_description(description)
        self.validate_rotation_period(rotation_period)
        self._authorizer.require(call, Permission.ADMIN, key_id)
        call.check_deadline()
        with self._repository.transaction(key_id) as transaction:
            if transaction.key is not None:
                raise KeyAlreadyExists(key_id)
            first = self._master_key_for(key_id, 1)
            crash_point("create_key.after_hsm_create")
            key = new_key(key_id, description, first, self._clock.now(), rotation_period)
            transaction.save(key)
            crash_point("create_key.before_commit")
        crash_point("create_key.after_commit")
        self._cache.put(key)
        call.trail.note(key_version=1, detail=_schedule(rotation_period))
        log.info("key created", extra={"fields": {"key_id": key_id, "identity": call.identity}})
        return key

    def get_key(self, call: Call, key_id: str) -> Key:
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        self._authorizer.require_any(call, key_id)
        self._usage.flush()  # so that this replica's latest uses show
        key = self._repository.get(key_id)
        self._cache.put(key)
        return key

    def list_keys(self, call: Call, page_size: int = 0, page_token: str = "") -> tuple[Sequence[Key], str]:
        """One page of the keys the caller holds some permission on, in id order, and the token
        of the next page ("" after the last). When most keys are not the caller's, a page may be
        short, and the last page may be empty."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_page_token(page_token)
        keys, token = self._page(call, limit, after)
        call.trail.note(detail=f"{len(keys)} keys" + (" (more follow)" if token else ""))
        return keys, token

    def _page(self, call: Call, limit: int, after: str | None) -> tuple[Sequence[Key], str]:
        if self._authorizer.is_superuser(call):
            keys = self._repository.list_keys(limit + 1, after)
            if len(keys) > limit:
                return keys[:limit], _encode_page_token(keys[limit - 1].key_id)
            return keys, ""
        visible: list[Key] = []
        for _scan in range(MAX_LIST_SCANS):
            batch = self._repository.list_keys(limit, after)
            for key in batch:
                after = key.key_id
                if self._authorizer.may_see(call, key.key_id):
                    visible.append(key)
                    if len(visible) == limit:
                        return visible, _encode_page_token(after)
            if len(batch) < limit:
                return visible, ""
        return visible, _encode_page_token(after) if after else ""

    def rotate_key(self, call: Call, key_id: str) -> Key:
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        self._authorizer.require(call, Permission.ROTATE, key_id)
        call.check_deadline()
        with self._repository.transaction(key_id) as transaction:
            if transaction.key is None:
                raise KeyNotFound(key_id)
            rotated = self._rotate(transaction, transaction.key, "rotate_key")
        crash_point("rotate_key.after_commit")
        call.trail.note(key_version=rotated.primary_version)
        return self._rotated(rotated, call.identity)

    def rotate_if_due(self, call: Call, key_id: str, now: datetime, max_wraps: int | None = None) -> Key | None:
        """The scheduler's rotation: only if the key is still due once its lock is held (by its
        schedule or its primary version's wrap count), and only if no other replica holds the
        lock (it is rotating the key, or just has)."""
        call.trail.note(key_id=key_id)
        with self._repository.try_transaction(key_id) as transaction:
            if transaction is None or transaction.key is None or not transaction.key.is_rotation_due(now, max_wraps):
                return None
            current = transaction.key
            why = (
                "rotation period passed"
                if current.rotation_period is not None and current.next_rotation_time is not None
                and current.next_rotation_time <= now
                else f"primary version wrapped {current.version(current.primary_version).usage.data_keys_issued} data keys"
            )
            rotated = self._rotate(transaction, current, "scheduled_rotation")
        crash_point("scheduled_rotation.after_commit")
        call.trail.note(key_version=rotated.primary_version, detail=why)
        return self._rotated(rotated, call.identity)

    def _rotate(self, transaction: KeyTransaction, current: Key, step: str) -> Key:
        version = self._master_key_for(current.key_id, current.latest_version + 1)
        crash_point(f"{step}.after_hsm_create")
        rotated = current.with_new_primary(version, self._clock.now())
        transaction.save(rotated)
        crash_point(f"{step}.before_commit")
        return rotated

    def _rotated(self, rotated: Key, identity: str) -> Key:
        self._cache.put(rotated)
        log.info(
            "key rotated",
            extra={"fields": {"key_id": rotated.key_id, "version": rotated.primary_version, "identity": identity}},
        )
        return rotated

    def validate_rotation_period(self, period: timedelta | None) -> None:
        if period is None:
            return
        if period < self._min_rotation_period:
            raise InvalidRotationPeriod(
                f"rotation_period must be at least {int(self._min_rotation_period.total_seconds())} seconds"
            )
        if period > MAX_ROTATION_PERIOD:
            raise InvalidRotationPeriod("rotation_period must be at most 100 years")

    def _master_key_for(self, key_id: str, version: int) -> KeyVersion:
        """The master key for a version slot, called with the key's write lock held.

        Holding the lock, no other request can be creating this slot, so a sound object already
        labelled for it is a leftover of an attempt that did not commit: it is adopted.
        """
        leftovers = sorted(
            (found for found in self._master_keys.find(key_id, version) if found.sound),
            key=lambda found: found.create_time,
        )
        if not leftovers:
            return self._master_keys.create(key_id, version)
        chosen = leftovers[-1]
        log.warning(
            "adopting leftover master key",
            extra={"fields": {"key_id": key_id, "version": version, "master_key_id": chosen.master_key_id}},
        )
        return KeyVersion(
            key_id=key_id,
            version=version,
            state=VersionState.ENABLED,
            master_key_id=chosen.master_key_id,
            master_key_label=chosen.label,
            create_time=chosen.create_time,
        )


def validate_description(description: str) -> None:
    validate_text("description", description, MAX_DESCRIPTION_LENGTH, multiline=True)


def _schedule(rotation_period: timedelta | None) -> str:
    if rotation_period is None:
        return "rotated on demand"
    return f"rotation period {int(rotation_period.total_seconds())}s"


def _encode_page_token(last_key_id: str) -> str:
    return base64.urlsafe_b64encode(b"after:" + last_key_id.encode("ascii")).decode("ascii")


def _decode_page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        if not raw.startswith(b"after:"):
            raise ValueError
        return validate_key_id(raw[len(b"after:") :].decode("ascii"))
    except (ValueError, binascii.Error, UnicodeError, InvalidArgument):
        raise InvalidPageToken("page_token is not one this service issued") from None
