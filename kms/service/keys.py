"""Creating, reading and rotating keys.

A new version's key is made in the HSM before the database transaction that records it, and
outside it, so that no database lock is held across HSM work (on SQLite that lock is the whole
database's):

- WRAPPED (the default): the key is generated in the HSM and comes back only wrapped under the
  root key (kms.hsm.hierarchy). Nothing is left in the HSM, so a crash anywhere loses nothing and
  leaves nothing behind: either the transaction committed the version with its wrapped key, or
  there is no version. Inside the transaction, under the key's lock, the wrapped key is bound to
  the version number the slot turned out to have.
- HSM_OBJECT: the key is a token object, created (or a leftover of an earlier attempt adopted)
  for the slot the key's cached state says is next, then recorded by the transaction. A crash
  between the two leaves an object no committed version names (a leftover), never a committed
  version without its object; the next attempt at that slot, or start-up reconciliation, adopts
  it. Making the object is serialized per key by a lock of its own (not the database's); if the
  slot was taken meanwhile (a replica that made its version another way), the object this
  request made is destroyed (it never wrapped anything) and the request tries again.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from kms.crashpoints import crash_point
from kms.domain import privacy
from kms.domain.keys import (
    Key,
    KeyVersion,
    Purpose,
    Storage,
    VersionState,
    WrappedMaterial,
    new_key,
    validate_key_id,
)
from kms.domain.ledger import LedgerEntry
from kms.domain.policy import Permission
from kms.domain.privacy import PrivacyRules
from kms.domain.text import validate_text
from kms.errors import (
    ConcurrentCreation,
    InvalidArgument,
    InvalidPageToken,
    InvalidRotationPeriod,
    KeyAlreadyExists,
    KeyNotFound,
    KmsError,
)
from kms.ports import Clock, KeyRepository, KeyTransaction, MasterKeyInventory
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.lifecycle_ports import Anchoring
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
        master_keys: MasterKeyInventory,
        cache: KeyCache,
        clock: Clock,
        usage: UsageRecorder,
        authorizer: Authorizer,
        anchor: Anchoring,
        *,
        min_rotation_period: timedelta,
        default_storage: Storage = Storage.WRAPPED,
        privacy_rules: PrivacyRules | None = None,
    ) -> None:
        self._privacy_rules = privacy_rules or PrivacyRules(min_rotation_period, timedelta(hours=24))
        self._default_storage = default_storage
        self._anchor = anchor
        self._authorizer = authorizer
        self._repository = repository
        self._master_keys = master_keys
        self._cache = cache
        self._clock = clock
        self._usage = usage
        self._min_rotation_period = min_rotation_period

    def create_key(
        self,
        call: Call,
        key_id: str,
        description: str = "",
        rotation_period: timedelta | None = None,
        *,
        storage: Storage | None = None,
        purpose: Purpose = Purpose.ENCRYPT_DECRYPT,
        subject_field: str = "",
        retention_period: timedelta | None = None,
        erasure_finality: timedelta | None = None,
    ) -> Key:
        """A new key with version 1. Privacy settings (kms.domain.privacy): ``subject_field``
        (fixed for the key's life), ``retention_period``, ``erasure_finality``."""
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        validate_description(description)
        self.validate_rotation_period(rotation_period)
        storage, erasure_finality = privacy.settle_new_key(
            subject_field, retention_period, erasure_finality, storage, purpose, self._privacy_rules
        )
        self._authorizer.require(call, Permission.ADMIN, key_id)
        storage = storage or self._default_storage
        call.check_deadline()
        for _attempt in range(_SLOT_ATTEMPTS):
            with self._serialized(key_id, storage):
                prepared = self._prepare(key_id, 1, storage, _kind(purpose))
                crash_point("create_key.after_hsm_create")
                with self._repository.transaction(key_id) as transaction:
                    if transaction.key is not None or self._cache.locked(key_id, None) is not None:
                        self._discard(prepared)
                        raise KeyAlreadyExists(key_id)
                    first = self._version_for(key_id, 1, prepared)
                    key = transaction.save(
                        replace(
                            new_key(key_id, description, first, first.create_time, rotation_period),
                            storage=storage,
                            purpose=purpose,
                            subject_field=subject_field,
                            retention_period=retention_period,
                            erasure_finality=erasure_finality,
                        ).rescheduled()
                    )
                    crash_point("create_key.before_commit")
            break
        crash_point("create_key.after_commit")
        self._cache.put(key, transaction.appended)
        self._anchor.anchor_if_unanchored()
        call.trail.note(key_version=1, detail=_schedule(rotation_period))
        log.info("key created", extra={"fields": {"key_id": key_id, "identity": call.identity}})
        return key

    def get_key(self, call: Call, key_id: str) -> Key:
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        self._authorizer.require_any(call, key_id)
        self._usage.flush()  # so that this replica's latest uses show
        return self._cache.read_through(key_id)

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
        rotated, appended = self._rotate_with_retries(key_id, "rotate_key")
        crash_point("rotate_key.after_commit")
        call.trail.note(key_version=rotated.primary_version)
        return self._rotated(rotated, call.identity, appended)

    def rotate_if_due(self, call: Call, key_id: str, now: datetime, max_wraps: int | None = None) -> Key | None:
        """The scheduler's rotation: only if the key is still due once its lock is held (by its
        schedule or its primary version's wrap count), and only if no other replica holds the
        lock (it is rotating the key, or just has)."""
        call.trail.note(key_id=key_id)
        try:
            cached = self._cache.read_through(key_id)  # wrap counts move without a new revision
        except KeyNotFound:
            return None
        if not cached.is_rotation_due(now, max_wraps):
            return None
        for _attempt in range(_SLOT_ATTEMPTS):
            with self._serialized(key_id, cached.storage):
                prepared = self._prepare(key_id, self._next_slot(key_id, cached), cached.storage, _kind(cached.purpose))
                crash_point("scheduled_rotation.after_hsm_create")
                with self._repository.try_transaction(key_id) as transaction:
                    current = None if transaction is None else self._cache.locked(key_id, transaction.key)
                    if transaction is None or current is None or not current.is_rotation_due(now, max_wraps):
                        self._discard(prepared)
                        return None  # another replica holds it, has rotated it, or it is gone
                    if not self._fits(prepared, current):
                        self._discard(prepared)
                        cached = current
                        continue
                    wraps = current.version(current.primary_version).usage.data_keys_issued
                    why = (
                        "rotation cadence passed"
                        if current.next_rotation_time is not None and current.next_rotation_time <= now
                        else f"primary version wrapped {wraps} data keys"
                    )
                    rotated = self._save_rotation(transaction, current, prepared, "scheduled_rotation")
            crash_point("scheduled_rotation.after_commit")
            call.trail.note(key_version=rotated.primary_version, detail=why)
            return self._rotated(rotated, call.identity, transaction.appended)
        raise ConcurrentCreation(key_id)

    def _rotate_with_retries(self, key_id: str, step: str) -> tuple[Key, list[LedgerEntry]]:
        try:
            cached = self._cache.get(key_id)
        except KeyNotFound:
            cached = None
        for _attempt in range(_SLOT_ATTEMPTS):
            storage = cached.storage if cached is not None else self._default_storage
            kind = _kind(cached.purpose if cached is not None else Purpose.ENCRYPT_DECRYPT)
            with self._serialized(key_id, storage):
                prepared = self._prepare(key_id, self._next_slot(key_id, cached), storage, kind)
                crash_point(f"{step}.after_hsm_create")
                with self._repository.transaction(key_id) as transaction:
                    current = self._cache.locked(key_id, transaction.key)
                    if current is None:
                        self._discard(prepared)
                        raise KeyNotFound(key_id)
                    if not self._fits(prepared, current):
                        self._discard(prepared)
                        cached = current
                        continue
                    rotated = self._save_rotation(transaction, current, prepared, step)
            return rotated, transaction.appended
        raise ConcurrentCreation(key_id)

    def _next_slot(self, key_id: str, cached: Key | None) -> int:
        """The version number a new version will take. For a token object it is read afresh
        (with the preparation lock held, no other one is being made): the object is labelled
        for it, and a stale guess would take a committed version's object for a leftover."""
        if cached is not None and cached.storage is Storage.WRAPPED:
            return cached.latest_version + 1
        try:
            return self._repository.get(key_id).latest_version + 1
        except KeyNotFound:
            return 1

    @contextmanager
    def _serialized(self, key_id: str, storage: Storage) -> Iterator[None]:
        """HSM_OBJECT versions are made one at a time per key (a concurrent request would
        otherwise take this request's fresh object for a leftover); wrapped material needs no
        such order."""
        if storage is Storage.HSM_OBJECT:
            with self._repository.preparation_lock(key_id):
                yield
        else:
            yield

    def _save_rotation(self, transaction: KeyTransaction, current: Key, prepared: _Prepared, step: str) -> Key:
        version = self._version_for(current.key_id, current.latest_version + 1, prepared)
        rotated = transaction.save(current.with_new_primary(version, self._clock.now()))
        crash_point(f"{step}.before_commit")
        return rotated

    # -- making a version's key before the transaction --------------------------------------

    def _prepare(self, key_id: str, slot: int, storage: Storage, kind: str) -> _Prepared:
        """The key for a new version, of ``kind`` ("aes" or "hmac"), made in the HSM with no
        database lock held."""
        if storage is Storage.WRAPPED:
            return _Prepared(storage, slot, material=self._master_keys.generate_material(kind), kind=kind)
        version, created = self._master_key_for(key_id, slot, kind)
        return _Prepared(storage, slot, version=version, created=created, kind=kind)

    @staticmethod
    def _fits(prepared: _Prepared, current: Key) -> bool:
        """Whether what was prepared can be the key's next version: wrapped material fits any
        slot of a key stored that way; a token object only the slot it is labelled for."""
        if prepared.storage is not current.storage or prepared.kind != _kind(current.purpose):
            return False
        return prepared.storage is Storage.WRAPPED or prepared.slot == current.latest_version + 1

    def _version_for(self, key_id: str, slot: int, prepared: _Prepared) -> KeyVersion:
        if prepared.material is not None:
            return self._master_keys.wrapped_version(key_id, slot, prepared.material)
        assert prepared.version is not None
        return prepared.version

    def _discard(self, prepared: _Prepared) -> None:
        """A token object this request created and will not record: it never wrapped anything,
        so it goes (wrapped material left in no HSM and needs nothing)."""
        if prepared.created and prepared.version is not None:
            try:
                self._master_keys.destroy(prepared.version)
            except KmsError as error:
                log.warning(
                    "unrecorded master key left for reconciliation",
                    extra={"fields": {"master_key_id": prepared.version.master_key_id, "error": error.message}},
                )

    def _rotated(self, rotated: Key, identity: str, appended: list[LedgerEntry]) -> Key:
        self._cache.put(rotated, appended)
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

    def _master_key_for(self, key_id: str, version: int, kind: str) -> tuple[KeyVersion, bool]:
        """A token object of ``kind`` for a version slot, and whether this call created it.

        Called with the key's preparation lock held, so no other request is making this slot:
        a sound object of that kind already labelled for it is a leftover of an attempt that did
        not commit, and it is adopted rather than another one made.
        """
        leftovers = sorted(
            (found for found in self._master_keys.find(key_id, version) if found.sound and found.kind == kind),
            key=lambda found: found.create_time,
        )
        if not leftovers:
            return self._master_keys.create(key_id, version, kind), True
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
        ), False


@dataclass(frozen=True)
class _Prepared:
    storage: Storage
    slot: int
    material: WrappedMaterial | None = None
    version: KeyVersion | None = None
    created: bool = False
    kind: str = "aes"


_SLOT_ATTEMPTS = 3


def _kind(purpose: Purpose) -> str:
    """The kind of HSM key a purpose's versions are: AES-256 to wrap data keys, an HMAC key to
    pseudonymize."""
    return "hmac" if purpose is Purpose.PSEUDONYMIZE else "aes"


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
