"""Re-wrapping from the attacker's side: moving another key's data key onto a key one may decrypt
under is decrypting it, and a version that has wrapped its hard limit of data keys wraps no more.

The rule (kms/service/data_keys.py): onto the primary version of its own key, ``rewrap`` on that
key; onto another key, ``rewrap`` and ``decrypt`` on the source and ``encrypt`` on the
destination, every check with the request's encryption context.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import timedelta

import pytest

import kms_client
from tests.support.fixtures import APP, _running, make_settings

ACME = {"tenant": "acme"}
EVIL = {"tenant": "evil"}


@pytest.fixture
def world(mtls_server, connect):
    """The victim's key "orders" with a data key under it; the attacker's own key "mine"."""
    admin = connect(mtls_server, "admin")
    admin.create_key("orders")
    admin.create_key("mine")
    victim = admin.generate_data_key("orders", ACME)
    return admin, victim


def _usage(admin: kms_client.KmsClient, key_id: str) -> list[tuple[int, int]]:
    """(wraps, unwraps) per version, as every replica counted them (get_key writes this one's first)."""
    return [(v.data_keys_issued, v.decrypts) for v in admin.get_key(key_id).versions]


def _three_ways(app: kms_client.KmsClient, wrapped: bytes, context: dict, destination: str) -> list:
    """The same move through ReWrap, BatchReWrap and StreamReWrap: each outcome, error or result."""
    outcomes = []
    try:
        outcomes.append(app.rewrap_data_key(wrapped, context, destination_key_id=destination))
    except kms_client.KmsError as error:
        outcomes.append(error)
    outcomes += app.rewrap_data_keys([(wrapped, context)], destination_key_id=destination)
    try:
        outcomes += list(app.stream_rewrap([(wrapped, context)], destination_key_id=destination))
    except kms_client.KmsError as error:  # no rewrap anywhere: no stream at all
        outcomes.append(error)
    return outcomes


def test_rewrap_on_every_key_and_decrypt_on_its_own_cannot_pull_another_keys_data_key_over(mtls_server, world, connect):
    admin, victim = world
    admin.grant_permissions(APP, "*", ["rewrap"])
    admin.grant_permissions(APP, "mine", ["decrypt"])
    app = connect(mtls_server, "app")

    for outcome in _three_ways(app, victim.wrapped_key, ACME, "mine"):
        assert isinstance(outcome, kms_client.PermissionDenied), outcome
        assert f"{APP} lacks the decrypt permission on key 'orders'" in outcome.message
    # Nothing was unwrapped from the victim's key, nothing wrapped under the attacker's.
    assert _usage(admin, "mine") == [(0, 0)]
    assert _usage(admin, "orders") == [(1, 0)]
    moves = [
        (e.rpc, e.item, e.outcome, e.key_id, e.detail)
        for e in admin.audit_events(identity=APP)
        if e.rpc.endswith("ReWrap") and e.item in (-1, 0) and e.key_id
    ]
    assert moves == [
        ("ReWrap", -1, "PERMISSION_DENIED", "orders", "to mine"),
        ("BatchReWrap", 0, "PERMISSION_DENIED", "orders", "to mine"),
        ("StreamReWrap", 0, "PERMISSION_DENIED", "orders", "to mine"),
    ]
    with pytest.raises(kms_client.PermissionDenied):
        app.decrypt_data_key(victim.wrapped_key, ACME)


def test_rewrapping_onto_its_own_keys_primary_needs_only_rewrap_and_gives_no_decrypt(mtls_server, world, connect):
    admin, victim = world
    admin.grant_permissions(APP, "orders", ["rewrap"])
    app = connect(mtls_server, "app")
    assert app.rewrap_data_key(victim.wrapped_key, ACME).wrapped_key == victim.wrapped_key  # already current
    admin.rotate_key("orders")

    for destination in ("", "orders"):
        for outcome in _three_ways(app, victim.wrapped_key, ACME, destination):
            assert not isinstance(outcome, Exception), outcome
            assert (outcome.key_id, outcome.key_version, outcome.source_key_id, outcome.source_key_version) == (
                "orders",
                2,
                "orders",
                1,
            )
            assert admin.decrypt_data_key(outcome.wrapped_key, ACME).plaintext == victim.plaintext
    with pytest.raises(kms_client.PermissionDenied):
        app.decrypt_data_key(outcome.wrapped_key, ACME)
    with pytest.raises(kms_client.PermissionDenied):  # and no other key's primary either
        app.rewrap_data_key(victim.wrapped_key, ACME, destination_key_id="mine")


MOVE = {
    "rewrap on the source": ("orders", "rewrap"),
    "decrypt on the source": ("orders", "decrypt"),
    "encrypt on the destination": ("mine", "encrypt"),
}


def test_moving_with_rewrap_and_decrypt_on_the_source_and_encrypt_on_the_destination_works(mtls_server, world, connect):
    admin, victim = world
    for resource, permission in MOVE.values():
        admin.grant_permissions(APP, resource, [permission])
    app = connect(mtls_server, "app")
    outcomes = _three_ways(app, victim.wrapped_key, ACME, "mine")
    for outcome in outcomes:
        assert not isinstance(outcome, Exception), outcome
        assert (outcome.key_id, outcome.source_key_id) == ("mine", "orders")
        assert admin.decrypt_data_key(outcome.wrapped_key, ACME).plaintext == victim.plaintext
    assert _usage(admin, "mine")[0][0] == 3


@pytest.mark.parametrize("missing", sorted(MOVE))
def test_moving_without_any_one_of_the_three_permissions_is_refused_before_anything_is_wrapped(
    mtls_server, world, connect, missing
):
    admin, victim = world
    for name, (resource, permission) in MOVE.items():
        if name != missing:
            admin.grant_permissions(APP, resource, [permission])
    admin.grant_permissions(APP, "mine", ["decrypt"])  # something to be admitted with in every case
    app = connect(mtls_server, "app")
    resource, permission = MOVE[missing]
    for outcome in _three_ways(app, victim.wrapped_key, ACME, "mine"):
        assert isinstance(outcome, kms_client.PermissionDenied), outcome
        assert (
            f"lacks the {permission} permission on key '{resource}'" in outcome.message
            or outcome.message == f"{APP} lacks the rewrap permission on every key"
        )
    assert _usage(admin, "mine") == [(0, 0)]
    assert _usage(admin, "orders") == [(1, 0)]


@pytest.mark.parametrize("constrained", sorted(MOVE))
def test_context_constraints_apply_to_each_check_of_a_move(mtls_server, world, connect, constrained):
    """One of the three grants holds the caller to tenant "acme": a data key of tenant "evil"
    does not move, whichever grant it is."""
    admin, acme = world
    evil = admin.generate_data_key("orders", EVIL)
    for name, (resource, permission) in MOVE.items():
        admin.grant_permissions(
            APP, resource, [permission], encryption_context_equals=ACME if name == constrained else None
        )
    app = connect(mtls_server, "app")
    for outcome in _three_ways(app, acme.wrapped_key, ACME, "mine"):
        assert not isinstance(outcome, Exception), outcome
    resource, permission = MOVE[constrained]
    for outcome in _three_ways(app, evil.wrapped_key, EVIL, "mine"):
        assert isinstance(outcome, kms_client.PermissionDenied), outcome
        assert f"lacks the {permission} permission on key '{resource}' for this encryption context" in outcome.message
    assert _usage(admin, "mine")[0][0] == 3  # the three acme moves only


# --- the hard wrap limit ---------------------------------------------------------------------


@pytest.fixture
def limited(hsm_token, tmp_path, database_url, label_prefix):
    """A version wraps at most 5 data keys; the scheduler (which would rotate at 3) never runs by
    itself here, as if rotation kept failing."""
    return make_settings(
        hsm_token,
        tmp_path,
        database_url,
        label_prefix,
        max_wraps_per_version=3,
        hard_max_wraps_per_version=5,
        scheduler_interval=timedelta(days=3650),
    )


def _wrap_limit(error: kms_client.KmsError, version: int, wraps: int) -> None:
    assert isinstance(error, kms_client.FailedPrecondition) and error.reason == "WrapLimitReached", error
    assert f"key 'orders' version {version} has wrapped {wraps} data keys" in error.message
    assert "(5, KMS_HARD_MAX_WRAPS_PER_VERSION)" in error.message


def test_a_version_refuses_to_wrap_beyond_the_hard_limit_even_after_a_restart_until_the_key_is_rotated(limited):
    app = _running(limited)
    try:
        with kms_client.KmsClient(app.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client:
            client.create_key("orders")
            client.create_key("elsewhere")
            issued = [client.generate_data_key("orders"), client.generate_data_key_without_plaintext("orders")]
            issued += client.generate_data_keys([("orders", {})] * 3)
            assert [d.key_version for d in issued] == [1] * 5
            elsewhere = client.generate_data_key("elsewhere")
            refusals = []
            for attempt in (
                lambda: client.generate_data_key("orders"),
                lambda: client.generate_data_key_without_plaintext("orders"),
                lambda: client.rewrap_data_key(elsewhere.wrapped_key, destination_key_id="orders"),
            ):
                with pytest.raises(kms_client.KmsError) as refused_:
                    attempt()
                refusals.append(refused_.value)
            refusals += client.generate_data_keys([("orders", {})])
            refusals += list(client.stream_rewrap([(elsewhere.wrapped_key, {})], destination_key_id="orders"))
            for error in refusals:
                _wrap_limit(error, 1, 5)
            assert client.decrypt_data_key(issued[0].wrapped_key).plaintext == issued[0].plaintext  # unwrapping is fine
    finally:
        app.stop(grace=1)

    app = _running(limited)  # the counts were written down: a restart does not reset the budget
    try:
        with kms_client.KmsClient(app.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(kms_client.FailedPrecondition) as again:
                client.generate_data_key("orders")
            _wrap_limit(again.value, 1, 5)
            assert client.rotate_key("orders").primary_version == 2
            assert client.generate_data_key("orders").key_version == 2
            moved = client.rewrap_data_key(elsewhere.wrapped_key, destination_key_id="orders")
            assert (moved.key_id, moved.key_version) == ("orders", 2)
            assert [(v.version, v.data_keys_issued) for v in client.get_key("orders").versions] == [(1, 5), (2, 2)]
    finally:
        app.stop(grace=1)


def test_concurrent_wraps_cannot_overshoot_the_hard_limit(limited):
    app = _running(limited)
    try:
        with kms_client.KmsClient(app.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client:
            client.create_key("orders")
            for _ in range(3):
                client.generate_data_key("orders")
            master_keys = app.services.master_keys
            encrypt = master_keys.encrypt
            together = threading.Barrier(4)

            def encrypt_together(*args):
                # Four calls past the check before any is counted; a broken barrier means fewer
                # got this far, as it should be.
                with contextlib.suppress(threading.BrokenBarrierError):
                    together.wait(timeout=5)
                return encrypt(*args)

            master_keys.encrypt = encrypt_together
            outcomes: list[object] = []

            def wrap() -> None:
                try:
                    outcomes.append(client.generate_data_key("orders").key_version)
                except kms_client.KmsError as error:
                    outcomes.append(error.reason)

            callers = [threading.Thread(target=wrap) for _ in range(4)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(timeout=60)
            del master_keys.encrypt
            wrapped = client.get_key("orders").versions[0].data_keys_issued
    finally:
        app.stop(grace=1)
    assert sorted(map(str, outcomes)) == ["1", "1", "WrapLimitReached", "WrapLimitReached"]
    assert wrapped <= 5, f"version 1 wrapped {wrapped} data keys; the hard limit is 5"


def test_two_replicas_together_cannot_wrap_beyond_the_hard_limit(hsm_token, tmp_path, database_url, label_prefix):
    def replica(name: str):
        return _running(
            make_settings(
                hsm_token,
                tmp_path / name,
                database_url,
                label_prefix,
                max_wraps_per_version=3,
                hard_max_wraps_per_version=5,
                scheduler_interval=timedelta(days=3650),
            )
        )

    first = replica("a")
    second = None
    try:
        with kms_client.KmsClient(first.target, retry=kms_client.RetryPolicy(max_attempts=1)) as a:
            a.create_key("orders")
            second = replica("b")
            with kms_client.KmsClient(second.target, retry=kms_client.RetryPolicy(max_attempts=1)) as b:
                b.generate_data_key("orders")
                for _ in range(4):
                    a.generate_data_key("orders")
                for app in (first, second):
                    app.services.usage.flush()  # as each replica's scheduler pass would
                assert [v.data_keys_issued for v in a.get_key("orders").versions] == [5]
                outcomes = []
                for client in (a, b):
                    try:
                        outcomes.append(client.generate_data_key("orders").key_version)
                    except kms_client.KmsError as error:
                        outcomes.append(error.reason)
    finally:
        first.stop(grace=1)
        if second is not None:
            second.stop(grace=1)
    assert outcomes == ["WrapLimitReached", "WrapLimitReached"]
