from datetime import UTC, datetime, timedelta

import pytest

from kms.domain import lifecycle
from kms.domain.keys import Key, KeyVersion, VersionState
from kms.errors import InvalidArgument, InvalidStateTransition

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
E, D, S, X = VersionState.ENABLED, VersionState.DISABLED, VersionState.DESTROY_SCHEDULED, VersionState.DESTROYED


def key_with(*states: VersionState, primary: int | None = None) -> Key:
    versions = tuple(
        KeyVersion("k", n, state, f"{n:032x}", f"kms:k:v{n}", NOW, NOW + DAY if state is S else None)
        for n, state in enumerate(states, start=1)
    )
    return Key("k", "", primary or len(states), versions, NOW, NOW)


def states(key: Key) -> list[VersionState]:
    return [v.state for v in key.versions]


def test_disable_and_enable_round_trip():
    key = lifecycle.disable(key_with(E, E), 1, NOW)
    assert states(key) == [D, E]
    assert states(lifecycle.enable(key, 1, NOW)) == [E, E]


def test_repeating_a_transition_changes_nothing():
    key = key_with(D, E)
    assert lifecycle.disable(key, 1, NOW) is key
    assert lifecycle.enable(key_with(E, E), 1, NOW).versions == key_with(E, E).versions
    scheduled = lifecycle.schedule_destruction(key, 1, NOW, 2 * DAY, DAY)
    assert lifecycle.schedule_destruction(scheduled, 1, NOW, 9 * DAY, DAY) is scheduled


def test_destruction_is_scheduled_then_cancelled_to_disabled():
    key = lifecycle.schedule_destruction(key_with(E, E), 1, NOW, 2 * DAY, DAY)
    assert states(key) == [S, E] and key.version(1).destroy_time == NOW + 2 * DAY
    cancelled = lifecycle.cancel_destruction(key, 1, NOW)
    assert states(cancelled) == [D, E] and cancelled.version(1).destroy_time is None


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda k: lifecycle.disable(k, 2, NOW), "primary version and cannot be disabled"),
        (lambda k: lifecycle.schedule_destruction(k, 2, NOW, 2 * DAY, DAY), "primary version and cannot be destroyed"),
    ],
)
def test_the_primary_version_is_protected(action, message):
    with pytest.raises(InvalidStateTransition, match=message):
        action(key_with(E, E))


@pytest.mark.parametrize(
    ("states_before", "action", "message"),
    [
        (
            (S, E),
            lambda k: lifecycle.enable(k, 1, NOW),
            "cannot enable key 'k' version 1: it is DESTROY_SCHEDULED; cancel",
        ),
        ((X, E), lambda k: lifecycle.enable(k, 1, NOW), "it is DESTROYED"),
        ((X, E), lambda k: lifecycle.disable(k, 1, NOW), "cannot disable key 'k' version 1: it is DESTROYED"),
        ((S, E), lambda k: lifecycle.disable(k, 1, NOW), "it is DESTROY_SCHEDULED"),
        ((E, E), lambda k: lifecycle.cancel_destruction(k, 1, NOW), "it is ENABLED"),
        ((X, E), lambda k: lifecycle.schedule_destruction(k, 1, NOW, 2 * DAY, DAY), "it is DESTROYED"),
    ],
)
def test_forbidden_transitions_say_what_the_version_is(states_before, action, message):
    with pytest.raises(InvalidStateTransition, match=message):
        action(key_with(*states_before))


def test_pending_window_limits():
    with pytest.raises(InvalidArgument, match="at least 86400 seconds"):
        lifecycle.schedule_destruction(key_with(E, E), 1, NOW, DAY / 2, DAY)
    with pytest.raises(InvalidArgument, match="at most 10 years"):
        lifecycle.schedule_destruction(key_with(E, E), 1, NOW, DAY * 5000, DAY)


def test_destruction_only_once_due():
    key = lifecycle.schedule_destruction(key_with(E, E), 1, NOW, 2 * DAY, DAY)
    assert not lifecycle.is_destruction_due(key.version(1), NOW + DAY)
    with pytest.raises(InvalidStateTransition):
        lifecycle.mark_destroyed(key, 1, NOW + DAY)
    later = NOW + 2 * DAY
    destroyed = lifecycle.mark_destroyed(key, 1, later)
    assert states(destroyed) == [X, E] and destroyed.version(1).destroy_time == later


def test_min_decryption_version_is_bounded_by_the_primary():
    key = key_with(E, E, E)
    assert lifecycle.set_min_decryption_version(key, 3, NOW).min_decryption_version == 3
    for bad in (0, 4):
        with pytest.raises(InvalidArgument, match="between 1 and the primary version 3"):
            lifecycle.set_min_decryption_version(key, bad, NOW)


def test_a_new_rotation_period_counts_from_the_primary_versions_creation():
    key = key_with(E)  # primary created at NOW
    updated = key.with_rotation_period(timedelta(days=30), NOW + 40 * DAY)
    assert updated.next_rotation_time == NOW + 30 * DAY
    assert updated.is_rotation_due(NOW + 40 * DAY)
    assert key.with_rotation_period(None, NOW).next_rotation_time is None
