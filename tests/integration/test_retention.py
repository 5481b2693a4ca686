"""Retention by destruction: versions superseded longer ago than a key's retention_period are
scheduled for destruction by the scheduler, with an injected clock, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kms.app import build_services
from kms.domain.keys import Storage, VersionState
from kms.errors import InvalidPrivacySetting, KeyVersionDestroyed, KeyVersionDestroyScheduled, RewrapDefeatsRetention
from kms.service.calls import Call
from kms.service.data_keys import UnwrapRequest
from tests.support.clock import ManualClock

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
RETENTION = 3 * DAY
WINDOW = 2 * DAY  # KMS_RETENTION_PENDING_WINDOW here


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def replica(settings, clock):
    services = build_services(
        settings.model_copy(update={"min_destroy_pending_window": DAY, "retention_pending_window": WINDOW}), clock
    )
    yield services
    services.close()


def _states(replica, key_id="daily"):
    return {v.version: v.state for v in replica.keys.get_key(Call(), key_id).versions}


def test_versions_superseded_longer_ago_than_the_retention_are_destroyed_and_no_others(replica, clock):
    key = replica.keys.create_key(Call(), "daily", rotation_period=DAY, retention_period=RETENTION)
    assert key.storage is Storage.HSM_OBJECT  # gone from backups too once destroyed
    replica.keys.create_key(Call(), "kept", rotation_period=DAY)  # no retention: never destroyed
    issued = {}
    for day in range(8):
        issued[day] = replica.data_keys.generate_data_key(Call(), "daily", {"day": str(day)})
        clock.advance(DAY)
        done = replica.scheduler.run_once()
        assert ("daily", day + 2) in done.rotated
    # Version v stopped being primary at day v; it is scheduled once that is 3 days ago, and
    # destroyed 2 days after that: at day 8, versions 1-5 are scheduled and 1-3 destroyed.
    states = _states(replica)
    assert [n for n, s in states.items() if s is VersionState.DESTROYED] == [1, 2, 3]
    assert [n for n, s in states.items() if s is VersionState.DESTROY_SCHEDULED] == [4, 5]
    assert all(states[n] is VersionState.ENABLED for n in range(6, 10))
    destroyed_at = replica.keys.get_key(Call(), "daily").version(3).destroy_time
    assert destroyed_at == replica.keys.get_key(Call(), "daily").version(4).create_time + RETENTION + WINDOW
    with pytest.raises(KeyVersionDestroyed):
        replica.data_keys.decrypt(Call(), issued[0].wrapped_key, {"day": "0"})
    with pytest.raises(KeyVersionDestroyScheduled):
        replica.data_keys.decrypt(Call(), issued[4].wrapped_key, {"day": "4"})
    assert replica.data_keys.decrypt(Call(), issued[7].wrapped_key, {"day": "7"}).plaintext == issued[7].plaintext
    assert all(v.state is VersionState.ENABLED for v in replica.keys.get_key(Call(), "kept").versions)
    # The audit log holds each scheduling, as the scheduler.
    replica.audit_log.flush()
    records = [r.entry for r in replica.audit.events(Call(), key_id="daily") if r.entry.rpc == "Retention"]
    assert records and all(r.identity == "kms:scheduler" and "retention" in r.detail for r in records)


def test_retention_is_not_held_back_by_recent_use(replica, clock):
    replica.keys.create_key(Call(), "daily", retention_period=RETENTION)
    issued = replica.data_keys.generate_data_key(Call(), "daily", {})
    replica.keys.rotate_key(Call(), "daily")
    clock.advance(RETENTION + HOUR)
    replica.data_keys.decrypt(Call(), issued.wrapped_key, {})  # used a moment ago: retire would refuse
    replica.scheduler.run_once()
    assert _states(replica)[1] is VersionState.DESTROY_SCHEDULED


def test_retention_set_on_an_existing_key_applies_and_can_be_cleared(replica, clock):
    replica.keys.create_key(Call(), "daily", storage=Storage.HSM_OBJECT)
    replica.keys.rotate_key(Call(), "daily")
    clock.advance(10 * DAY)
    replica.lifecycle.update_key(Call(), "daily", retention_period=RETENTION)
    replica.scheduler.run_once()
    assert _states(replica)[1] is VersionState.DESTROY_SCHEDULED
    replica.keys.rotate_key(Call(), "daily")
    cleared = replica.lifecycle.update_key(Call(), "daily", retention_period=None)
    assert cleared.retention_period is None
    clock.advance(10 * DAY)
    replica.scheduler.run_once()
    assert _states(replica)[2] is VersionState.ENABLED
    with pytest.raises(InvalidPrivacySetting, match="at least"):
        replica.lifecycle.update_key(Call(), "daily", retention_period=timedelta(seconds=0.5))


def test_rewrap_refuses_keys_with_a_retention(replica):
    replica.keys.create_key(Call(), "daily", retention_period=RETENTION)
    replica.keys.create_key(Call(), "other")
    issued = replica.data_keys.generate_data_key(Call(), "daily", {"n": "1"})
    replica.keys.rotate_key(Call(), "daily")
    with pytest.raises(RewrapDefeatsRetention, match="retention_period of 3 days") as refused:
        replica.data_keys.rewrap(Call(), issued.wrapped_key, {"n": "1"})
    assert refused.value.code == "FAILED_PRECONDITION"
    with pytest.raises(RewrapDefeatsRetention):
        replica.data_keys.rewrap(Call(), issued.wrapped_key, {"n": "1"}, destination_key_id="other")
    (result,) = replica.data_keys.rewrap_many(Call(), [UnwrapRequest(issued.wrapped_key, {"n": "1"})])
    assert isinstance(result, RewrapDefeatsRetention)
    # Moving data *into* a key with a retention is fine: it is then held to that retention.
    plain = replica.data_keys.generate_data_key(Call(), "other", {"n": "2"})
    moved = replica.data_keys.rewrap(Call(), plain.wrapped_key, {"n": "2"}, destination_key_id="daily")
    assert moved.key_id == "daily"
