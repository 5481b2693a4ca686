"""Key metadata for the hot path, so GenerateDataKey and Decrypt need no database round trip.

An entry is reused for ``ttl`` seconds after it was read. Changes made through this process
update the cache at once; a change made by another replica (a rotation, say) becomes visible
here at most ``ttl`` seconds after it committed, plus one database read. If the database cannot
be reached, an entry up to ``max_stale`` seconds old keeps serving, so a short database outage
does not stop encryption; past that, calls fail with DatabaseUnavailable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kms.domain.keys import Key
from kms.errors import DatabaseUnavailable, KeyNotFound
from kms.ports import KeyRepository

log = logging.getLogger(__name__)


class KeyCache:
    def __init__(
        self,
        repository: KeyRepository,
        ttl: float,
        *,
        max_stale: float = 30.0,
        max_entries: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repository = repository
        self._ttl = ttl
        self._max_stale = max_stale
        self._max_entries = max_entries
        self._monotonic = monotonic
        # key id -> (time read, key or None for "does not exist")
        self._entries: dict[str, tuple[float, Key | None]] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> Key:
        """The key, read from the database at most ``ttl`` seconds ago. Raises KeyNotFound."""
        now = self._monotonic()
        entry = self._entries.get(key_id)
        if entry is not None and now - entry[0] < self._ttl:
            return _found(key_id, entry[1])
        try:
            key: Key | None = self._repository.get(key_id)
        except KeyNotFound:
            key = None
        except DatabaseUnavailable:
            if entry is not None and now - entry[0] < self._max_stale:
                return _found(key_id, entry[1])
            raise
        self._store(key_id, key, now)
        return _found(key_id, key)

    def put(self, key: Key) -> None:
        self._store(key.key_id, key, self._monotonic())

    def invalidate(self, key_id: str) -> None:
        with self._lock:
            self._entries.pop(key_id, None)

    def _store(self, key_id: str, key: Key | None, read_at: float) -> None:
        with self._lock:
            if len(self._entries) >= self._max_entries and key_id not in self._entries:
                # Unknown ids sent at random would otherwise grow the cache without bound.
                self._entries = {k: e for k, e in self._entries.items() if e[1] is not None}
                if len(self._entries) >= self._max_entries:
                    self._entries.clear()
            self._entries[key_id] = (read_at, key)


def _found(key_id: str, key: Key | None) -> Key:
    if key is None:
        raise KeyNotFound(key_id)
    return key
