"""Verifying an audit log that grows during the walk, on SQLite and PostgreSQL with the SoftHSM seal
key. The writer process does not stop for a verification (in the server, or ``kms audit verify
--local`` beside it), so batches commit between the walk's reads of records and of checkpoints.
Such a batch is left out of the walk, never taken for records appended, or cut off, outside the
service; a walk started after it includes it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import pytest

from kms.domain.audit import AuditEntry, Checkpoint
from kms.service.audit import verify_log
from tests.support.audit_chain import Chain, open_chain


@pytest.fixture
def chain(hsm_token, database_url, label_prefix) -> Iterator[Chain]:
    with open_chain(hsm_token, database_url, label_prefix) as opened:
        yield opened


def _append(chain: Chain, count: int) -> None:
    """One batch, as the writer chains it: records and their checkpoint in one transaction."""
    now = datetime.now(UTC)
    entries = [
        (f"test-{uuid.uuid4().hex[:12]}:{n}", AuditEntry(time=now, identity="svc", rpc="Decrypt", outcome="OK"))
        for n in range(count)
    ]
    chain.repository.append(entries, chain.sealer, now)


def test_a_batch_chained_during_a_verification_is_left_out_of_it_not_taken_for_tampering(chain):
    for _ in range(3):
        _append(chain, 4)
    grown = []

    def growing(items: Iterable) -> Iterator:
        """Chains a batch once the checkpoints' page has been read, before the records' is."""
        for item in items:
            if isinstance(item, Checkpoint) and not grown:
                _append(chain, 5)
                grown.append(True)
            yield item

    during = verify_log(chain.repository, chain.sealer, growing)
    assert grown, "the batch was never chained during the walk"
    assert (during.intact, during.problem, during.records, during.checkpoints) == (True, "", 12, 3)
    after = verify_log(chain.repository, chain.sealer)
    assert (after.intact, after.records, after.checkpoints) == (True, 17, 4)
