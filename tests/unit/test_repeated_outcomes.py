"""kms.domain.repeats.RepeatedOutcomes, on a clock the test passes in: the first failure of a kind
is recorded in full, identical ones inside the window are only counted, and the window ends in
one summary record; outcomes a caller cannot provoke without a grant are never folded."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kms.domain.audit import FIELD_LIMITS, AuditEntry
from kms.domain.repeats import FOLDED_OUTCOMES, RepeatedOutcomes

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
WINDOW = 10.0


def refused(second: float = 0, key_id: str = "orders", identity: str = "spiffe://kms.dev/app", **changes) -> AuditEntry:
    entry = AuditEntry(
        time=T0 + timedelta(seconds=second),
        identity=identity,
        rpc="Decrypt",
        outcome="PERMISSION_DENIED",
        key_id=key_id,
        key_version=2,
        reason="PermissionDenied",
        request_id=f"r{second}",
        peer="ipv4:10.0.0.1:5000",
        context_digest="ab" * 32,
        item=-1,
    )
    return replace(entry, **changes)


@pytest.mark.parametrize("outcome", ["OK", "NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE", "INTERNAL", "CANCELLED"])
def test_outcomes_that_need_a_grant_are_always_recorded_one_by_one(outcome):
    repeats = RepeatedOutcomes(WINDOW)
    entries = [refused(n, outcome=outcome) for n in range(5)]
    assert [repeats.admit(e, 100.0) for e in entries] == [[e] for e in entries]
    assert repeats.close_all() == []


def test_the_folded_outcomes_are_those_a_caller_provokes_without_a_grant():
    assert {"PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"} == FOLDED_OUTCOMES


def test_the_first_of_a_kind_is_recorded_and_repeats_inside_the_window_are_only_counted():
    repeats = RepeatedOutcomes(WINDOW)
    first = refused(0)
    assert repeats.admit(first, 100.0) == [first]
    assert [repeats.admit(refused(n), 100.0 + n) for n in range(1, 10)] == [[]] * 9
    assert repeats.expired(109.9) == []


def test_a_closed_window_becomes_one_summary_of_the_repeats():
    repeats = RepeatedOutcomes(WINDOW)
    repeats.admit(refused(0, key_id="a"), 100.0)
    repeats.admit(refused(3, key_id="b"), 103.0)
    repeats.admit(refused(7, key_id="a"), 107.0)
    (summary,) = repeats.expired(110.0)
    assert summary.detail == (
        "2 more like this from 2026-01-01T12:00:00+00:00 to 2026-01-01T12:00:07+00:00; key ids a, b"
    )
    assert (summary.identity, summary.rpc, summary.outcome, summary.reason, summary.peer) == (
        "spiffe://kms.dev/app",
        "Decrypt",
        "PERMISSION_DENIED",
        "PermissionDenied",
        "ipv4:10.0.0.1:5000",
    )
    cleared = (summary.key_id, summary.key_version, summary.request_id, summary.context_digest, summary.item)
    assert summary.time == T0 + timedelta(seconds=7) and cleared == ("", 0, "", "", -1)
    assert repeats.expired(1000.0) == [] and repeats.close_all() == []  # forgotten once summarized


def test_a_window_without_repeats_closes_without_a_summary():
    repeats = RepeatedOutcomes(WINDOW)
    repeats.admit(refused(0), 100.0)
    assert repeats.expired(110.0) == []
    second = refused(20)
    assert repeats.admit(second, 120.0) == [second]  # a new window, recorded in full


def test_the_same_kind_after_the_window_writes_the_summary_then_itself():
    repeats = RepeatedOutcomes(WINDOW)
    repeats.admit(refused(0), 100.0)
    repeats.admit(refused(1), 101.0)
    later = refused(12)
    summary, again = repeats.admit(later, 112.0)
    assert summary.detail.startswith("1 more like this") and again is later
    assert repeats.admit(refused(13), 113.0) == []  # the new window counts from 112


@pytest.mark.parametrize(
    "change",
    [
        {"identity": "spiffe://kms.dev/other"},
        {"rpc": "GenerateDataKey"},
        {"outcome": "UNAUTHENTICATED"},
        {"reason": "Unauthenticated"},
    ],
    ids=["identity", "rpc", "outcome", "reason"],
)
def test_a_different_identity_action_outcome_or_reason_is_another_kind(change):
    repeats = RepeatedOutcomes(WINDOW)
    repeats.admit(refused(0), 100.0)
    other = refused(1, **change)
    assert repeats.admit(other, 101.0) == [other]


def test_a_different_key_or_request_is_the_same_kind():
    repeats = RepeatedOutcomes(WINDOW)
    repeats.admit(refused(0), 100.0)
    assert repeats.admit(refused(1, key_id="billing", request_id="other", item=4), 101.0) == []


def test_a_summary_names_eight_key_ids_and_counts_the_rest():
    repeats = RepeatedOutcomes(WINDOW)
    repeats.admit(refused(0, key_id="k00"), 100.0)
    for n in range(1, 13):
        repeats.admit(refused(0, key_id=f"k{n:02d}"), 100.0)
    repeats.admit(refused(0, key_id=""), 100.0)  # a refusal naming no key adds no name
    (summary,) = repeats.close_all()
    assert summary.detail.endswith("; key ids k01, k02, k03, k04, k05, k06, k07, k08 and 4 more")
    assert summary.detail.startswith("13 more like this")


def test_a_summary_fits_its_column():
    repeats = RepeatedOutcomes(WINDOW)
    repeats.admit(refused(0), 100.0)
    for n in range(8):
        repeats.admit(refused(0, key_id=f"{n}" * 64), 100.0)
    (summary,) = repeats.close_all()
    assert len(summary.detail) == FIELD_LIMITS["detail"]


def test_close_all_summarizes_every_open_window():
    repeats = RepeatedOutcomes(WINDOW)
    for identity in ("spiffe://a", "spiffe://b", "spiffe://c"):
        repeats.admit(refused(0, identity=identity), 100.0)
        repeats.admit(refused(1, identity=identity), 101.0)
    assert sorted(s.identity for s in repeats.close_all()) == ["spiffe://a", "spiffe://b", "spiffe://c"]


def test_too_many_kinds_at_once_close_every_window_first():
    repeats = RepeatedOutcomes(WINDOW)
    for n in range(10_000):
        repeats.admit(refused(0, identity=f"spiffe://caller/{n}"), 100.0)
    repeats.admit(refused(1, identity="spiffe://caller/0"), 100.0)
    newcomer = refused(2, identity="spiffe://caller/new")
    written = repeats.admit(newcomer, 100.0)
    assert written[-1] is newcomer
    assert [s.identity for s in written[:-1]] == ["spiffe://caller/0"]  # only windows with repeats summarize
    assert repeats.admit(refused(3, identity="spiffe://caller/1"), 100.0) != []  # its window was closed
