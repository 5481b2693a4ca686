"""The audit log: no call's result is released before its record is written down.

Each call's records are first appended to this replica's journal (a copy into a memory-mapped
file, so they survive the process being killed the instant after the call returns), and only
then is the result released; if the journal cannot be written the call fails with UNAVAILABLE
(fail closed). The audit writer, a process of its own (kms.audit_writer), moves journaled
records into the hash-chained, HSM-sealed log in batches and reports how far it got; this
process pays for a call's records with one copy into the journal and nothing else. Calls fail
closed too while the oldest record not yet in the chain has waited longer than ``max_lag``
seconds, whatever the cause: a database that refuses writes, one whose writes hang on a lock, a
slow disk or a dead connection, a writer that died and is being started again. Nothing
journaled is lost meanwhile, and nothing is chained twice (kms.service.audit_chainer).

With ``fail_open`` a record that cannot be journaled is written to the service log instead and
the call proceeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from kms.crypto.context import encode_context
from kms.domain.audit import (
    FIELD_LIMITS,
    AuditEntry,
    AuditRecord,
    ChainProgress,
    JournalPosition,
    Verification,
    context_digest,
    verify,
)
from kms.domain.keys import validate_key_id
from kms.domain.policy import Permission
from kms.domain.text import validate_text
from kms.errors import AuditUnavailable, RateLimited
from kms.ports import AuditJournal, AuditRepository, AuditSeal, AuditWriter
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.pacing import Pacer

log = logging.getLogger(__name__)

VERIFY_RETRY_AFTER = 5.0  # seconds a refused verification is told to wait


class AuditLog:
    def __init__(
        self,
        journal: AuditJournal,
        writer: AuditWriter,
        *,
        fail_open: bool = False,
        max_lag: float = 5.0,
        max_backlog: int = 200_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Starts ``writer`` on ``journal`` (waiting briefly for it to be ready)."""
        self._journal = journal
        self._writer = writer
        self._fail_open = fail_open
        self._max_lag = max_lag
        self._max_backlog = max_backlog
        self._monotonic = monotonic
        # What was journaled and is not known to be chained yet, in journal order:
        # (position of the append's last record, its records, when it was journaled).
        self._pending: deque[tuple[JournalPosition, int, float]] = deque()
        self._backlog = 0  # records in _pending
        self._lock = threading.Lock()  # appends and their place in _pending, in one order
        self._reported = threading.Condition()
        self._state = "ok"
        if journal.backlog is not None:  # an earlier process's records: they count from now
            self._pending.append((journal.backlog, 0, monotonic()))
        writer.start(self._on_progress)

    def record(self, entries: Sequence[AuditEntry], *, fail_open: bool = False) -> None:
        """Returns once ``entries`` are journaled; raises AuditUnavailable if they cannot be
        (unless failing open, when the entries go to the log).

        The chain lagging does not stop this: the records of a call that has already run are
        journaled whatever the chain's state, so that no change goes unrecorded. New calls are
        refused while the chain lags (``check_writable``, asked before a call runs)."""
        if not entries:
            return
        try:
            if self._state == "tampered":
                raise AuditUnavailable()
            with self._lock:
                position = self._journal.append(entries)
                self._pending.append((position, len(entries), self._monotonic()))
                self._backlog += len(entries)
        except Exception as error:  # noqa: BLE001 - whatever stops the journal, the call must not go on unrecorded
            if not isinstance(error, AuditUnavailable):
                log.error("audit journal cannot be written", extra={"fields": {"error": _describe(error)}})
            if self._fail_open or fail_open:
                for entry in entries:
                    log.error("audit record not stored (fail-open)", extra={"fields": asdict(entry)})
                return
            raise AuditUnavailable() from None

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    def check_writable(self) -> None:
        """Raises AuditUnavailable while the oldest record not yet chained is older than
        ``max_lag``, while the backlog is too long, and at once when the chain turned out to be
        tampered with."""
        if self._state == "tampered":
            raise AuditUnavailable()
        oldest = self.oldest_unchained()
        if oldest is not None and self._monotonic() - oldest > self._max_lag:
            raise AuditUnavailable()
        if self._backlog > self._max_backlog:
            raise AuditUnavailable()

    def oldest_unchained(self) -> float | None:
        """When the oldest record that is not in the chain yet was journaled (monotonic)."""
        try:
            return self._pending[0][2]
        except IndexError:
            return None

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every record journaled so far is in the chain; False on timeout, and at
        once while the chain cannot be written."""
        deadline = time.monotonic() + timeout
        self._writer.hurry()
        with self._reported:
            while self._pending and self._state == "ok":
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._reported.wait(min(remaining, 0.05))
        return not self._pending

    def stop(self, timeout: float = 10.0) -> None:
        """Chains what is pending (within ``timeout``), then stops the writer."""
        self.flush(timeout)
        self._writer.stop(timeout)
        self._journal.close()

    def _on_progress(self, progress: ChainProgress) -> None:
        if progress.state != self._state:
            level = logging.CRITICAL if progress.state == "tampered" else logging.INFO
            log.log(level, "audit writer state", extra={"fields": {"state": progress.state, "was": self._state}})
        self._state = progress.state
        through = progress.through
        with self._reported:
            if through is not None:
                pending = self._pending
                while pending and pending[0][0] <= through:
                    self._backlog -= pending.popleft()[1]
            self._reported.notify_all()


def _describe(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) and error.strerror else None) or type(error).__name__


class AuditService:
    """Reading and verifying the log (the audit-read permission: on "*" for the whole log, on a
    key for that key's records). Both first wait briefly for this replica's journaled records to
    reach the chain, so that they include every call made so far.

    Verifying walks the whole log, which may take minutes of hashing and HSM checks; inside the
    serving process that time would come out of every other call's. So one verification runs
    at a time per process (another is RateLimited), and it is paced to ``verify_share`` of one
    core (kms.service.pacing). ``kms audit verify --local`` does the same work in the
    operator's process, reading the database and asking the HSM directly."""

    def __init__(
        self,
        repository: AuditRepository,
        seal: AuditSeal,
        log: AuditLog,
        authorizer: Authorizer,
        digests: ContextDigests,
        *,
        verify_share: float = 0.1,
        pacer: Callable[[float], Pacer] = Pacer,
    ) -> None:
        self._repository = repository
        self._seal = seal
        self._log = log
        self._authorizer = authorizer
        self._digests = digests
        self._verify_share = verify_share
        self._pacer = pacer
        self._verifying = threading.Lock()

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
        if not self._verifying.acquire(blocking=False):
            raise RateLimited("audit verification (one at a time)", VERIFY_RETRY_AFTER)
        try:
            self._log.flush(timeout=5)
            return verify_log(self._repository, self._seal, self._pacer(self._verify_share).paced)
        finally:
            self._verifying.release()


def verify_log(
    repository: AuditRepository,
    seal: AuditSeal,
    paced: Callable[[Iterable[Any]], Iterable[Any]] = lambda items: items,
) -> Verification:
    """Walks the whole log as it stood when called: the records and checkpoints up to the highest
    seq either held then. Appends that commit during the walk (the writer does not stop for it)
    are left out: seen by one reader and not the other, they would look like records appended,
    or cut off, outside the service. ``paced`` wraps both streams (kms.service.pacing)."""
    through = repository.last_seq()
    return verify(
        paced(repository.records(through_seq=through)), paced(repository.checkpoints(through_seq=through)), seal.check
    )


class ContextDigests:
    """The keyed digest of an encoded context, as the audit log records it. The key is derived
    inside the HSM from the seal key once, on first use (kms.domain.audit.context_digest)."""

    PURPOSE = b"audit-context-digest"
    # Most calls repeat a few contexts (a tenant, a purpose), and every call records one digest:
    # remembered digests save an HMAC per call. Bounded; cleared whole when full.
    REMEMBERED = 4096

    def __init__(self, seal: AuditSeal) -> None:
        self._seal = seal
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._remembered: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return "ContextDigests()"

    def of(self, encoded_context: bytes) -> str:
        digest = self._remembered.get(encoded_context)
        if digest is not None:
            return digest
        key = self._key
        if key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._seal.derive(self.PURPOSE)
                key = self._key
        digest = context_digest(key, encoded_context)
        if len(self._remembered) >= self.REMEMBERED:
            self._remembered.clear()
        self._remembered[encoded_context] = digest
        return digest
