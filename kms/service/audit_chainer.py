"""The audit writer's work: journaled entries into the hash-chained, HSM-sealed log, in batches.

It runs in a process of its own (kms.audit_writer), never in the process that serves calls: the
chain's hashing, the SQL and the seal cost that process no time under its GIL. It reads the
journal in the order entries were appended, and after each batch reports how far the chain has
got, from which the serving process measures the lag it fails closed on.

Every batch first asks which of its origins the chain holds already and sends only the others.
So whatever failed, and whenever (a commit whose acknowledgement was lost, a writer killed
between its commit and its report, a restart replaying a journal), no record is chained twice:
origins are unique in the chain, and one writer reads a journal at a time.
"""

from __future__ import annotations

import logging
from collections import deque

from kms.crashpoints import crash_point
from kms.domain.audit import ChainProgress, JournaledEntry, JournalPosition
from kms.errors import AuditTampered, KmsError
from kms.ports import AuditJournalReader, AuditRepository, AuditSeal, Clock

log = logging.getLogger(__name__)

# Calls never wait for chaining, so the writer lets records gather: one sealed transaction per
# interval costs little per record, where one per record would cost a commit and a seal each.
CHAIN_INTERVAL = 0.05
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0


class AuditChainer:
    def __init__(
        self,
        repository: AuditRepository,
        seal: AuditSeal,
        clock: Clock,
        journal: AuditJournalReader,
        *,
        max_batch: int = 2000,
        replay_through: JournalPosition | None = None,
    ) -> None:
        """``replay_through``: where the entries journaled before the serving process started
        end (they are replayed; said once in the log)."""
        self._repository = repository
        self._seal = seal
        self._clock = clock
        self._journal = journal
        self._max_batch = max_batch
        self._replay_through = replay_through
        self._pending: deque[JournaledEntry] = deque()
        self._state = "ok"
        self._backoff = BACKOFF_START

    @property
    def progress(self) -> ChainProgress:
        return ChainProgress(self._journal.settle(), self._state)

    def step(self) -> float:
        """Reads what was journaled since, chains one batch; returns how long to wait before the
        next step (0 when more is waiting, a growing backoff after a failure)."""
        room = self._max_batch - len(self._pending)
        if room > 0:
            self._pending.extend(self._journal.read(room))
        if not self._pending:
            return CHAIN_INTERVAL
        batch = list(self._pending)[: self._max_batch]
        if not self._write(batch):
            delay, self._backoff = self._backoff, min(self._backoff * 2, BACKOFF_MAX)
            return delay
        for _ in batch:
            self._pending.popleft()
        self._journal.chained(batch[-1].position)
        self._backoff = BACKOFF_START
        return 0.0 if self._pending else CHAIN_INTERVAL

    def _write(self, batch: list[JournaledEntry]) -> bool:
        try:
            done = self._repository.recorded_origins([line.origin for line in batch])
            items = [(line.origin, line.entry) for line in batch if line.origin not in done]
            self._say_replaying(batch, done)
            crash_point("audit.before_chain")
            if items:
                self._repository.append(items, self._seal, self._clock.now())
            crash_point("audit.after_chain")
        except AuditTampered as error:
            self._failing("tampered", logging.CRITICAL, "audit log tampered; refusing to extend it", error.message)
            return False
        except KmsError as error:
            self._failing("failing", logging.ERROR, "audit records not chained yet", error.message)
            return False
        except Exception as error:  # noqa: BLE001 - whatever the driver raises: retried, never fatal
            self._failing("failing", logging.ERROR, "audit records not chained yet", type(error).__name__)
            return False
        if self._state != "ok":
            log.info("audit chain caught up", extra={"fields": {"records": len(batch)}})
        self._state = "ok"
        return True

    def _say_replaying(self, batch: list[JournaledEntry], done: set[str]) -> None:
        through = self._replay_through
        if through is None or batch[0].position > through:
            return
        replayed = sum(1 for line in batch if line.position <= through and line.origin not in done)
        if replayed:
            log.warning("replaying audit records journaled before a restart", extra={"fields": {"records": replayed}})
        if batch[-1].position >= through:
            self._replay_through = None

    def _failing(self, state: str, level: int, event: str, detail: str) -> None:
        if self._state != state:
            log.log(level, event, extra={"fields": {"error": detail, "pending": len(self._pending)}})
        self._state = state
