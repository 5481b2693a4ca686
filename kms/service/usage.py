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
        # For the hard limit on wraps per version: the stored totals this process last read
        # back (after adding its own counts, so they include every replica's flushed counts),
        # and the wraps reserved here since.
        self._flushed_totals: dict[tuple[str, int], int] = {}
        self._since_flush: dict[tuple[str, int], int] = {}
        self._reserve_lock = threading.Lock()

    def wrapped(self, version: KeyVersion) -> None:
        self._uses.append((version.key_id, version.version, 1, 0, self._clock.now()))

    def reserve_wrap(self, version: KeyVersion, limit: int) -> int | None:
        """Counts one more wrap by ``version`` unless that would take the estimate of its total
        past ``limit``; returns None when reserved, else the estimate (which is not raised).

        The estimate is the newest stored total this process knows (as the version was read, or
        as read back at the last flush) plus the wraps reserved here since. Other replicas' wraps
        of the last scheduler interval are the margin (see docs/security.md)."""
        slot = (version.key_id, version.version)
        with self._reserve_lock:
            total = max(version.usage.data_keys_issued, self._flushed_totals.get(slot, 0)) + self._since_flush.get(
                slot, 0
            )
            if total >= limit:
                return total
            self._since_flush[slot] = self._since_flush.get(slot, 0) + 1
            return None

    def unwrapped(self, version: KeyVersion) -> None:
        self._uses.append((version.key_id, version.version, 0, 1, self._clock.now()))

    def count(self, version: KeyVersion, *, wraps: int = 0, unwraps: int = 0) -> None:
        """Several uses at once, as many calls of ``wrapped`` and ``unwrapped`` would count them:
        what a batch did with the version in one pass through the HSM."""
        self._uses.append((version.key_id, version.version, wraps, unwraps, self._clock.now()))

    def used(self, version: KeyVersion) -> None:
        """A use that wraps and unwraps nothing (a Pseudonymize call): only the last use moves,
        which is what retiring a version asks about."""
        self._uses.append((version.key_id, version.version, 0, 0, self._clock.now()))

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
            totals = self._repository.add_usage(pending)  # raises and keeps the counts for next time
            written, self._unwritten = self._unwritten, defaultdict(UsageDelta)
            with self._reserve_lock:
                for slot, total in totals.items():
                    self._flushed_totals[slot] = total
                    # What was written is in the total now; reservations made since stay counted.
                    self._since_flush[slot] = max(0, self._since_flush.get(slot, 0) - written[slot].wraps)
