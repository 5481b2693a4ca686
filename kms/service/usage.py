"""Per-version usage, counted in memory on the hot path and added to the database in batches.

Recording a use costs a dictionary update under a lock; a background flush every few seconds
(and at shutdown) turns all uses since the last one into one UPDATE per version. Counts are
therefore lower bounds: a kill -9 loses at most one flush interval of them.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from kms.domain.keys import KeyVersion
from kms.domain.usage import UsageDelta
from kms.errors import KmsError
from kms.ports import Clock, KeyRepository

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, repository: KeyRepository, clock: Clock) -> None:
        self._repository = repository
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: defaultdict[tuple[str, int], UsageDelta] = defaultdict(UsageDelta)

    def wrapped(self, version: KeyVersion) -> None:
        self._record(version, 1, 0)

    def unwrapped(self, version: KeyVersion) -> None:
        self._record(version, 0, 1)

    def _record(self, version: KeyVersion, wraps: int, unwraps: int) -> None:
        now = self._clock.now()
        with self._lock:
            self._pending[(version.key_id, version.version)].add(wraps, unwraps, now)

    def flush(self) -> None:
        """Writes what was counted since the last flush. On failure the counts are kept for the
        next attempt."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(UsageDelta)
        if not pending:
            return
        try:
            self._repository.add_usage(pending)
        except KmsError:
            with self._lock:
                for slot, delta in pending.items():
                    self._pending[slot].add(delta.wraps, delta.unwraps, delta.last_used or self._clock.now())
            raise
