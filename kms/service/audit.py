"""The audit log: no call's result is released before its record is written down.

Each call's records are first appended to this replica's journal (a copy into a memory-mapped
file, so they survive the process being killed the instant after the call returns), and only
then is the result released; if the journal cannot be written the call fails with UNAVAILABLE
(fail closed). A writer thread moves journaled records into the hash-chained, HSM-sealed log in
batches. Calls fail closed too while the oldest record not yet in the chain has waited longer
than ``max_lag`` seconds, whatever the cause: a database that refuses writes, or one whose
writes hang on a lock, a slow disk or a dead connection. Nothing journaled is lost meanwhile.

A batch whose commit may have happened although the writer saw an error (a lost
acknowledgement) is re-sent only after asking which of its records the chain already holds,
so replaying is idempotent whatever failed. At start, records a killed process had journaled
but not chained are replayed the same way (every record carries its journal origin, unique in
the chain).

With ``fail_open`` a record that cannot be journaled is written to the service log instead and
the call proceeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from kms.crashpoints import crash_point
from kms.crypto.context import encode_context
from kms.domain.audit import FIELD_LIMITS, AuditEntry, AuditRecord, Verification, context_digest, verify
from kms.domain.keys import validate_key_id
from kms.domain.policy import Permission
from kms.domain.text import validate_text
from kms.errors import AuditTampered, AuditUnavailable, KmsError
from kms.ports import AuditJournal, AuditRepository, AuditSeal, Clock
from kms.service.authz import Authorizer
from kms.service.calls import Call

log = logging.getLogger(__name__)

_BACKOFF_START, _BACKOFF_MAX = 0.05, 2.0
# Calls never wait for chaining, so the writer lets records gather: one sealed transaction per
# interval costs little per record, where one per record would cost a commit and a seal each.
CHAIN_INTERVAL = 0.05


@dataclass(slots=True)
class _Pending:
    origin: str
    entry: AuditEntry
    # The chain may hold it already: replayed from the journal after a restart, or part of a
    # batch whose commit outcome is unknown. Such records are checked by origin before sending.
    maybe_chained: bool
    journaled: float  # time.monotonic() when it was journaled


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repository = repository
        self._seal = seal
        self._clock = clock
        self._journal = journal
        self._fail_open = fail_open
        self._max_lag = max_lag
        self._max_backlog = max_backlog
        self._max_batch = max_batch
        self._monotonic = monotonic
        # Records journaled but not yet in the chain, in order.
        self._pending: deque[_Pending] = deque()
        self._in_flight: list[_Pending] = []
        self._condition = threading.Condition()
        self._failing_since: float | None = None
        self._tampered = False
        self._stopping = False
        self._flushing = 0
        recovered = journal.recover()
        started = monotonic()
        self._pending.extend(_Pending(origin, entry, True, started) for origin, entry in recovered)
        if recovered:
            log.warning(
                "replaying audit records journaled before a restart", extra={"fields": {"records": len(recovered)}}
            )
        self._thread = threading.Thread(target=self._write_loop, name="kms-audit", daemon=True)
        self._thread.start()

    def record(self, entries: Sequence[AuditEntry], *, fail_open: bool = False) -> None:
        """Returns once ``entries`` are journaled; raises AuditUnavailable if they cannot be
        (unless failing open, when the entries go to the log).

        The chain lagging does not stop this: the records of a call that has already run are
        journaled whatever the chain's state, so that no change goes unrecorded. New calls are
        refused while the chain lags (``check_writable``, asked before a call runs)."""
        if not entries:
            return
        try:
            if self._tampered or not self._thread.is_alive():
                raise AuditUnavailable()
            origins = self._journal.append(list(entries))
        except Exception as error:  # whatever stops the journal, the call must not go on unrecorded
            if not isinstance(error, AuditUnavailable):
                log.error("audit journal cannot be written", extra={"fields": {"error": _describe(error)}})
            if self._fail_open or fail_open:
                for entry in entries:
                    log.error("audit record not stored (fail-open)", extra={"fields": asdict(entry)})
                return
            raise AuditUnavailable() from None
        now = self._monotonic()
        # deque.extend is atomic: no lock on the hot path; the writer polls at CHAIN_INTERVAL.
        self._pending.extend(_Pending(o, e, False, now) for o, e in zip(origins, entries, strict=True))

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    def check_writable(self) -> None:
        """Raises AuditUnavailable while the oldest record not yet chained is older than
        ``max_lag``, while the backlog is too long, and at once when the chain turned out to be
        tampered with."""
        if self._tampered or not self._thread.is_alive():
            raise AuditUnavailable()
        oldest = self.oldest_unchained()
        if oldest is not None and self._monotonic() - oldest > self._max_lag:
            raise AuditUnavailable()
        if len(self._pending) + len(self._in_flight) > self._max_backlog:
            raise AuditUnavailable()

    def oldest_unchained(self) -> float | None:
        """When the oldest record that is not in the chain yet was journaled (monotonic)."""
        in_flight = self._in_flight
        if in_flight:
            return in_flight[0].journaled
        try:
            return self._pending[0].journaled
        except IndexError:
            return None

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
            batch: list[_Pending] = []
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._pending.popleft())  # atomic, as the callers' appends are
                except IndexError:
                    break
            if not batch:
                continue
            self._in_flight = batch
            written = self._write(batch)
            if not written:
                for pending in batch:
                    pending.maybe_chained = True  # the commit may have happened all the same
                self._pending.extendleft(reversed(batch))  # back in front, in order
            self._in_flight = []
            with self._condition:
                self._condition.notify_all()
            if written:
                backoff = _BACKOFF_START
            else:
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _write(self, batch: list[_Pending]) -> bool:
        items = [(pending.origin, pending.entry) for pending in batch]
        try:
            if any(pending.maybe_chained for pending in batch):
                done = self._repository.recorded_origins([origin for origin, _ in items])
                items = [item for item in items if item[0] not in done]
            crash_point("audit.before_chain")
            if items:
                self._repository.append(items, self._seal, self._clock.now())
            crash_point("audit.after_chain")
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
        try:
            self._journal.committed([pending.origin for pending in batch])
        except OSError as error:  # a journal file that cannot be deleted only costs disk space
            log.warning("chained audit journal file not removed", extra={"fields": {"error": _describe(error)}})
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
    """Reading and verifying the log (the audit-read permission: on "*" for the whole log, on a
    key for that key's records). Both first wait briefly for this replica's journaled records to
    reach the chain, so that they include every call made so far."""

    def __init__(
        self,
        repository: AuditRepository,
        seal: AuditSeal,
        log: AuditLog,
        authorizer: Authorizer,
        digests: ContextDigests,
    ) -> None:
        self._repository = repository
        self._seal = seal
        self._log = log
        self._authorizer = authorizer
        self._digests = digests

    def events(
        self,
        call: Call,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: str | None = None,
        identity: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> Iterator[AuditRecord]:
        """Records in seq order, filtered; ``context`` selects the records of calls made with
        exactly that encryption context (compared by keyed digest: the log never holds it)."""
        if key_id is not None:
            validate_key_id(key_id)
        if identity is not None:
            validate_text("identity", identity, FIELD_LIMITS["identity"])
        encoded = encode_context(context) if context else None
        call.trail.note(key_id=key_id or "", context=encoded, detail=f"identity {identity}" if identity else "")
        self._authorizer.require(call, Permission.AUDIT_READ, key_id or "*")
        self._log.flush(timeout=5)
        return self._repository.records(
            after_seq=after_seq,
            since=since,
            until=until,
            key_id=key_id,
            identity=identity,
            context_digest=self._digests.of(encoded) if encoded is not None else None,
        )

    def verify(self, call: Call) -> Verification:
        self._authorizer.require(call, Permission.AUDIT_READ, "*")
        self._log.flush(timeout=5)
        return verify(self._repository.records(), self._repository.checkpoints(), self._seal.check)


class ContextDigests:
    """The keyed digest of an encoded context, as the audit log records it. The key is derived
    inside the HSM from the seal key once, on first use (kms.domain.audit.context_digest)."""

    PURPOSE = b"audit-context-digest"

    def __init__(self, seal: AuditSeal) -> None:
        self._seal = seal
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "ContextDigests()"

    def of(self, encoded_context: bytes) -> str:
        key = self._key
        if key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._seal.derive(self.PURPOSE)
                key = self._key
        return context_digest(key, encoded_context)
