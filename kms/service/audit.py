"""The audit log: every call's record is durable before the call's result is released.

Records are written by one writer thread in group commits: whatever has been submitted while
the previous batch was being written goes into the next one, as one transaction with its
checkpoint. Callers wait for their batch (a few milliseconds), so no plaintext data key is
returned without its audit record on disk; if the batch cannot be written the call fails with
UNAVAILABLE (fail closed). With ``fail_open`` the records go to the service log instead and the
calls proceed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict

from kms.domain.audit import AuditEntry, AuditRecord, Verification, verify
from kms.domain.policy import Permission
from kms.errors import AuditTampered, AuditUnavailable, KmsError
from kms.ports import AuditRepository, AuditSeal, Clock
from kms.service.authz import Authorizer
from kms.service.calls import Call

log = logging.getLogger(__name__)


class _Ticket:
    __slots__ = ("done", "failed")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.failed = False


class AuditLog:
    def __init__(
        self,
        repository: AuditRepository,
        seal: AuditSeal,
        clock: Clock,
        *,
        fail_open: bool = False,
        max_batch: int = 5000,
        wait_timeout: float = 10.0,
    ) -> None:
        self._repository = repository
        self._seal = seal
        self._clock = clock
        self._fail_open = fail_open
        self._max_batch = max_batch
        self._wait_timeout = wait_timeout
        self._pending: deque[tuple[Sequence[AuditEntry], _Ticket]] = deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._write_loop, name="kms-audit", daemon=True)
        self._thread.start()

    def record(self, entries: Sequence[AuditEntry], *, fail_open: bool = False) -> None:
        """Returns once ``entries`` are durable; raises AuditUnavailable if they cannot be (or,
        with ``fail_open``, logs them)."""
        self.wait(self.submit(entries), entries, fail_open=fail_open)

    def submit(self, entries: Sequence[AuditEntry]) -> _Ticket:
        ticket = _Ticket()
        if not entries:
            ticket.done.set()
            return ticket
        with self._condition:
            if self._stopping:
                ticket.failed = True
                ticket.done.set()
                return ticket
            self._pending.append((entries, ticket))
            self._condition.notify()
        return ticket

    def wait(self, ticket: _Ticket, entries: Sequence[AuditEntry], *, fail_open: bool = False) -> None:
        if not ticket.done.wait(self._wait_timeout) or ticket.failed:
            if self._fail_open or fail_open:
                for entry in entries:
                    log.error("audit record not stored (fail-open)", extra={"fields": asdict(entry)})
                return
            raise AuditUnavailable()

    def stop(self) -> None:
        """Writes what is pending, then ends the writer."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout=30)

    def check_writable(self) -> None:
        """For the health check: the writer is alive."""
        if not self._thread.is_alive():
            raise AuditUnavailable()

    def _write_loop(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._stopping:
                    self._condition.wait()
                if not self._pending and self._stopping:
                    return
                batch, size = [], 0
                while self._pending and size < self._max_batch:
                    entries, ticket = self._pending.popleft()
                    batch.append((entries, ticket))
                    size += len(entries)
            self._write(batch)

    def _write(self, batch: list[tuple[Sequence[AuditEntry], _Ticket]]) -> None:
        entries = [entry for group, _ in batch for entry in group]
        try:
            self._repository.append(entries, self._seal, self._clock.now())
            failed = False
        except AuditTampered as error:
            log.critical("audit log tampered; refusing to extend it", extra={"fields": {"error": error.message}})
            failed = True
        except KmsError as error:
            log.error("audit batch not written", extra={"fields": {"records": len(entries), "error": error.message}})
            failed = True
        except Exception:
            log.exception("audit batch not written", extra={"fields": {"records": len(entries)}})
            failed = True
        for _, ticket in batch:
            ticket.failed = failed
            ticket.done.set()


class AuditService:
    """Reading and verifying the log (the audit-read permission)."""

    def __init__(self, repository: AuditRepository, seal: AuditSeal, authorizer: Authorizer) -> None:
        self._repository = repository
        self._seal = seal
        self._authorizer = authorizer

    def events(self, call: Call, **filters: object) -> Iterator[AuditRecord]:
        key_id = filters.get("key_id")
        self._authorizer.require(call, Permission.AUDIT_READ, key_id if isinstance(key_id, str) and key_id else "*")
        return self._repository.records(**filters)

    def verify(self, call: Call) -> Verification:
        self._authorizer.require(call, Permission.AUDIT_READ, "*")
        return verify(self._repository.records(), self._repository.checkpoints(), self._seal.check)
