"""kms.domain.audit.verify, on records built in memory: every kind of problem it reports, and
where it says the problem is. The checkpoint MAC is an HMAC with a key the test holds, standing
in for the HSM's."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kms.domain.audit import (
    GENESIS,
    AuditEntry,
    AuditRecord,
    Checkpoint,
    chain_hash,
    checkpoint_message,
    extend,
    verify,
)

SEAL_KEY = b"k" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def mac(seq: int, hash_hex: str, key: bytes = SEAL_KEY) -> str:
    return hmac.new(key, checkpoint_message(seq, hash_hex), hashlib.sha256).hexdigest()


def mac_ok(message: bytes, tag: str) -> bool:
    return hmac.compare_digest(hmac.new(SEAL_KEY, message, hashlib.sha256).hexdigest(), tag)


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        time=T0 + timedelta(seconds=n),
        identity="spiffe://kms.dev/app",
        rpc="Decrypt",
        outcome="OK",
        key_id="orders",
        key_version=1,
        request_id=f"r{n}",
    )


def chain(count: int) -> list[AuditRecord]:
    return extend(0, GENESIS, [("replica-a", entry(n)) for n in range(1, count + 1)])


def seal(records: list[AuditRecord], *at: int) -> list[Checkpoint]:
    return [Checkpoint(seq, records[seq - 1].hash, T0, mac(seq, records[seq - 1].hash)) for seq in at]


def rechained(records: list[AuditRecord], start: int) -> list[AuditRecord]:
    """``records`` with every hash from ``start`` on recomputed: consistent, as a forger with
    write access to the database would leave it."""
    out = list(records[: start - 1])
    previous = out[-1].hash if out else GENESIS
    for record in records[start - 1 :]:
        digest = chain_hash(record.seq, record.entry, record.origin, previous)
        out.append(replace(record, prev_hash=previous, hash=digest))
        previous = digest
    return out


def problem(records, checkpoints) -> tuple[int, str]:
    result = verify(records, checkpoints, mac_ok)
    assert not result.intact
    return result.problem_seq, result.problem


def test_an_intact_sealed_log_verifies_and_is_counted():
    records = chain(6)
    result = verify(records, seal(records, 2, 6), mac_ok)
    assert result.intact and (result.records, result.checkpoints, result.problem_seq) == (6, 2, 0)


def test_an_empty_log_verifies():
    assert verify([], [], mac_ok).intact


def test_a_changed_record_is_found_where_it_is():
    records = chain(5)
    records[2] = replace(records[2], entry=replace(records[2].entry, outcome="PERMISSION_DENIED"))
    assert problem(records, seal(records, 5)) == (3, "record 3 was changed")


def test_a_removed_record_is_named():
    records = chain(5)
    assert problem(records[:2] + records[3:], seal(records, 5)) == (3, "record 3 is missing (removed)")


def test_a_removed_stretch_is_named_as_a_range():
    records = chain(8)
    assert problem(records[:2] + records[5:], seal(records, 8)) == (3, "record 3-5 is missing (removed)")


def test_a_record_inserted_and_renumbered_breaks_the_link_after_it():
    records = chain(5)
    forged = extend(2, records[1].hash, [("forger", replace(entry(99), identity="spiffe://kms.dev/admin"))])[0]
    renumbered = [replace(r, seq=r.seq + 1) for r in records[2:]]
    seq, text = problem([*records[:2], forged, *renumbered], seal(records, 5))
    assert (seq, text) == (4, "record 4 does not follow record 3 (inserted, removed or reordered)")


def test_reordered_records_break_the_link():
    records = chain(5)
    swapped = [*records[:2], replace(records[3], seq=3), replace(records[2], seq=4), *records[4:]]
    expected = "record 3 does not follow record 2 (inserted, removed or reordered)"
    assert problem(swapped, seal(records, 5)) == (3, expected)


def test_a_record_read_twice_is_out_of_order():
    records = chain(4)
    assert problem([*records[:3], records[1], *records[3:]], seal(records, 4)) == (2, "record 2 is out of order")


def test_a_rewritten_stretch_is_found_by_its_checkpoint():
    records = chain(9)
    checkpoints = seal(records, 3, 6, 9)
    records[4] = replace(records[4], entry=replace(records[4].entry, identity="rewritten"))
    assert problem(rechained(records, 5), checkpoints) == (6, "records 4-6 do not match their checkpoint (rewritten)")


def test_a_rewritten_first_stretch_counts_from_record_one():
    records = chain(4)
    checkpoints = seal(records, 4)
    records[0] = replace(records[0], entry=replace(records[0].entry, rpc="GetKey"))
    assert problem(rechained(records, 1), checkpoints) == (4, "records 1-4 do not match their checkpoint (rewritten)")


@pytest.mark.parametrize("forged_with", [b"x" * 32, None], ids=["another-key", "garbage"])
def test_a_forged_checkpoint_is_named(forged_with):
    records = chain(5)
    checkpoints = seal(records, 2)
    tag = mac(5, records[4].hash, forged_with) if forged_with else "00" * 32
    checkpoints.append(Checkpoint(5, records[4].hash, T0, tag))
    assert problem(records, checkpoints) == (5, "checkpoint at record 5 is forged")


def test_records_after_the_last_checkpoint_are_an_unsealed_tail():
    records = chain(7)
    seq, text = problem(records, seal(records, 4))
    assert (seq, text) == (5, "records 5-7 are not sealed by any checkpoint (appended outside the service)")


def test_a_log_without_any_checkpoint_is_unsealed_from_the_start():
    assert problem(chain(2), []) == (1, "records 1-2 are not sealed by any checkpoint (appended outside the service)")


def test_records_removed_from_the_end_are_found_by_the_checkpoint_beyond_them():
    records = chain(8)
    checkpoints = seal(records, 4, 8)
    assert problem(records[:6], checkpoints) == (7, "records 7-8 are missing (removed from the end)")


def test_everything_removed_is_found_too():
    records = chain(3)
    assert problem([], seal(records, 3)) == (1, "records 1-3 are missing (removed from the end)")


def test_the_first_problem_is_the_one_reported():
    records = chain(6)
    checkpoints = seal(records, 6)
    records[1] = replace(records[1], entry=replace(records[1].entry, detail="changed"))
    del records[4]
    assert problem(records, checkpoints) == (2, "record 2 was changed")


def test_the_hash_covers_every_field_and_the_origin():
    base = entry(1)
    digest = chain_hash(1, base, "replica-a", GENESIS)
    changes = {
        "time": T0,
        "identity": "x",
        "rpc": "x",
        "outcome": "x",
        "key_id": "x",
        "key_version": 9,
        "reason": "x",
        "request_id": "x",
        "peer": "x",
        "context_digest": "x",
        "item": 7,
        "detail": "x",
    }
    for name, value in changes.items():
        assert chain_hash(1, replace(base, **{name: value}), "replica-a", GENESIS) != digest, name
    assert chain_hash(1, base, "replica-b", GENESIS) != digest
    assert chain_hash(2, base, "replica-a", GENESIS) != digest
    assert chain_hash(1, base, "replica-a", "1" * 64) != digest


def test_clipping_leaves_a_clean_entry_alone_and_cuts_and_cleans_only_the_fields_that_need_it():
    from kms.domain.audit import FIELD_LIMITS, clipped

    clean = entry(1)
    assert clipped(clean) is clean
    dirty = replace(clean, detail="x" * 600, peer="ipv4:\x00evil", key_id="orders")
    fixed = clipped(dirty)
    assert fixed.detail == "x" * FIELD_LIMITS["detail"]
    assert fixed.peer == "ipv4:\ufffdevil"
    assert replace(fixed, detail=dirty.detail, peer=dirty.peer) == dirty  # nothing else changed
