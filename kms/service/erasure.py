"""Erasing data subjects, and the receipts that show it (kms.domain.privacy has the design).

EraseSubject deletes the subject's key row, records the receipt and appends the erasure to the
metadata ledger in one transaction (kms.store.subjects); then this replica forgets the subject's
key at once, and the HSM anchor moves past the erasure before the caller hears of it, so that no
database rollback can quietly undo it (a rolled-back database is refused until an operator
accepts it, kms db accept-restore). Other replicas refuse the subject from their next ledger
poll. The call's audit record is the receipt: who, when, which key, and the subject's keyed
digest in its detail, never the subject.

Order for crashes: everything is in one transaction, so a kill -9 before its commit leaves the
subject as it was (the caller saw no answer and retries), and after it the erasure stands. A
retry of an erasure already recorded returns the recorded receipt unchanged.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from kms.crashpoints import crash_point
from kms.domain import privacy
from kms.domain.keys import Key, validate_key_id
from kms.domain.ledger import LedgerEntry
from kms.domain.policy import Permission
from kms.domain.privacy import Erasure, Finality
from kms.errors import FailedPrecondition, InvalidArgument, InvalidPageToken
from kms.ports import Clock, SubjectRepository
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.subjects import SubjectKeys

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class ErasureIntegrity(Protocol):
    """What erasing needs from the metadata ledger (kms.service.integrity.MetadataIntegrity)."""

    def observe(self, entries: list[LedgerEntry]) -> None: ...

    def anchor_now(self) -> None: ...

    def verified_erasure(self, erasure: Erasure) -> bool: ...


class Receipts(Protocol):
    def receipt_seq(self, key_id: str, subject_digest: str, erase_time: datetime) -> int:
        """The seq of the EraseSubject audit record of that erasure, 0 until it is chained."""
        ...


@dataclass(frozen=True, slots=True)
class ErasureStatus:
    erasure: Erasure
    finality: Finality
    # False when the stored receipt is not the one the ledger recorded (changed outside the
    # service): shown, and reported by kms db verify; the erasure itself holds all the same.
    verified: bool = True


class ErasureService:
    def __init__(
        self,
        repository: SubjectRepository,
        subjects: SubjectKeys,
        cache: KeyCache,
        authorizer: Authorizer,
        clock: Clock,
        integrity: ErasureIntegrity,
        receipts: Receipts | None = None,
        flush_audit: Callable[[], object] = lambda: None,
    ) -> None:
        """``receipts`` finds each erasure's audit record; ``flush_audit`` waits (briefly) for
        this replica's journaled records to reach the chain first."""
        self._repository = repository
        self._subjects = subjects
        self._cache = cache
        self._authorizer = authorizer
        self._clock = clock
        self._integrity = integrity
        self._receipts = receipts
        self._flush_audit = flush_audit

    def erase_subject(self, call: Call, key_id: str, subject: str) -> ErasureStatus:
        """Erases ``subject`` of ``key_id`` (the erase permission on the key, unconstrained:
        the call carries no encryption context a constrained grant could be checked against)."""
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        privacy.validate_subject(subject)
        self._authorizer.require(call, Permission.ERASE, key_id)
        key = self._subject_key(key_id)
        digest = self._subjects.digest(key_id, subject)
        call.trail.note(detail=f"subject {digest}")
        call.check_deadline()
        erasure, entries = self._repository.erase(key_id, digest, call.identity, self._clock.now(), key.primary_version)
        crash_point("erase_subject.after_commit")
        self._subjects.evict([(key_id, digest)])
        if entries:
            self._integrity.observe(entries)
            self._integrity.anchor_now()  # an erasure takes something away: no rollback may undo it
            log.info("data subject erased", extra={"fields": {"key_id": key_id, "identity": call.identity}})
        call.trail.note(
            key_version=erasure.final_after_version,
            detail=f"subject {digest} erased"
            + ("" if erasure.subject_known else " (no key had been issued)")
            + ("" if entries else f" (already, at {_iso(erasure.erase_time)})")
            + f"; final after version {erasure.final_after_version} is destroyed",
        )
        return self._status(key, erasure)

    def list_erasures(
        self, call: Call, key_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ErasureStatus], str]:
        """One page of the key's erasures, newest first, each with its finality (metadata: any
        unconstrained permission on the key, as for GetKey)."""
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        self._authorizer.require_any(call, key_id)
        key = self._cache.get(key_id)
        self._flush_audit()
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = self._repository.erasures(key_id, limit + 1, _decode_page_token(page_token))
        token = _encode_page_token(page[limit - 1]) if len(page) > limit else ""
        statuses = [self._status(key, erasure, with_seq=True) for erasure in page[:limit]]
        call.trail.note(detail=f"{len(statuses)} erasures" + (" (more follow)" if token else ""))
        return statuses, token

    # -- internals ---------------------------------------------------------------------------

    def _subject_key(self, key_id: str) -> Key:
        key = self._cache.get(key_id)
        if not key.subject_field:
            raise FailedPrecondition(
                f"key {key_id!r} has no subject_field: it keeps no key per data subject, so there is nothing to erase "
                "per subject (destroy its versions instead)"
            )
        return key

    def _status(self, key: Key, erasure: Erasure, *, with_seq: bool = False) -> ErasureStatus:
        if with_seq and self._receipts is not None:
            seq = self._receipts.receipt_seq(key.key_id, erasure.subject_digest, erasure.erase_time)
            erasure = replace(erasure, audit_seq=seq)
        return ErasureStatus(
            erasure, privacy.finality(key, erasure, self._clock.now()), self._integrity.verified_erasure(erasure)
        )


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_page_token(last: Erasure) -> str:
    raw = f"before:{last.erase_time.astimezone(UTC).isoformat()}|{last.subject_digest}"
    return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii")


def _decode_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        if not raw.startswith("before:"):
            raise ValueError
        time_text, digest = raw[len("before:") :].split("|", 1)
        bytes.fromhex(digest)
        if len(digest) != 64:
            raise ValueError
        return datetime.fromisoformat(time_text), digest
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
