"""Scheduled rotation and destruction, with an injected clock, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from kms.app import build_services
from kms.domain.keys import Storage, VersionState
from kms.errors import KeyVersionDestroyed, KeyVersionDestroyScheduled, VersionStillInUse
from kms.service.calls import Call
from tests.support.clock import ManualClock
from tests.support.hsm import pkcs11_tool_secret_keys

HOUR, DAY = timedelta(hours=1), timedelta(days=1)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def replica(settings, clock):
    services = build_services(settings.model_copy(update={"min_destroy_pending_window": DAY}), clock)
    yield services
    services.close()


def test_rotates_only_keys_that_are_due(replica, clock):
    replica.keys.create_key(Call(), "hourly", rotation_period=HOUR)
    replica.keys.create_key(Call(), "daily", rotation_period=DAY)
    replica.keys.create_key(Call(), "manual")
    assert replica.scheduler.run_once().rotated == []

    clock.advance(HOUR + timedelta(seconds=1))
    assert replica.scheduler.run_once().rotated == [("hourly", 2)]
    assert replica.scheduler.run_once().rotated == []  # rescheduled an hour from the rotation

    clock.advance(DAY)
    assert sorted(replica.scheduler.run_once().rotated) == [("daily", 2), ("hourly", 3)]
    assert replica.keys.get_key(Call(), "manual").primary_version == 1


def test_a_long_outage_rotates_once_not_once_per_missed_period(replica, clock):
    replica.keys.create_key(Call(), "k", rotation_period=HOUR)
    clock.advance(10 * HOUR)
    assert replica.scheduler.run_once().rotated == [("k", 2)]
    assert replica.keys.get_key(Call(), "k").next_rotation_time == clock.now() + HOUR


def test_changing_the_period_reschedules_from_the_primary_versions_creation(replica, clock):
    created = replica.keys.create_key(Call(), "k", rotation_period=30 * DAY)
    clock.advance(10 * DAY)
    shorter = replica.lifecycle.update_key(Call(), "k", rotation_period=7 * DAY)
    assert shorter.next_rotation_time == created.create_time + 7 * DAY
    assert replica.scheduler.run_once().rotated == [("k", 2)]  # the primary is 10 days old
    stopped = replica.lifecycle.update_key(Call(), "k", rotation_period=None)
    assert stopped.next_rotation_time is None
    clock.advance(100 * DAY)
    assert replica.scheduler.run_once().rotated == []


@pytest.mark.parametrize("storage", [Storage.HSM_OBJECT, Storage.WRAPPED])
def test_destruction_after_the_window_removes_the_key_material_and_keeps_a_tombstone(
    replica, clock, hsm_token, storage
):
    replica.keys.create_key(Call(), "k", storage=storage)
    old = replica.data_keys.generate_data_key(Call(), "k", {})
    replica.keys.rotate_key(Call(), "k")
    first = replica.keys.get_key(Call(), "k").versions[0]
    master_key_id = first.master_key_id

    def material_present() -> bool:
        if storage is Storage.HSM_OBJECT:
            return master_key_id in {o.get("id") for o in pkcs11_tool_secret_keys(hsm_token)}
        return bool(replica.keys.get_key(Call(), "k").versions[0].wrapped_material)

    assert material_present()
    replica.lifecycle.schedule_destruction(Call(), "k", 1, 2 * DAY)
    with pytest.raises(KeyVersionDestroyScheduled, match="version 1 is DESTROY_SCHEDULED"):
        replica.data_keys.decrypt(Call(), old.wrapped_key, {})

    clock.advance(DAY)
    assert replica.scheduler.run_once().destroyed == []
    assert material_present()

    clock.advance(DAY + timedelta(seconds=1))
    assert replica.scheduler.run_once().destroyed == [("k", 1)]
    assert not material_present()
    tombstone = replica.keys.get_key(Call(), "k").versions[0]
    assert (tombstone.state, tombstone.destroy_time) == (VersionState.DESTROYED, clock.now())
    with pytest.raises(KeyVersionDestroyed, match="version 1 is DESTROYED"):
        replica.data_keys.decrypt(Call(), old.wrapped_key, {})
    assert replica.reconciler.reconcile().consistent


def test_a_cancelled_destruction_destroys_nothing(replica, clock):
    replica.keys.create_key(Call(), "k")
    issued = replica.data_keys.generate_data_key(Call(), "k", {})
    replica.keys.rotate_key(Call(), "k")
    replica.lifecycle.schedule_destruction(Call(), "k", 1, DAY)
    replica.lifecycle.cancel_destruction(Call(), "k", 1)
    clock.advance(3 * DAY)
    assert replica.scheduler.run_once().destroyed == []
    replica.lifecycle.enable_version(Call(), "k", 1)
    assert replica.data_keys.decrypt(Call(), issued.wrapped_key, {}).plaintext == issued.plaintext


def test_usage_is_counted_per_version_and_written_in_batches(replica, clock):
    replica.keys.create_key(Call(), "k")
    issued = [replica.data_keys.generate_data_key(Call(), "k", {}) for _ in range(5)]
    replica.keys.rotate_key(Call(), "k")
    for data_key in issued[:3]:
        replica.data_keys.decrypt(Call(), data_key.wrapped_key, {})
    replica.data_keys.rewrap(Call(), issued[4].wrapped_key, {})
    before_flush = replica.repository.get("k").versions[0].usage
    assert before_flush.data_keys_issued == 0  # nothing written per call
    key = replica.keys.get_key(Call(), "k")  # flushes this replica's counts first
    first, second = key.versions
    assert (first.usage.data_keys_issued, first.usage.decrypts) == (5, 4)
    assert (second.usage.data_keys_issued, second.usage.decrypts) == (1, 0)
    assert first.usage.last_used_time == clock.now()


def test_a_version_that_wrapped_its_budget_of_data_keys_is_rotated_whatever_its_schedule(settings, clock):
    replica = build_services(settings.model_copy(update={"max_wraps_per_version": 5}), clock)
    try:
        replica.keys.create_key(Call(), "busy", rotation_period=30 * DAY)
        replica.keys.create_key(Call(), "quiet")
        for _ in range(4):
            replica.data_keys.generate_data_key(Call(), "busy", {})
        assert replica.scheduler.run_once().rotated == []
        issued = replica.data_keys.generate_data_key(Call(), "busy", {})  # the fifth wrap
        assert replica.scheduler.run_once().rotated == [("busy", 2)]
        assert replica.scheduler.run_once().rotated == []  # version 2 has its own budget
        assert replica.data_keys.decrypt(Call(), issued.wrapped_key, {}).key_version == 1
        assert replica.keys.get_key(Call(), "quiet").primary_version == 1
    finally:
        replica.close()


def test_retire_refuses_a_version_still_in_use(replica, clock):
    replica.keys.create_key(Call(), "k")
    issued = replica.data_keys.generate_data_key(Call(), "k", {})
    replica.keys.rotate_key(Call(), "k")
    clock.advance(DAY)
    replica.data_keys.decrypt(Call(), issued.wrapped_key, {})
    with pytest.raises(VersionStillInUse, match="version 1 is still in use: last used 0s ago"):
        replica.lifecycle.retire_version(Call(), "k", 1, min_idle=7 * DAY)
    clock.advance(8 * DAY)
    retired = replica.lifecycle.retire_version(Call(), "k", 1, min_idle=7 * DAY, pending_window=2 * DAY)
    assert retired.versions[0].state is VersionState.DESTROY_SCHEDULED
    assert retired.versions[0].destroy_time == clock.now() + 2 * DAY


def test_two_replicas_racing_rotate_each_due_key_exactly_once(postgres_url, hsm_token, tmp_path, label_prefix, clock):
    from tests.support.fixtures import make_settings, own_journal

    settings = make_settings(hsm_token, tmp_path, postgres_url, label_prefix)
    first, second = (build_services(own_journal(settings, name), clock) for name in ("1", "2"))
    try:
        for n in range(40):
            first.keys.create_key(Call(), f"k{n:02d}", rotation_period=HOUR)
        clock.advance(HOUR)
        passes = []
        barrier = threading.Barrier(2)

        def run(replica) -> None:
            barrier.wait()
            passes.append(replica.scheduler.run_once())

        threads = [threading.Thread(target=run, args=(r,)) for r in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rotated = [key_id for done in passes for key_id, _ in done.rotated]
        assert sorted(rotated) == [f"k{n:02d}" for n in range(40)]  # every key once, none twice
        assert all(not done.failed for done in passes)
        assert all(len(first.repository.get(f"k{n:02d}").versions) == 2 for n in range(40))
    finally:
        first.close()
        second.close()
