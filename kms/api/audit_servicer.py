"""AuditService: reading and verifying the audit log."""

from __future__ import annotations

from collections.abc import Iterator

from kms.api.convert import optional_time, timestamp
from kms.api.proto import pb
from kms.domain.audit import AuditRecord
from kms.errors import InvalidArgument
from kms.service.audit import AuditService
from kms.service.calls import Call

MAX_SEQ = 2**63 - 1  # sequence numbers are signed 64-bit in the database


def event_message(record: AuditRecord) -> pb.AuditEvent:
    entry = record.entry
    return pb.AuditEvent(
        seq=record.seq,
        time=timestamp(entry.time),
        identity=entry.identity,
        rpc=entry.rpc,
        key_id=entry.key_id,
        key_version=entry.key_version,
        outcome=entry.outcome,
        reason=entry.reason,
        request_id=entry.request_id,
        peer=entry.peer,
        context_digest=entry.context_digest,
        item=entry.item,
        detail=entry.detail,
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


class AuditServicer:
    def __init__(self, audit: AuditService) -> None:
        self._audit = audit

    def ListAuditEvents(self, request: pb.ListAuditEventsRequest, call: Call) -> Iterator[pb.AuditEvent]:
        """Authorizes at once; the records are read as the client takes them."""
        if request.after_seq > MAX_SEQ:
            raise InvalidArgument(f"after_seq must be at most {MAX_SEQ}")
        records = self._audit.events(
            call,
            after_seq=request.after_seq,
            since=optional_time(request, "start_time"),
            until=optional_time(request, "end_time"),
            key_id=request.key_id or None,
            identity=request.identity or None,
            context=dict(request.encryption_context) or None,
        )
        return (event_message(record) for record in records)

    def VerifyAuditLog(self, request: pb.VerifyAuditLogRequest, call: Call) -> pb.VerifyAuditLogResponse:
        result = self._audit.verify(call)
        return pb.VerifyAuditLogResponse(
            intact=result.intact,
            records_checked=result.records,
            checkpoints_checked=result.checkpoints,
            problem_seq=result.problem_seq,
            problem=result.problem,
        )
