"""The privacy rules as pure functions (kms.domain.privacy): settings that hold together, when a
version stopped being primary, what retention and the erasure cadence schedule, and when an
erasure is final in backups."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kms.domain import privacy
from kms.domain.keys import Key, KeyVersion, Purpose, Storage, VersionState
from kms.domain.ledger import ERASURE, Change, LedgerState, erasure_bytes, erasure_digest, erasure_name, extend
from kms.domain.privacy import Erasure, PrivacyRules
from kms.errors import InvalidArgument, InvalidPrivacySetting

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
F = timedelta(days=30)
RULES = PrivacyRules(timedelta(hours=1), DAY)


def _key(versions: int, *, days_apart: int = 15, **settings) -> Key:
    made = tuple(
        KeyVersion("k", n, VersionState.ENABLED, f"id{n}", f"kms:k:v{n}", T0 + (n - 1) * days_apart * DAY)
        for n in range(1, versions + 1)
    )
    key = Key("k", "", versions, made, T0, T0, storage=Storage.HSM_OBJECT, **settings)
    return key.rescheduled()


def _with_state(key: Key, number: int, state: VersionState, destroy_time: datetime | None = None) -> Key:
    versions = tuple(
        replace(v, state=state, destroy_time=destroy_time) if v.version == number else v for v in key.versions
    )
    return replace(key, versions=versions)


def test_a_subject_key_must_be_an_hsm_object_key_without_retention():
    assert privacy.settle_new_key("user_id", None, None, None, Purpose.ENCRYPT_DECRYPT, RULES) == (
        Storage.HSM_OBJECT,
        F,
    )
    with pytest.raises(InvalidPrivacySetting, match="backup"):
        privacy.settle_new_key("user_id", None, None, Storage.WRAPPED, Purpose.ENCRYPT_DECRYPT, RULES)
    with pytest.raises(InvalidPrivacySetting, match="do not combine"):
        privacy.settle_new_key("user_id", 90 * DAY, None, None, Purpose.ENCRYPT_DECRYPT, RULES)
    with pytest.raises(InvalidPrivacySetting, match="ENCRYPT_DECRYPT"):
        privacy.settle_new_key("user_id", None, None, None, Purpose.PSEUDONYMIZE, RULES)
    with pytest.raises(InvalidPrivacySetting, match="subject_field only"):
        privacy.settle_new_key("", None, F, None, Purpose.ENCRYPT_DECRYPT, RULES)


def test_a_retention_key_is_an_hsm_object_key_unless_wrapped_is_asked_for():
    assert privacy.settle_new_key("", 90 * DAY, None, None, Purpose.ENCRYPT_DECRYPT, RULES) == (
        Storage.HSM_OBJECT,
        None,
    )
    assert privacy.settle_new_key("", 90 * DAY, None, Storage.WRAPPED, Purpose.ENCRYPT_DECRYPT, RULES)[0] is (
        Storage.WRAPPED
    )
    assert privacy.settle_new_key("", None, None, None, Purpose.ENCRYPT_DECRYPT, RULES) == (None, None)


@pytest.mark.parametrize(
    ("field", "ok"),
    [("user_id", True), ("é" * 64, True), ("", False), ("x" * 129, False), ("bad\nname", False), ("é" * 65, False)],
)
def test_subject_field_is_an_encryption_context_entry_name(field, ok):
    if ok:
        assert privacy.validate_subject_field(field) == field
    else:
        with pytest.raises(InvalidArgument):
            privacy.validate_subject_field(field)


def test_bounds_quote_the_numbers():
    with pytest.raises(InvalidPrivacySetting, match="at least 172800 seconds"):
        privacy.validate_erasure_finality(DAY, RULES)
    with pytest.raises(InvalidPrivacySetting, match="10 years"):
        privacy.validate_erasure_finality(timedelta(days=3700), RULES)
    with pytest.raises(InvalidPrivacySetting, match="at least 3600 seconds"):
        privacy.validate_retention_period(timedelta(minutes=5), RULES)
    with pytest.raises(InvalidArgument):
        privacy.validate_subject("")
    with pytest.raises(InvalidArgument):
        privacy.validate_subject("x" * 1025)


def test_the_cadence_rotates_at_half_the_finality_or_sooner():
    assert _key(1, subject_field="user_id", erasure_finality=F).rotation_cadence == F / 2
    assert _key(1, subject_field="user_id", erasure_finality=F, rotation_period=DAY).rotation_cadence == DAY
    assert _key(1, subject_field="user_id", erasure_finality=F).next_rotation_time == T0 + F / 2
    assert _key(1, erasure_finality=None).rotation_cadence is None


def test_superseded_at_is_the_next_versions_creation():
    key = _key(3)
    assert [privacy.superseded_at(key, n) for n in (1, 2, 3)] == [T0 + 15 * DAY, T0 + 30 * DAY, None]


def test_retention_schedules_only_live_versions_superseded_longer_ago():
    key = _with_state(_key(4, days_apart=1, retention_period=2 * DAY), 1, VersionState.DESTROYED, T0)
    # v2 stopped being primary at T0+2d, v3 at T0+3d, v4 is primary.
    assert privacy.retention_due(key, T0 + 4 * DAY) == [2]
    assert privacy.retention_due(key, T0 + 5 * DAY) == [2, 3]
    assert privacy.retention_due(replace(key, retention_period=None), T0 + 50 * DAY) == []
    disabled = _with_state(key, 2, VersionState.DISABLED)
    assert privacy.retention_due(disabled, T0 + 5 * DAY) == [2, 3]  # disabled or not


def test_finality_plan_destroys_carried_versions_half_the_finality_after_they_were_superseded():
    key = _key(3, subject_field="user_id", erasure_finality=F)
    now = T0 + 31 * DAY
    plan = privacy.finality_plan(key, now, carried=lambda n: n != 2, min_window=DAY)
    assert plan == [(1, now + DAY)]  # v1 superseded at T0+15d: due at T0+30d, not before now + min window
    early = privacy.finality_plan(key, T0 + 16 * DAY, carried=lambda n: True, min_window=DAY)
    assert early == [(1, T0 + 30 * DAY), (2, T0 + 45 * DAY)]


def test_an_erasure_is_final_once_every_version_up_to_its_last_is_destroyed():
    key = _key(3, subject_field="user_id", erasure_finality=F)
    erasure = Erasure("k", "ab" * 32, T0 + DAY, "officer", True, 2)
    pending = privacy.finality(key, erasure, T0 + 20 * DAY)
    assert pending == privacy.Finality(False, T0 + 45 * DAY)  # v2 superseded at T0+30d, + F/2
    scheduled = _with_state(key, 2, VersionState.DESTROY_SCHEDULED, T0 + 44 * DAY)
    assert privacy.finality(scheduled, erasure, T0 + 20 * DAY).final_time == T0 + 44 * DAY  # as scheduled
    done = _with_state(
        _with_state(key, 1, VersionState.DESTROYED, T0 + 30 * DAY), 2, VersionState.DESTROYED, T0 + 44 * DAY
    )
    assert privacy.finality(done, erasure, T0 + 50 * DAY) == privacy.Finality(True, T0 + 44 * DAY)
    on_primary = replace(erasure, final_after_version=3)
    assert privacy.finality(key, on_primary, T0 + 20 * DAY).final_time == key.next_rotation_time + F / 2
    without_cadence = replace(key, erasure_finality=None)
    assert privacy.finality(without_cadence, erasure, T0 + 20 * DAY) == privacy.Finality(False, None)
    never_wrapped = replace(erasure, final_after_version=0)
    assert privacy.finality(key, never_wrapped, T0 + 20 * DAY) == privacy.Finality(True, erasure.erase_time)


def test_an_erasure_in_the_ledger_is_named_by_key_and_digest_and_never_goes_away():
    erasure = Erasure("k", "cd" * 32, T0, "officer", False, 4)
    canonical = erasure_bytes(erasure)
    assert canonical.startswith(b"kms-erasure-v1") and b"officer" in canonical
    assert erasure_digest(replace(erasure, final_after_version=5)) != erasure_digest(erasure)
    state = LedgerState()
    name = erasure_name("k", erasure.subject_digest)
    state.apply(extend(0, state.hash, [Change(ERASURE, name, 1, erasure_digest(erasure))]))
    assert state.expected(ERASURE, name) == (1, erasure_digest(erasure))
    assert name in state.live(ERASURE)
