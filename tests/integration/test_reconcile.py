"""Reconciliation of HSM objects with recorded versions, on SQLite and PostgreSQL.

Leftovers are made exactly as a crash makes them: a master key created in the HSM whose
version was never recorded.
"""

from __future__ import annotations

import pytest

from kms.service.calls import Call
from kms.service.reconcile import RECOVERED_DESCRIPTION


@pytest.fixture
def settings(settings):
    """Keys here live as HSM objects, one token object per version: the subject of these tests."""
    return settings.model_copy(update={"key_storage": "hsm_object"})


@pytest.fixture
def sqlite_settings(sqlite_settings):
    return sqlite_settings.model_copy(update={"key_storage": "hsm_object"})


def test_consistent_state_reports_nothing(services):
    services.keys.create_key(Call(), "orders")
    report = services.reconciler.reconcile()
    assert report.consistent and report.adopted == []


def test_leftover_after_the_newest_version_is_adopted_without_moving_the_primary(services):
    services.keys.create_key(Call(), "orders")
    leftover = services.master_keys.create("orders", 2)  # the rotation died before committing
    report = services.reconciler.reconcile()
    assert [(v.key_id, v.version, v.master_key_id) for v in report.adopted] == [("orders", 2, leftover.master_key_id)]
    key = services.keys.get_key(Call(), "orders")
    assert key.primary_version == 1 and [v.version for v in key.versions] == [1, 2]
    assert services.reconciler.reconcile().consistent


def test_rotation_adopts_the_leftover_of_an_interrupted_rotation(services):
    services.keys.create_key(Call(), "orders")
    leftover = services.master_keys.create("orders", 2)
    rotated = services.keys.rotate_key(Call(), "orders")
    assert rotated.primary_version == 2
    assert rotated.versions[1].master_key_id == leftover.master_key_id
    assert len(services.master_keys.find("orders", 2)) == 1  # no second object was generated


def test_create_adopts_the_leftover_of_an_interrupted_create(services):
    leftover = services.master_keys.create("fresh", 1)
    created = services.keys.create_key(Call(), "fresh", "wanted")
    assert created.versions[0].master_key_id == leftover.master_key_id
    assert created.description == "wanted"


def test_a_key_the_database_lost_is_recovered_from_its_objects(services):
    """As after restoring the database from a backup older than the key."""
    first = services.master_keys.create("restored", 1)
    second = services.master_keys.create("restored", 2)
    report = services.reconciler.reconcile()
    assert {v.master_key_id for v in report.adopted} == {first.master_key_id, second.master_key_id}
    key = services.keys.get_key(Call(), "restored")
    assert key.description == RECOVERED_DESCRIPTION
    assert key.primary_version == 2


def test_what_cannot_be_adopted_is_reported_and_left_alone(services):
    services.keys.create_key(Call(), "orders")
    gap = services.master_keys.create("orders", 5)  # versions 2-4 unknown: not adoptable
    duplicate = services.master_keys.create("orders", 1)  # slot 1 is taken by the real version
    report = services.reconciler.reconcile()
    assert report.adopted == []
    assert {o.master_key_id for o in report.unresolved} == {gap.master_key_id, duplicate.master_key_id}
    assert len(services.master_keys.list_objects()) == 3  # nothing destroyed


def test_a_recorded_version_without_its_object_is_reported_missing(services):
    created = services.keys.create_key(Call(), "orders")
    services.master_keys.destroy(created.versions[0])
    report = services.reconciler.reconcile()
    assert [(v.key_id, v.version) for v in report.missing] == [("orders", 1)]
    assert not report.consistent


def test_objects_that_are_not_sound_are_never_adopted(services):
    from pkcs11 import Attribute, KeyType, ObjectClass

    label = services.master_keys.label("planted", 1)
    # Someone with the token PIN plants an extractable key under one of our labels.
    planted = services.pool.run(
        lambda pooled: pooled.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: bytes(32),
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.LABEL: label,
                Attribute.ID: bytes(range(16)),
            }
        )
    )
    try:
        report = services.reconciler.reconcile()
        assert report.adopted == [] and [o.sound for o in report.unresolved] == [False]
        created = services.keys.create_key(Call(), "planted")
        assert created.versions[0].master_key_id != bytes(range(16)).hex()
    finally:
        services.pool.run(lambda pooled: planted.destroy())
