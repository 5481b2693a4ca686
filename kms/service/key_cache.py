"""Key metadata for the hot path, so GenerateDataKey and Decrypt need no database round trip.

A key is read from the database once, checked against the metadata ledger (a row the ledger
does not vouch for is never used, kms.service.integrity), and then kept until the ledger names
a newer revision of it. The ledger is polled every KMS_POLICY_POLL_INTERVAL, so a change made by
another replica (a rotation, a disabled version) is seen here within one poll, however many
versions the key has; changes made through this process apply at once. A key or version this
process does not know makes it read the ledger once more, in a read that begins after the call
asked, before it is reported missing: it may have been made elsewhere (another replica, another
worker of ``kms serve --workers``) since the last poll, and a caller that was told of it must
find it. Callers that miss at once share one read. The key's row is read only if the ledger
knows the key.

If the database cannot be reached, cached keys keep serving until the ledger has gone unread
for ``max_stale`` seconds (KMS_METADATA_MAX_STALE), so a short outage does not stop
encryption; past that, calls fail with DatabaseUnavailable.

Entries only move forward: a key is never replaced by a lower revision of itself, so a slow
read that raced a local change cannot bring back what the change took away. The cache holds at
most ``max_entries`` keys; beyond, the least recently stored go.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from kms.domain.keys import Key
from kms.domain.ledger import LedgerEntry
from kms.errors import KeyMetadataUnverified, KeyNotFound
from kms.ports import KeyRepository

log = logging.getLogger(__name__)


class KeyVerifier(Protocol):
    """What the metadata ledger says of keys (kms.service.integrity.MetadataIntegrity)."""

    def check_usable(self) -> None: ...

    def key_known(self, key_id: str) -> bool: ...

    def expected_revision(self, key_id: str) -> int | None: ...

    def check_key(self, key: Key, *, final: bool = True) -> Key: ...

    def refresh(self) -> None: ...

    def refresh_now(self) -> None: ...

    def row_missing(self, key_id: str) -> None: ...

    def observe(self, entries: list[LedgerEntry]) -> None: ...


# How many times a key's row and the ledger are read again while their revisions differ (changed
# between the two reads) before the row is judged.
SETTLE_ATTEMPTS = 3


class KeyCache:
    def __init__(self, repository: KeyRepository, verifier: KeyVerifier, *, max_entries: int = 100_000) -> None:
        self._repository = repository
        self._verifier = verifier
        self._max_entries = max_entries
        self._entries: OrderedDict[str, Key] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_id: str) -> Key:
        """The key, as the ledger vouches for it. Raises KeyNotFound, KeyMetadataUnverified,
        DatabaseUnavailable (outage past the stale bound) or MetadataIntegrityLost."""
        self._verifier.check_usable()
        key = self._entries.get(key_id)
        if key is not None:
            return key
        return self._load(key_id)

    def put(self, key: Key, appended: list[LedgerEntry] | None = None) -> None:
        """A key this process has just written (committed, with the ledger entries its
        transaction ``appended``): kept once the ledger vouches for it."""
        if appended:
            self._verifier.observe(appended)
        try:
            key = self._verifier.check_key(key, final=False)
        except KeyMetadataUnverified:
            self._verifier.refresh()  # written just now: the ledger this process read is behind
            expected = self._verifier.expected_revision(key.key_id)
            if expected is not None and key.revision < expected:
                return  # another replica has changed it since: the newer one will be read
            key = self._verifier.check_key(key)
        self._store(key)

    def locked(self, key_id: str, stored: Key | None) -> Key | None:
        """The key a write transaction read under its lock (``stored``), once the ledger
        vouches for it; None when neither the database nor the ledger has it. Every change
        starts from this, so that a change made through the service never seals a row someone
        altered outside it. Raises KeyMetadataUnverified."""
        self._verifier.check_usable()
        if stored is None:
            if not self._verifier.key_known(key_id):
                return None
            self._verifier.refresh()
            if not self._verifier.key_known(key_id):
                return None
            self._verifier.row_missing(key_id)
            raise KeyMetadataUnverified(key_id)
        try:
            return self._verifier.check_key(stored, final=False)
        except KeyMetadataUnverified:
            self._verifier.refresh()
            return self._verifier.check_key(stored)

    def caught_up(self, key_id: str) -> Key:
        """The key after reading the ledger once more: for a key, or a version of it, that this
        process does not know yet but that another replica (another worker of this server) may
        have made since the last poll, so that it is not reported missing, or a wrapped key
        under it invalid, once its maker has answered. Callers that miss at once share one
        read of the ledger (an indexed read of its head when nothing changed); a caller that
        keeps naming versions that do not exist is answered InvalidCiphertext each time, and so
        spends its budget of refused calls (KMS_QUOTA_FAILURES)."""
        self._verifier.refresh_now()
        return self.get(key_id)

    def read_through(self, key_id: str) -> Key:
        """The key read from the database now (fresh usage counts), checked like any read."""
        self._verifier.check_usable()
        return self._load(key_id)

    def invalidate(self, key_ids: Iterable[str]) -> None:
        """Drops entries the ledger has newer revisions of (called by the ledger's follower)."""
        with self._lock:
            for key_id in key_ids:
                cached = self._entries.get(key_id)
                expected = self._verifier.expected_revision(key_id)
                if cached is not None and (expected is None or cached.revision < expected):
                    del self._entries[key_id]

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, key_id: str) -> Key:
        if not self._verifier.key_known(key_id):
            self._verifier.refresh_now()  # created elsewhere a moment ago?
            if not self._verifier.key_known(key_id):
                raise KeyNotFound(key_id)
        try:
            key = self._repository.get(key_id)
        except KeyNotFound:
            self._verifier.refresh()  # deleted through the service a moment ago?
            if not self._verifier.key_known(key_id):
                raise
            self._verifier.row_missing(key_id)  # the ledger has it: deleted outside the service
            raise KeyMetadataUnverified(key_id) from None
        try:
            key = self._verifier.check_key(key, final=False)
        except KeyMetadataUnverified:
            key = self._settled(key_id)
        self._store(key)
        return key

    def _settled(self, key_id: str) -> Key:
        """The key's row read again after the ledger, and judged. The row and this replica's
        view of the ledger may simply not be of the same moment: a change committed between the
        two reads (the row is newer), or the ledger's follower reading a newer entry meanwhile
        (the row is older). While their revisions differ, both are read again, a few times,
        before a mismatch counts; a row that matches the ledger's revision is judged at once."""
        attempts = 1
        while True:
            self._verifier.refresh()
            key = self._repository.get(key_id)
            expected = self._verifier.expected_revision(key_id)
            if expected is None or expected == key.revision or attempts == SETTLE_ATTEMPTS:
                return self._verifier.check_key(key)
            attempts += 1

    def _store(self, key: Key) -> None:
        with self._lock:
            cached = self._entries.get(key.key_id)
            if cached is not None and cached.revision > key.revision:
                return  # never backwards
            expected = self._verifier.expected_revision(key.key_id)
            if expected is not None and key.revision < expected:
                return  # the ledger has moved on while this was read: do not keep it
            self._entries[key.key_id] = key
            self._entries.move_to_end(key.key_id)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
