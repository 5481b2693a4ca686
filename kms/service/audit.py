"""The audit log: no call's result is released before its record is written down.

Each call's records are first appended to this replica's journal (one write system call, so
they survive the process being killed the instant after the call returns), and only then is the
result released; if the journal cannot be written the call fails with UNAVAILABLE (fail closed).
A writer thread moves journaled records into the hash-chained, HSM-sealed log in batches. If
that falls behind by more than ``max_lag`` seconds (the database refuses the writes, say) or
``max_backlog`` records, calls fail closed until it catches up; nothing journaled is lost
meanwhile. At start, records a killed process had journaled but not chained are replayed, once
each (every record carries its journal origin, unique in the chain).

With ``fail_open`` a record that cannot be journaled is written to the service log instead and
the call proceeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict

from kms.crashpoints import crash_point
from kms.domain.audit import AuditEntry, AuditRecord, Verification, verify
from kms.domain.policy import Permission
from kms.errors import AuditTampered, AuditUnavailable, KmsError
from kms.ports import AuditJournal, AuditRepository, AuditSeal, Clock
from kms.service.authz import Authorizer
from kms.service.calls import Call

log = logging.getLogger(__name__)

_BACKOFF_START, _BACKOFF_MAX = 0.05, 2.0
# Calls never wait for chaining, so the writer lets records gather: one sealed transaction per
# interval costs little per record, where one per record would cost a commit and a seal each.
CHAIN_INTERVAL = 0.05


class AuditLog:
    def __init__(
        self,
        repository: AuditRepository,
        seal: AuditSeal,
        clock: Clock,
        journal: AuditJournal,
        *,
        fail_open: bool = False,
        max_lag: float = 5.0,
        max_backlog: int = 200_000,
        max_batch: int = 2000,
    ) -> None:
        self._repository = repository
        self._seal = seal
        self._clock = clock
        self._journal = journal
        self._fail_open = fail_open
        self._max_lag = max_lag
        self._max_backlog = max_backlog
        self._max_batch = max_batch
        # (origin, entry, replayed): records journaled but not yet in the chain, in order.
        self._pending: deque[tuple[str, AuditEntry, bool]] = deque()
        self._condition = threading.Condition()
        self._failing_since: float | None = None
        self._tampered = False
        self._stopping = False
        self._flushing = 0
        self._in_flight = 0
        self._pending.extend((origin, entry, True) for origin, entry in journal.recover())
        if self._pending:
            log.warning("replaying audit records journaled before a restart", extra={"fields": {"records": len(self._pending)}})
        self._thread = threading.Thread(target=self._write_loop, name="kms-audit", daemon=True)
        self._thread.start()

    def record(self, entries: Sequence[AuditEntry], *, fail_open: bool = False) -> None:
        """Returns once ``entries`` are journaled; raises AuditUnavailable if they cannot be, or if
        the chain is too far behind (unless failing open, when the entries go to the log)."""
        if not entries:
            return
        try:
            self.check_writable()
            origins = self._journal.append(list(entries))
        except Exception as error:  # whatever stops the journal, the call must not go on unrecorded
            if not isinstance(error, AuditUnavailable):
                log.error("audit journal cannot be written", extra={"fields": {"error": _describe(error)}})
            if self._fail_open or fail_open:
                for entry in entries:
                    log.error("audit record not stored (fail-open)", extra={"fields": asdict(entry)})
                return
            raise AuditUnavailable() from None
        # deque.extend is atomic: no lock on the hot path; the writer polls at CHAIN_INTERVAL.
        self._pending.extend((origin, entry, False) for origin, entry in zip(origins, entries, strict=True))

    def check_writable(self) -> None:
        """Raises AuditUnavailable while the chain lags too far behind the journal, and at once
        when the chain turned out to be tampered with."""
        if self._tampered:
            raise AuditUnavailable()
        failing_since = self._failing_since
        if failing_since is not None and time.monotonic() - failing_since > self._max_lag:
            raise AuditUnavailable()
        if len(self._pending) + self._in_flight > self._max_backlog or not self._thread.is_alive():
            raise AuditUnavailable()

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every record journaled so far is in the chain; False on timeout, and at
        once while the chain cannot be written."""
        deadline = time.monotonic() + timeout
        with self._condition:
            self._flushing += 1
            self._condition.notify_all()
            try:
                while (self._pending or self._in_flight) and self._failing_since is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._condition.wait(min(remaining, 0.05))
            finally:
                self._flushing -= 1
        return not (self._pending or self._in_flight)

    def stop(self, timeout: float = 10.0) -> None:
        """Chains what is pending (within ``timeout``), then ends the writer."""
        self.flush(timeout)
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout=5)
        self._journal.close()

    def _write_loop(self) -> None:
        backoff = _BACKOFF_START
        while True:
            with self._condition:
                if len(self._pending) < self._max_batch and not self._flushing and not self._stopping:
                    self._condition.wait(CHAIN_INTERVAL)  # let a batch gather (woken early by flush)
                if self._stopping:
                    return
            batch = []
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._pending.popleft())  # atomic, as the callers' appends are
                except IndexError:
                    break
            if not batch:
                continue
            self._in_flight = len(batch)
            written = self._write(batch)
            if not written:
                self._pending.extendleft(reversed(batch))  # back in front, in order
            self._in_flight = 0
            with self._condition:
                self._condition.notify_all()
            if written:
                backoff = _BACKOFF_START
            else:
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _write(self, batch: list[tuple[str, AuditEntry, bool]]) -> bool:
        items = [(origin, entry) for origin, entry, _ in batch]
        try:
            if any(replayed for _, _, replayed in batch):
                done = self._repository.recorded_origins([origin for origin, _ in items])
                items = [item for item in items if item[0] not in done]
            crash_point("audit.before_chain")
            if items:
                self._repository.append(items, self._seal, self._clock.now())
        except AuditTampered as error:
            self._tampered = True
            self._failing(logging.CRITICAL, "audit log tampered; refusing to extend it", error.message)
            return False
        except KmsError as error:
            self._failing(logging.ERROR, "audit records not chained yet", error.message)
            return False
        except Exception:
            log.exception("audit records not chained yet")
            self._failing_since = self._failing_since or time.monotonic()
            return False
        self._journal.committed([origin for origin, _, _ in batch])
        if self._failing_since is not None:
            log.info("audit chain caught up", extra={"fields": {"records": len(batch)}})
        self._failing_since = None
        self._tampered = False
        return True

    def _failing(self, level: int, event: str, detail: str) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.log(level, event, extra={"fields": {"error": detail, "pending": len(self._pending)}})


def _describe(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) and error.strerror else None) or type(error).__name__


class AuditService:
    """Reading and verifying the log (the audit-read permission). Both first wait briefly for
    this replica's journaled records to reach the chain, so that they include every call made
    so far."""

    def __init__(self, repository: AuditRepository, seal: AuditSeal, authorizer: Authorizer, log: AuditLog) -> None:
        self._repository = repository
        self._seal = seal
        self._authorizer = authorizer
        self._log = log

    def events(self, call: Call, **filters: object) -> Iterator[AuditRecord]:
        key_id = filters.get("key_id")
        self._authorizer.require(call, Permission.AUDIT_READ, key_id if isinstance(key_id, str) and key_id else "*")
        self._log.flush(timeout=5)
        return self._repository.records(**filters)

    def verify(self, call: Call) -> Verification:
        self._authorizer.require(call, Permission.AUDIT_READ, "*")
        self._log.flush(timeout=5)
        return verify(self._repository.records(), self._repository.checkpoints(), self._seal.check)
