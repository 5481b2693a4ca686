"""Subjects' keys for the hot path: no database round trip and no HSM call for a known subject.

A key with a ``subject_field`` wraps each data key under a key of its own data subject
(kms.domain.privacy explains why and how erasure works). Millions of subjects cannot each be an
HSM object, so a subject's key is 32 random bytes wrapped by the key's master key version inside
the HSM and stored as a row; unwrapped, it lives only here, in a bounded LRU (``capacity``
subjects), each in a ``bytearray`` zeroed when it leaves (evicted, erased, or the process
closing). A known subject's data key is then wrapped in software (kms.crypto.subject_key); a
subject seen for the first time costs one HSM wrap and one INSERT; one not in this process's
memory, one SELECT and one HSM unwrap.

Erasure is decided by the metadata ledger, not by rows: every use first asks whether the
ledger names the subject as erased (a dictionary lookup), so a subject's row restored from a
backup, or an erasure record deleted, changes nothing. Another replica's erasure reaches this
one with the ledger poll (KMS_POLICY_POLL_INTERVAL), which also evicts the subject's key here.
When a row is missing, the ledger is read before judging, so a subject erased elsewhere a moment
ago is reported as erased, never as an unknown or a new subject.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from kms.crypto.random import random_bytes
from kms.crypto.subject_key import DIGEST_PURPOSE, SUBJECT_KEY_LENGTH, subject_digest, subject_key_associated_data
from kms.domain.keys import Key, KeyVersion
from kms.domain.privacy import SubjectKey
from kms.errors import DatabaseUnavailable, InvalidCiphertext, KeyMaterialCorrupt, KeyVersionNotUsable, SubjectErased
from kms.ports import AuditSeal, Clock, MasterKeyCipher, SubjectRepository
from kms.service.usage import UsageRecorder

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 100_000


class ErasureLedger(Protocol):
    """What the metadata ledger says of erasures (kms.service.integrity.MetadataIntegrity)."""

    def erased(self, key_id: str, subject_digest: str) -> bool: ...

    def refresh_now(self) -> None:
        """Reads the ledger with a read that begins after this call does, shared by callers that
        ask at the same time (so that concurrent first uses cost one read, not one each)."""
        ...


class SubjectDigests:
    """Keyed digests of subjects. The key is derived inside the HSM from the seal key once, on
    first use (kms.crypto.subject_key.subject_digest)."""

    def __init__(self, seal: AuditSeal) -> None:
        self._seal = seal
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "SubjectDigests()"

    def of(self, key_id: str, subject: str) -> str:
        key = self._key
        if key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._seal.derive(DIGEST_PURPOSE)
                key = self._key
        return subject_digest(key, key_id, subject)


@dataclass(frozen=True, slots=True)
class SubjectUse:
    """A subject's key for one call: ``version`` is the master key version that wraps its stored
    copy. ``secret`` is a copy taken under the cache's lock, so that an eviction (which zeroes
    the cached key) can never change the key a call is using."""

    key_id: str
    subject_digest: str
    version: int
    secret: bytes = field(repr=False)


@dataclass(slots=True)
class _Entry:
    key_id: str
    subject_digest: str
    version: int
    secret: bytearray = field(repr=False)

    def use(self) -> SubjectUse:
        return SubjectUse(self.key_id, self.subject_digest, self.version, bytes(self.secret))


class SubjectKeys:
    def __init__(
        self,
        repository: SubjectRepository,
        master_keys: MasterKeyCipher,
        digests: SubjectDigests,
        ledger: ErasureLedger,
        clock: Clock,
        usage: UsageRecorder,
        *,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self._repository = repository
        self._master_keys = master_keys
        self._digests = digests
        self._ledger = ledger
        self._clock = clock
        self._usage = usage
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def digest(self, key_id: str, subject: str) -> str:
        return self._digests.of(key_id, subject)

    def for_encrypt(self, key: Key, digest: str) -> SubjectUse:
        """The subject's key, made (one HSM wrap, one INSERT) if the subject has none yet.
        Raises SubjectErased."""
        self.refuse_if_erased(key.key_id, digest)
        cached = self._cached(key, digest)
        if cached is not None:
            return cached
        stored = self._repository.get(key.key_id, digest)
        if stored is None:
            self._ledger.refresh_now()  # erased on another replica a moment ago?
            self.refuse_if_erased(key.key_id, digest)
            return self._create(key, digest)
        return self._load(key, stored)

    def for_decrypt(self, key: Key, digest: str) -> SubjectUse:
        """The subject's key. Raises SubjectErased, or InvalidCiphertext for a subject that has
        no key (no data key can have been issued for it)."""
        self.refuse_if_erased(key.key_id, digest)
        cached = self._cached(key, digest)
        if cached is not None:
            return cached
        stored = self._repository.get(key.key_id, digest)
        if stored is None:
            self._ledger.refresh_now()
            self.refuse_if_erased(key.key_id, digest)
            raise InvalidCiphertext()
        return self._load(key, stored)

    def refuse_if_erased(self, key_id: str, digest: str) -> None:
        if not self._ledger.erased(key_id, digest):
            return
        self.evict([(key_id, digest)])
        when = ""
        try:
            recorded = self._repository.erasure(key_id, digest)
            if recorded is not None:
                when = recorded.erase_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        except DatabaseUnavailable:
            pass  # the ledger decides; the time is only for the message
        raise SubjectErased(key_id, digest, when)

    def evict(self, subjects: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            for slot in subjects:
                entry = self._entries.pop(slot, None)
                if entry is not None:
                    _wipe(entry)

    def on_erasures(self, names: Iterable[str]) -> None:
        """The ledger's listener: erasures appended by any replica ("key id LF digest")."""
        self.evict(tuple(name.split("\n", 1)) for name in names)  # type: ignore[misc]

    def clear(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                _wipe(entry)
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals ---------------------------------------------------------------------------

    def _cached(self, key: Key, digest: str) -> SubjectUse | None:
        slot = (key.key_id, digest)
        with self._lock:
            entry = self._entries.get(slot)
            if entry is None:
                return None
            self._entries.move_to_end(slot)
            use = entry.use()
        try:
            key.version_for_decrypt(use.version)
            return use
        except KeyVersionNotUsable:
            # Carried onto a newer version since it was loaded? The stored row says where it is.
            stored = self._repository.get(key.key_id, digest)
            if stored is None or stored.version == use.version:
                raise
            key.version_for_decrypt(stored.version)
            with self._lock:
                entry.version = stored.version
            return SubjectUse(use.key_id, use.subject_digest, stored.version, use.secret)

    def _create(self, key: Key, digest: str) -> SubjectUse:
        version = key.primary_for_encrypt()
        secret = bytearray(random_bytes(SUBJECT_KEY_LENGTH))
        iv, sealed = self._master_keys.encrypt(
            version, bytes(secret), subject_key_associated_data(key.key_id, digest, version.version)
        )
        self._usage.wrapped(version)
        made = SubjectKey(key.key_id, digest, version.version, iv, sealed, self._clock.now())
        stored = self._repository.add(made)
        if stored is None:
            _zero(secret)
            self._ledger.refresh_now()
            self.refuse_if_erased(key.key_id, digest)
            raise SubjectErased(key.key_id, digest, "")  # recorded, the ledger not yet read
        if stored != made:  # another replica's first use of this subject won
            _zero(secret)
            return self._load(key, stored)
        return self._keep(_Entry(key.key_id, digest, version.version, secret))

    def _load(self, key: Key, stored: SubjectKey) -> SubjectUse:
        version: KeyVersion = key.version_for_decrypt(stored.version)
        try:
            plain = self._master_keys.decrypt(
                version,
                stored.iv,
                stored.sealed,
                subject_key_associated_data(key.key_id, stored.subject_digest, version.version),
            )
        except InvalidCiphertext:
            raise KeyMaterialCorrupt(
                key.key_id, version.version, "a data subject's stored key does not open (altered or moved)"
            ) from None
        self._usage.unwrapped(version)
        if len(plain) != SUBJECT_KEY_LENGTH:
            raise KeyMaterialCorrupt(key.key_id, version.version, "a data subject's stored key has the wrong length")
        return self._keep(_Entry(key.key_id, stored.subject_digest, version.version, bytearray(plain)))

    def _keep(self, entry: _Entry) -> SubjectUse:
        slot = (entry.key_id, entry.subject_digest)
        if self._ledger.erased(*slot):  # erased while it was being loaded
            _wipe(entry)
            self.refuse_if_erased(*slot)
        with self._lock:
            previous = self._entries.pop(slot, None)
            if previous is not None and previous is not entry:
                _wipe(previous)
            self._entries[slot] = entry
            use = entry.use()
            while len(self._entries) > self._capacity:
                _, evicted = self._entries.popitem(last=False)
                _wipe(evicted)
        return use


def _zero(secret: bytearray) -> None:
    secret[:] = bytes(len(secret))


def _wipe(entry: _Entry) -> None:
    _zero(entry.secret)
