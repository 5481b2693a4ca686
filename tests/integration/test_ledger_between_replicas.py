"""Two replicas (or two workers of kms serve --workers) following one metadata ledger: a change
that another replica appends and anchors while this one is between reading the ledger and
reading the anchor is not a rollback (found by scripts/soak.py); a database really behind the
anchor still is. A key or version another replica made is found by the next call that names it,
however recently this replica read the ledger, and without its poller (which is not running
here)."""

from __future__ import annotations

import threading

import pytest

from kms.app import build_services
from kms.service.calls import Call
from tests.support.fixtures import own_journal

CONTEXT = {"tenant": "a"}


@pytest.fixture
def replicas(settings):
    built = [build_services(own_journal(settings, str(n))) for n in range(2)]
    yield built
    for services in built:
        services.close()


def _other_replica_acts_after_the_next_ledger_read(follower, act):
    """The follower's next ledger read returns what it read, and only then ``act`` runs: the
    interleaving the race needs, with the real ledger and the real HSM anchor."""
    ledger = follower.integrity._ledger
    real_read = ledger.read
    done = []

    def read(after_seq, *args, **kwargs):
        result = real_read(after_seq, *args, **kwargs)
        if not done:
            done.append(True)
            act()
        return result

    ledger.read = read
    return done


def test_an_entry_anchored_by_another_replica_after_this_one_read_the_ledger_is_not_a_rollback(replicas):
    acting, following = replicas
    grant = acting.policies.grant(Call(), "spiffe://kms.test/app", "orders", ["encrypt"])
    following.integrity.refresh()
    # The follower reads a new entry (so it checks the anchor), and meanwhile a revocation,
    # which moves the anchor before it returns, adds one its ledger read did not see.
    acting.policies.grant(Call(), "spiffe://kms.test/app", "payments", ["encrypt"])
    done = _other_replica_acts_after_the_next_ledger_read(
        following, lambda: acting.policies.revoke(Call(), grant.grant_id)
    )
    following.integrity.refresh()
    assert done
    assert following.integrity.problem is None
    following.integrity.refresh()
    assert following.integrity.seq == acting.integrity.seq
    assert all(g.grant_id != grant.grant_id for g in following.policy_cache.all_grants())


def test_a_ledger_still_behind_the_anchor_on_the_second_read_is_refused(replicas):
    acting, following = replicas
    acting.policies.grant(Call(), "spiffe://kms.test/app", "orders", ["encrypt"])
    following.integrity.refresh()
    seq = following.integrity.seq
    # The anchor vouches for an entry the database does not hold: what a restored backup shows.
    acting.anchor.advance(seq + 5, "ab" * 32)
    acting.policies.grant(Call(), "spiffe://kms.test/app", "payments", ["encrypt"])
    following.integrity.refresh()
    assert "rolled back" in (following.integrity.problem or "")


def test_a_key_created_by_another_replica_is_found_by_the_next_call_naming_it(replicas):
    acting, following = replicas
    following.integrity.refresh()  # read a moment ago: the key did not exist yet
    acting.keys.create_key(Call(), "orders")
    assert following.data_keys.generate_data_key(Call(), "orders", CONTEXT).key_version == 1


def test_a_version_rotated_by_another_replica_opens_at_once_even_just_after_a_ledger_read(replicas):
    acting, following = replicas
    acting.keys.create_key(Call(), "orders")
    following.integrity.refresh()
    following.data_keys.generate_data_key(Call(), "orders", CONTEXT)  # version 1 cached
    # The follower's read of the ledger is under way when the rotation commits, and ends after
    # it: a read that ended after the change but began before it must not count as having
    # looked for it.
    done = _other_replica_acts_after_the_next_ledger_read(following, lambda: acting.keys.rotate_key(Call(), "orders"))
    following.integrity.refresh()
    assert done
    issued = acting.data_keys.generate_data_key(Call(), "orders", CONTEXT)
    assert issued.key_version == 2
    opened = following.data_keys.decrypt(Call(), issued.wrapped_key, CONTEXT)
    assert opened.plaintext == issued.plaintext and opened.key_version == 2


def test_an_anchor_moved_further_by_another_replica_meanwhile_is_not_moved_back(replicas):
    first, second = (services.anchor for services in replicas)
    start = first.read()[0]
    real_read = first.read

    def read_then_the_other_moves_further() -> tuple[int, str]:
        position = real_read()
        second.advance(start + 20, "cd" * 32)
        return position

    first.read = read_then_the_other_moves_further  # type: ignore[method-assign]
    first.advance(start + 10, "ab" * 32)
    assert real_read() == second.read() == (start + 20, "cd" * 32)


