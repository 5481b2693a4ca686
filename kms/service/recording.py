"""The end of every call: its audit records, written down before its result is released.

Use cases note what they did on the call's trail (kms.service.calls.Trail); this turns a trail
into records and journals them, for calls that came through gRPC and for the service's own
work alike (the scheduler, reconciliation), which run under internal identities. The transport
only has to guarantee the order: finish, then release.

Two guards against callers that fail on purpose:

- Repeated failures of the same kind from the same identity are folded into one summary record
  per window (kms.domain.repeats), so a flood of refused calls cannot grow the log without bound.
- Refused calls cost the caller: every refused call or item is charged to the identity's
  failure budget (KMS_QUOTA_FAILURES), and an identity that has spent it is turned away at the
  door with RESOURCE_EXHAUSTED, before its request is even parsed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kms.domain.audit import AuditEntry, clipped
from kms.domain.repeats import RepeatedOutcomes
from kms.errors import AuditUnavailable, KmsError
from kms.ports import Clock
from kms.service.audit import AuditLog, ContextDigests
from kms.service.authz import Authorizer
from kms.service.calls import Call, Trail, internal

log = logging.getLogger(__name__)

# Outcomes charged to the failure budget: what a caller provokes by asking for what it may not.
CHARGED_OUTCOMES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})


class CallRecorder:
    def __init__(
        self,
        log: AuditLog,
        digests: ContextDigests,
        authorizer: Authorizer,
        clock: Clock,
        *,
        repeat_window: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._digests = digests
        self._authorizer = authorizer
        self._clock = clock
        self._monotonic = monotonic
        self._repeats = RepeatedOutcomes(repeat_window)
        self._repeats_lock = threading.Lock()
        self._lagging = False

    def check_writable(self) -> None:
        """Raises AuditUnavailable while records cannot be journaled and chained in time."""
        self._log.check_writable()

    def admit(self, call: Call, *, audited: bool = True) -> None:
        """Raises, before any work: AuditUnavailable while the audit log cannot take records in
        time (so that nothing happens that would go unrecorded), then whatever the authorizer
        says of a caller that may do nothing at all or has spent its failure budget
        (kms.service.authz.Authorizer.admit). ``audited=False`` for the calls that read the log
        itself, which must keep working when it is damaged."""
        if audited:
            try:
                self._log.check_writable()
            except AuditUnavailable:
                if not self._log.fail_open:
                    raise
                if not self._lagging:
                    log.error("audit chain behind; calls go on (fail-open): records wait in the journal")
                self._lagging = True
            else:
                self._lagging = False
        self._authorizer.admit(call)

    def finish(
        self, call: Call, error: KmsError | None, *, action: str | None = None, fail_open: bool = False
    ) -> KmsError | None:
        """Journals the call's records (its items not yet written, then the call itself) and
        returns the call's outcome: ``error``, or AuditUnavailable when the records could not
        be written, in which case the result must be withheld."""
        entries = [*self._items(call, action), self._entry(call, action, call.trail, error, -1)]
        try:
            self._write(entries, fail_open)
        except AuditUnavailable as unavailable:
            return unavailable
        finally:
            self._charge(call, entries)
        return error

    def record_items(self, call: Call, *, action: str | None = None) -> None:
        """Journals the records of the items noted so far (a stream's response message is
        released only after this returns). Raises AuditUnavailable."""
        entries = self._items(call, action)
        try:
            self._write(entries, False)
        finally:
            self._charge(call, entries)

    def integrity_event(self, action: str, kind: str, name: str, detail: str) -> None:
        """A record of the metadata checks' own (kms.service.integrity), as kms:integrity."""
        call = internal("integrity")
        call.trail.note(key_id=name if kind == "key" else "", detail=f"{kind} {name[:200]}: {detail}".strip())
        self.finish(call, None, action=action, fail_open=True)

    def flush_repeats(self, *, everything: bool = False) -> None:
        """Writes the summaries of failure windows that have closed (all of them at shutdown)."""
        with self._repeats_lock:
            summaries = self._repeats.close_all() if everything else self._repeats.expired(self._monotonic())
        if summaries:
            self._log.record(summaries, fail_open=True)

    # -- internals ---------------------------------------------------------------------

    def _items(self, call: Call, action: str | None) -> list[AuditEntry]:
        return [self._entry(call, action, trail, error, index) for index, trail, error in call.trail.take_items()]

    def _entry(self, call: Call, action: str | None, trail: Trail, error: KmsError | None, item: int) -> AuditEntry:
        detail = trail.detail
        if item == -1 and not detail and trail.item_count:
            detail = f"{trail.item_count} items"
        return clipped(
            AuditEntry(
                time=self._clock.now(),
                identity=call.identity,
                rpc=action or call.method,
                outcome=error.code if error is not None else "OK",
                reason=error.reason if error is not None else "",
                key_id=trail.key_id,
                key_version=trail.key_version,
                request_id=call.request_id,
                peer=call.peer[:256],
                context_digest=self._digests.of(trail.context) if trail.context is not None else "",
                item=item,
                detail=detail,
            )
        )

    def _write(self, entries: list[AuditEntry], fail_open: bool) -> None:
        now = self._monotonic()
        with self._repeats_lock:
            written = [kept for entry in entries for kept in self._repeats.admit(entry, now)]
        self._log.record(written, fail_open=fail_open)

    def _charge(self, call: Call, entries: list[AuditEntry]) -> None:
        refused = sum(1 for entry in entries if entry.outcome in CHARGED_OUTCOMES)
        if refused:
            self._authorizer.charge_failures(call, refused)
