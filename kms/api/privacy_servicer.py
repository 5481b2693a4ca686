"""EraseSubject and ListErasures (mixed into KeyManagementServicer): convert, call, convert."""

from __future__ import annotations

from kms.api import convert
from kms.api.proto import pb
from kms.service.calls import Call
from kms.service.erasure import ErasureService, ErasureStatus


class ErasureMethods:
    _erasures: ErasureService | None

    def EraseSubject(self, request: pb.EraseSubjectRequest, call: Call) -> pb.Erasure:
        return erasure(self._service().erase_subject(call, request.key_id, request.subject))

    def ListErasures(self, request: pb.ListErasuresRequest, call: Call) -> pb.ListErasuresResponse:
        statuses, token = self._service().list_erasures(call, request.key_id, request.page_size, request.page_token)
        return pb.ListErasuresResponse(erasures=[erasure(status) for status in statuses], next_page_token=token)

    def _service(self) -> ErasureService:
        if self._erasures is None:
            raise RuntimeError("this server was built without the erasure service")
        return self._erasures


def erasure(status: ErasureStatus) -> pb.Erasure:
    value = status.erasure
    return pb.Erasure(
        key_id=value.key_id,
        subject_digest=value.subject_digest,
        erase_time=convert.timestamp(value.erase_time),
        erased_by=value.erased_by,
        subject_known=value.subject_known,
        final_after_version=value.final_after_version,
        final=status.finality.final,
        final_time=convert.timestamp(status.finality.final_time),
        audit_seq=value.audit_seq,
    )
