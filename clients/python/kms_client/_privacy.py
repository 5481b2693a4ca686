"""Erasure per data subject (mixed into KmsClient): EraseSubject and ListErasures."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc


@dataclass(frozen=True)
class Erasure:
    """The receipt of one erasure: which key, a keyed digest of the subject (never the subject),
    who asked and when, and when it is final in database backups: once every master key version
    up to ``final_after_version`` is destroyed (``final_time``: when that was or is expected)."""

    key_id: str
    subject_digest: str
    erase_time: datetime | None
    erased_by: str
    subject_known: bool
    final_after_version: int
    final: bool
    final_time: datetime | None
    audit_seq: int = 0  # the audit record holding the receipt (0 until it is chained)


def erasure_from_pb(message: pb.Erasure) -> Erasure:
    def time(name: str) -> datetime | None:
        return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None

    return Erasure(
        key_id=message.key_id,
        subject_digest=message.subject_digest,
        erase_time=time("erase_time"),
        erased_by=message.erased_by,
        subject_known=message.subject_known,
        final_after_version=message.final_after_version,
        final=message.final,
        final_time=time("final_time"),
        audit_seq=message.audit_seq,
    )


class ErasureMixin:
    """Needs from the class it is mixed into: ``_stub``, ``_call`` and ``_forget_subject``."""

    _stub: kms_pb2_grpc.KeyManagementServiceStub

    def _call(self, method: Any, request: Any, timeout: float | None, retry: Any = None) -> Any: ...

    def _forget_subject(self, key_id: str, subject: str) -> None: ...

    def erase_subject(self, key_id: str, subject: str, *, timeout: float | None = None) -> Erasure:
        """Erases one data subject of a key with a subject_field: every data key issued for that
        subject stops opening (SubjectErased), on every replica within the service's metadata
        cache bound, and no new one is issued. Data keys of that subject this client holds in its
        data key cache are wiped at once. Safe to repeat: an erased subject answers with its
        original receipt. Needs the erase permission on the key."""
        self._forget_subject(key_id, subject)
        request = pb.EraseSubjectRequest(key_id=key_id, subject=subject)
        # Idempotent on the service side (a repeat returns the same receipt), so retried.
        return erasure_from_pb(self._call(self._stub.EraseSubject, request, timeout))

    def list_erasures(
        self, key_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> tuple[list[Erasure], str]:
        """One page of the key's erasures, newest first, and the next page's token ("" at the end)."""
        request = pb.ListErasuresRequest(key_id=key_id, page_size=page_size, page_token=page_token)
        response = self._call(self._stub.ListErasures, request, timeout)
        return [erasure_from_pb(e) for e in response.erasures], response.next_page_token

    def iter_erasures(self, key_id: str, *, page_size: int = 0) -> Iterator[Erasure]:
        token = ""
        while True:
            erasures, token = self.list_erasures(key_id, page_size=page_size, page_token=token)
            yield from erasures
            if not token:
                return


__all__ = ["Erasure", "ErasureMixin", "erasure_from_pb"]
