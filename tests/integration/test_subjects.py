"""Keys with a subject_field: a key per data subject, erasure, carrying onto new versions, and
the cadence that makes erasures final in backups. Real SoftHSM2, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event

from kms.app import build_services
from kms.crypto import subject_key
from kms.domain.keys import Storage, VersionState
from kms.errors import (
    FailedPrecondition,
    InvalidCiphertext,
    InvalidPrivacySetting,
    KeyVersionDestroyed,
    PermissionDenied,
    SubjectErased,
    SubjectMissing,
)
from kms.service.calls import Call
from tests.support.clock import ManualClock
from tests.support.fixtures import own_journal

DAY = timedelta(days=1)
FINALITY = timedelta(days=30)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def replica(settings, clock):
    services = build_services(settings.model_copy(update={"min_destroy_pending_window": DAY}), clock)
    yield services
    services.close()


def _replica(settings, clock, name: str):
    """Another replica on the same database and HSM."""
    return build_services(own_journal(settings, name), clock)


def _subject_key(replica, key_id: str = "people", **settings):
    return replica.keys.create_key(Call(), key_id, subject_field="user_id", **settings)


def test_a_subject_key_is_an_hsm_object_key_with_the_default_finality_and_rotates_on_its_cadence(replica):
    key = _subject_key(replica)
    assert (key.subject_field, key.storage, key.erasure_finality) == ("user_id", Storage.HSM_OBJECT, FINALITY)
    assert key.rotation_cadence == FINALITY / 2
    assert key.next_rotation_time == key.create_time + FINALITY / 2
    stored = replica.keys.get_key(Call(), "people")
    assert (stored.subject_field, stored.erasure_finality) == ("user_id", FINALITY)


def test_settings_that_cannot_hold_are_refused_before_anything_is_made(replica):
    with pytest.raises(InvalidPrivacySetting, match="HSM objects"):
        _subject_key(replica, "wrapped", storage=Storage.WRAPPED)
    with pytest.raises(InvalidPrivacySetting, match="do not combine"):
        _subject_key(replica, "both", retention_period=90 * DAY)
    with pytest.raises(InvalidPrivacySetting, match="subject_field only"):
        replica.keys.create_key(Call(), "plain", erasure_finality=FINALITY)
    with pytest.raises(InvalidPrivacySetting, match="erasure_finality must be at least"):
        _subject_key(replica, "fast", erasure_finality=DAY)
    assert [o.key_id for o in replica.master_keys.list_objects()] == []
    _subject_key(replica)
    with pytest.raises(InvalidPrivacySetting, match="HSM objects"):
        replica.lifecycle.update_key(Call(), "people", storage=Storage.WRAPPED)


def test_data_keys_open_for_their_own_subject_only_and_need_the_subject_entry(replica):
    _subject_key(replica)
    alice = {"user_id": "alice", "table": "orders"}
    issued = replica.data_keys.generate_data_key(Call(), "people", alice)
    assert issued.wrapped_key[0] == subject_key.FORMAT_VERSION and issued.key_version == 1
    assert replica.data_keys.decrypt(Call(), issued.wrapped_key, alice).plaintext == issued.plaintext
    with pytest.raises(InvalidCiphertext):
        replica.data_keys.decrypt(Call(), issued.wrapped_key, {"user_id": "bob", "table": "orders"})
    with pytest.raises(InvalidCiphertext):
        replica.data_keys.decrypt(Call(), issued.wrapped_key, {"user_id": "alice", "table": "other"})
    with pytest.raises(SubjectMissing, match="'user_id'"):
        replica.data_keys.generate_data_key(Call(), "people", {"table": "orders"})
    with pytest.raises(SubjectMissing):
        replica.data_keys.decrypt(Call(), issued.wrapped_key, {"table": "orders"})
    tampered = bytearray(issued.wrapped_key)
    tampered[-1] ^= 1
    with pytest.raises(InvalidCiphertext):
        replica.data_keys.decrypt(Call(), bytes(tampered), alice)


def test_a_known_subject_needs_neither_the_database_nor_the_hsm(replica):
    _subject_key(replica)
    context = {"user_id": "alice"}
    replica.data_keys.generate_data_key(Call(), "people", context)  # first use: made and stored
    issued = replica.data_keys.generate_data_key(Call(), "people", context)
    replica.engine.dispose()
    replica.pool.close()  # neither the database nor the HSM may be asked from here on
    original_get = replica.subject_repository.get
    replica.subject_repository.get = lambda *a: pytest.fail("the database was asked")  # type: ignore[method-assign]
    try:
        again = replica.data_keys.generate_data_key(Call(), "people", context)
        assert replica.data_keys.decrypt(Call(), again.wrapped_key, context).plaintext == again.plaintext
        assert replica.data_keys.decrypt(Call(), issued.wrapped_key, context).plaintext == issued.plaintext
    finally:
        replica.subject_repository.get = original_get  # type: ignore[method-assign]


def test_a_new_subject_costs_one_insert_and_a_known_one_no_statement(replica):
    _subject_key(replica)
    replica.data_keys.generate_data_key(Call(), "people", {"user_id": "warm-up"})  # ledger and key cached
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(replica.engine, "before_cursor_execute", seen)
    try:
        replica.data_keys.generate_data_key(Call(), "people", {"user_id": "new"})
        first_use = list(statements)
        statements.clear()
        issued = replica.data_keys.generate_data_key(Call(), "people", {"user_id": "new"})
        replica.data_keys.decrypt(Call(), issued.wrapped_key, {"user_id": "new"})
        known = list(statements)
    finally:
        event.remove(replica.engine, "before_cursor_execute", seen)
    writes = [s for s in first_use if s not in ("SELECT", "BEGIN", "COMMIT", "ROLLBACK", "WITH")]
    assert writes == ["INSERT"], first_use  # reads: the row (none yet) and the ledger's tail
    assert first_use[-1] == "INSERT", first_use  # the row it wrote is not read back
    assert known == []


def test_erasing_a_subject_leaves_the_others_untouched_and_the_receipt_names_only_its_digest(replica):
    _subject_key(replica)
    alice, bob = {"user_id": "alice"}, {"user_id": "bob"}
    for_alice = replica.data_keys.generate_data_key(Call(), "people", alice)
    for_bob = replica.data_keys.generate_data_key(Call(), "people", bob)
    call = Call(identity="spiffe://kms.dev/officer")
    replica.policies.grant(Call(), call.identity, "people", ["erase"])
    status = replica.erasures.erase_subject(call, "people", "alice")
    digest = replica.subjects.digest("people", "alice")
    erasure = status.erasure
    assert (erasure.key_id, erasure.subject_digest, erasure.subject_known) == ("people", digest, True)
    assert (erasure.erased_by, erasure.final_after_version, status.finality.final) == (call.identity, 1, False)
    assert "alice" not in call.trail.detail and digest in call.trail.detail
    with pytest.raises(SubjectErased, match=digest) as refused:
        replica.data_keys.decrypt(Call(), for_alice.wrapped_key, alice)
    assert refused.value.code == "FAILED_PRECONDITION" and "alice" not in refused.value.message
    with pytest.raises(SubjectErased):
        replica.data_keys.generate_data_key(Call(), "people", alice)
    assert replica.data_keys.decrypt(Call(), for_bob.wrapped_key, bob).plaintext == for_bob.plaintext
    # An erasure asked again answers with the receipt recorded the first time.
    again = replica.erasures.erase_subject(Call(), "people", "alice")
    assert again.erasure == erasure


def test_erasing_a_subject_never_seen_records_it_so_that_none_is_issued_later(replica):
    _subject_key(replica)
    status = replica.erasures.erase_subject(Call(), "people", "carol")
    assert not status.erasure.subject_known and status.erasure.final_after_version == 1
    with pytest.raises(SubjectErased):
        replica.data_keys.generate_data_key(Call(), "people", {"user_id": "carol"})


def test_erasure_needs_the_erase_permission_and_a_key_with_subjects(replica):
    _subject_key(replica)
    replica.keys.create_key(Call(), "plain")
    with pytest.raises(PermissionDenied, match="erase"):
        replica.erasures.erase_subject(Call(identity="spiffe://kms.dev/app"), "people", "alice")
    with pytest.raises(FailedPrecondition, match="no subject_field"):
        replica.erasures.erase_subject(Call(), "plain", "alice")


def test_an_erasure_on_one_replica_is_refused_on_another_after_one_ledger_poll(settings, clock):
    first, second = _replica(settings, clock, "first"), _replica(settings, clock, "second")
    try:
        _subject_key(first)
        alice = {"user_id": "alice"}
        issued = first.data_keys.generate_data_key(Call(), "people", alice)
        second.integrity.refresh()
        assert second.data_keys.decrypt(Call(), issued.wrapped_key, alice).plaintext == issued.plaintext
        assert len(second.subjects) == 1  # alice's key, cached there

        first.erasures.erase_subject(Call(), "people", "alice")
        second.integrity.refresh()  # what the poller does every KMS_POLICY_POLL_INTERVAL
        assert len(second.subjects) == 0  # evicted (and zeroed)
        with pytest.raises(SubjectErased):
            second.data_keys.decrypt(Call(), issued.wrapped_key, alice)
    finally:
        first.close()
        second.close()


def test_a_replica_that_has_not_polled_yet_still_refuses_once_it_finds_the_row_gone(settings, clock):
    first, second = _replica(settings, clock, "first"), _replica(settings, clock, "second")
    try:
        _subject_key(first)
        alice = {"user_id": "alice"}
        issued = first.data_keys.generate_data_key(Call(), "people", alice)
        second.integrity.refresh()
        first.erasures.erase_subject(Call(), "people", "alice")
        # The second replica never held alice's key and has not read the ledger since: the row
        # is gone, and it reads the ledger before answering, so it says "erased", not "invalid".
        with pytest.raises(SubjectErased):
            second.data_keys.decrypt(Call(), issued.wrapped_key, alice)
        with pytest.raises(SubjectErased):
            second.data_keys.generate_data_key(Call(), "people", alice)
    finally:
        first.close()
        second.close()


def test_two_replicas_racing_on_a_new_subject_agree_on_its_key(settings, clock):
    first, second = _replica(settings, clock, "first"), _replica(settings, clock, "second")
    try:
        _subject_key(first)
        second.integrity.refresh()
        context = {"user_id": "dave"}
        barrier = threading.Barrier(2)
        issued = {}

        def use(name, replica) -> None:
            barrier.wait()
            issued[name] = replica.data_keys.generate_data_key(Call(), "people", context)

        threads = [threading.Thread(target=use, args=(n, r)) for n, r in (("first", first), ("second", second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for replica in (first, second):
            for data_key in issued.values():
                assert replica.data_keys.decrypt(Call(), data_key.wrapped_key, context).plaintext == data_key.plaintext
        assert first.subject_repository.count("people") == 1
    finally:
        first.close()
        second.close()


def test_rotation_carries_live_subjects_and_not_erased_ones_and_the_old_version_waits_for_it(replica, clock):
    _subject_key(replica)
    contexts = [{"user_id": f"user-{n}"} for n in range(12)]
    issued = [replica.data_keys.generate_data_key(Call(), "people", c) for c in contexts]
    replica.erasures.erase_subject(Call(), "people", "user-3")
    replica.keys.rotate_key(Call(), "people")
    replica.lifecycle.schedule_destruction(Call(), "people", 1, DAY)
    clock.advance(DAY + timedelta(seconds=1))

    first_pass = replica.scheduler.run_once()
    assert first_pass.cadence.carried == [("people", 11)]
    assert first_pass.destroyed == [("people", 1)]  # carried before the destruction pass
    assert replica.subject_repository.wrapped_below("people", 2, 100) == []
    fresh = _replica(replica.settings, clock, "fresh")  # nothing in memory: every subject from its row
    try:
        for n, (context, data_key) in enumerate(zip(contexts, issued, strict=True)):
            if n == 3:
                with pytest.raises(SubjectErased):
                    fresh.data_keys.decrypt(Call(), data_key.wrapped_key, context)
                continue
            opened = fresh.data_keys.decrypt(Call(), data_key.wrapped_key, context)
            assert (opened.plaintext, opened.key_version) == (data_key.plaintext, 2)
    finally:
        fresh.close()


def test_a_version_that_still_wraps_subjects_is_not_destroyed(replica, clock):
    _subject_key(replica)
    replica.data_keys.generate_data_key(Call(), "people", {"user_id": "alice"})
    replica.keys.rotate_key(Call(), "people")
    replica.lifecycle.schedule_destruction(Call(), "people", 1, DAY)
    clock.advance(2 * DAY)
    assert replica.lifecycle.destroy_if_due(Call(), "people", 1) is False  # not carried yet
    assert replica.keys.get_key(Call(), "people").versions[0].state is VersionState.DESTROY_SCHEDULED
    replica.scheduler.run_once()
    assert replica.keys.get_key(Call(), "people").versions[0].state is VersionState.DESTROYED


def test_the_cadence_makes_every_erasure_final_within_erasure_finality(replica, clock):
    key = _subject_key(replica)
    alice = {"user_id": "alice"}
    replica.data_keys.generate_data_key(Call(), "people", alice)
    replica.data_keys.generate_data_key(Call(), "people", {"user_id": "bob"})
    clock.advance(DAY)
    erased_at = clock.now()
    status = replica.erasures.erase_subject(Call(), "people", "alice")
    projected = status.finality.final_time
    assert projected == key.create_time + FINALITY  # rotated at F/2, destroyed F/2 later
    assert projected - erased_at <= FINALITY

    while clock.now() < erased_at + FINALITY:
        replica.scheduler.run_once()
        clock.advance(DAY / 4)
    replica.scheduler.run_once()
    (listed,), _ = replica.erasures.list_erasures(Call(), "people")
    assert listed.finality.final
    assert listed.finality.final_time <= erased_at + FINALITY
    assert replica.keys.get_key(Call(), "people").version(1).state is VersionState.DESTROYED
    # Bob was carried each time and still opens.
    assert replica.data_keys.generate_data_key(Call(), "people", {"user_id": "bob"}).key_version >= 2


def test_list_erasures_pages_newest_first(replica, clock):
    _subject_key(replica)
    for n in range(5):
        replica.erasures.erase_subject(Call(), "people", f"user-{n}")
        clock.advance(timedelta(seconds=1))
    first, token = replica.erasures.list_erasures(Call(), "people", page_size=3)
    rest, end = replica.erasures.list_erasures(Call(), "people", page_size=3, page_token=token)
    digests = [replica.subjects.digest("people", f"user-{n}") for n in reversed(range(5))]
    assert [s.erasure.subject_digest for s in first + rest] == digests and end == ""


def test_a_decrypt_under_a_destroyed_version_of_a_plain_key_is_unchanged(replica, clock):
    replica.keys.create_key(Call(), "plain", storage=Storage.HSM_OBJECT)
    issued = replica.data_keys.generate_data_key(Call(), "plain", {})
    replica.keys.rotate_key(Call(), "plain")
    replica.lifecycle.schedule_destruction(Call(), "plain", 1, DAY)
    clock.advance(2 * DAY)
    replica.scheduler.run_once()
    with pytest.raises(KeyVersionDestroyed):
        replica.data_keys.decrypt(Call(), issued.wrapped_key, {})