def test_an_anchor_object_another_replica_destroys_while_it_is_read_is_looked_for_again(replicas):
    first, second = (services.anchor for services in replicas)
    start = first.read()[0] + 1
    first.advance(start, "ab" * 32)  # the object the first replica will list
    real_objects = first._objects
    moved = []

    def list_then_the_other_moves(pooled):
        listed = real_objects(pooled)
        if not moved:
            moved.append(True)
            second.advance(start + 30, "ef" * 32)  # creates its object, destroys those listed here
        return listed

    first._objects = list_then_the_other_moves  # type: ignore[method-assign]
    assert first.read() == (start + 30, "ef" * 32)
    assert moved


def test_a_rotation_another_thread_has_read_but_not_yet_applied_is_applied_before_a_call_uses_it(replicas):
    """The follower's poller has read the rotation and not yet told the key cache when a call
    needs the new version: the call's own read finds nothing new, and it must wait for the
    poller's news rather than believe the cache."""
    acting, following = replicas
    acting.keys.create_key(Call(), "orders")
    following.integrity.refresh()
    following.data_keys.generate_data_key(Call(), "orders", CONTEXT)  # version 1 cached
    acting.keys.rotate_key(Call(), "orders")
    issued = acting.data_keys.generate_data_key(Call(), "orders", CONTEXT)
    real_notify = following.integrity._notify
    read_by_poller, go_on = threading.Event(), threading.Event()

    def slow_to_tell(changes):
        if threading.current_thread().name == "poller" and changes:
            read_by_poller.set()
            go_on.wait(2)  # what a slow poller looks like; the call must not act meanwhile
        real_notify(changes)

    following.integrity._notify = slow_to_tell
    poller = threading.Thread(target=following.integrity.refresh, name="poller")
    poller.start()
    assert read_by_poller.wait(30)
    try:
        opened = following.data_keys.decrypt(Call(), issued.wrapped_key, CONTEXT)
    finally:
        go_on.set()
        poller.join()
    assert opened.key_version == 2 and opened.plaintext == issued.plaintext


def test_a_grant_followed_at_once_by_another_key_change_reaches_the_policy_cache(replicas):
    """The follower reads the grant's entry; before it loads the grants, the other replica
    appends a key's: the rows it then reads are one entry ahead of its ledger, and must still be
    loaded once it has caught up, although that entry changes no policy."""
    acting, following = replicas
    following.integrity.refresh()
    grant = acting.policies.grant(Call(), "spiffe://kms.test/app", "orders", ["encrypt"])
    done = _other_replica_acts_after_the_next_ledger_read(following, lambda: acting.keys.create_key(Call(), "other"))
    following.integrity.refresh()
    assert done
    assert grant.grant_id in {g.grant_id for g in following.policy_cache.all_grants()}
    assert following.integrity.rejected_rows() == {}


def test_a_grant_revoked_while_the_grants_are_being_read_is_not_reported_as_restored(replicas):
    """The follower reads the grants (the revoked one still among them), and before it judges
    them, its poller reads the revocation: the rows are older than the ledger they would be
    judged against, so they are read again rather than reported."""
    acting, following = replicas
    grant = acting.policies.grant(Call(), "spiffe://kms.test/app", "orders", ["encrypt"])
    following.integrity.refresh()
    assert grant.grant_id in {g.grant_id for g in following.policy_cache.all_grants()}
    repository = following.policy_cache._repository
    real_snapshot = repository.snapshot
    pollers: list[threading.Thread] = []

    def snapshot_then_the_poller_reads_the_revocation():
        taken = real_snapshot()
        if not pollers:
            before = following.integrity.seq
            acting.policies.revoke(Call(), grant.grant_id)
            poller = threading.Thread(target=following.integrity.refresh, name="poller")
            pollers.append(poller)
            poller.start()
            while following.integrity.seq == before and poller.is_alive():  # read; its news waits for this load
                poller.join(0.01)
        return taken

    repository.snapshot = snapshot_then_the_poller_reads_the_revocation
    following.policy_cache.refresh()
    pollers[0].join(30)
    assert following.integrity.rejected_rows() == {}
    assert grant.grant_id not in {g.grant_id for g in following.policy_cache.all_grants()}
