"""Per-version usage, counted in memory on the hot path and added to the database in batches.

Recording a use appends one tuple to a deque (atomic in CPython, so no lock to contend for on
the hot path); a background flush every few seconds (and at shutdown) drains it into one UPDATE
per version. Counts are therefore lower bounds: a kill -9 loses at most one flush interval.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from datetime import datetime

from kms.domain.keys import KeyVersion
from kms.domain.usage import UsageDelta
from kms.ports import Clock, KeyRepository

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, repository: KeyRepository, clock: Clock) -> None:
        self._repository = repository
        self._clock = clock
        self._uses: deque[tuple[str, int, int, int, datetime]] = deque()
        self._unwritten: defaultdict[tuple[str, int], UsageDelta] = defaultdict(UsageDelta)
        self._flush_lock = threading.Lock()
        # Wraps by this process since it started, per version, for the hard limit. Updated
        # without a lock: a lost increment under contention is harmless next to the margin.
        self._wraps_here: dict[tuple[str, int], int] = {}

    def wrapped(self, version: KeyVersion) -> None:
        self._uses.append((version.key_id, version.version, 1, 0, self._clock.now()))
        slot = (version.key_id, version.version)
        self._wraps_here[slot] = self._wraps_here.get(slot, 0) + 1

    def wraps_of(self, version: KeyVersion) -> int:
        """An upper estimate of the data keys ``version`` has wrapped: the stored count as the
        version was read, plus every wrap this process made (some of which the stored count may
        already include: the estimate errs high, which is the safe side for a limit)."""
        return version.usage.data_keys_issued + self._wraps_here.get((version.key_id, version.version), 0)

    def unwrapped(self, version: KeyVersion) -> None:
        self._uses.append((version.key_id, version.version, 0, 1, self._clock.now()))

    def flush(self) -> None:
        """Writes what was counted since the last flush. On failure the counts are kept for the
        next attempt."""
        with self._flush_lock:
            pending = self._unwritten
            while True:
                try:
                    key_id, number, wraps, unwraps, when = self._uses.popleft()
                except IndexError:
                    break
                pending[(key_id, number)].add(wraps, unwraps, when)
            if not pending:
                return
            self._repository.add_usage(pending)  # raises and keeps the counts for next time
            self._unwritten = defaultdict(UsageDelta)
