"""Creating, listing and rotating keys, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from kms.domain.keys import Storage
from kms.errors import (
    InvalidArgument,
    InvalidKeyId,
    InvalidPageToken,
    InvalidRotationPeriod,
    KeyAlreadyExists,
    KeyNotFound,
)
from kms.service.calls import Call

STORAGES = pytest.mark.parametrize("storage", list(Storage), ids=lambda s: s.value.lower())


def test_create_get_rotate(services):
    keys = services.keys
    created = keys.create_key(Call(), "orders", "order rows", timedelta(days=30))
    assert (created.primary_version, [v.version for v in created.versions]) == (1, [1])
    assert created.next_rotation_time == created.create_time + timedelta(days=30)
    rotated = keys.rotate_key(Call(), "orders")
    assert rotated.primary_version == 2
    stored = keys.get_key(Call(), "orders")
    assert stored == rotated
    assert stored.versions[0].master_key_id != stored.versions[1].master_key_id


@STORAGES
def test_errors(services, storage):
    keys = services.keys
    keys.create_key(Call(), "orders", storage=storage)
    with pytest.raises(KeyAlreadyExists):
        keys.create_key(Call(), "orders")
    with pytest.raises(KeyNotFound):
        keys.get_key(Call(), "nope")
    with pytest.raises(KeyNotFound):
        keys.rotate_key(Call(), "nope")
    with pytest.raises(InvalidKeyId):
        keys.create_key(Call(), "no/slashes")
    with pytest.raises(InvalidArgument):
        keys.create_key(Call(), "long-description", "x" * 2000)
    with pytest.raises(InvalidRotationPeriod):
        keys.create_key(Call(), "too-fast", rotation_period=timedelta(milliseconds=1))
    # Nothing was created in the HSM for the refused requests (a WRAPPED key leaves no object).
    expected = {"orders"} if storage is Storage.HSM_OBJECT else set()
    assert {o.key_id for o in services.master_keys.list_objects()} == expected


def test_list_pages_through_all_keys_in_order(services):
    for n in range(7):
        services.keys.create_key(Call(), f"k{n}")
    seen, token = [], ""
    while True:
        page, token = services.keys.list_keys(Call(), 3, token)
        seen += [k.key_id for k in page]
        assert len(page) <= 3
        if not token:
            break
    assert seen == [f"k{n}" for n in range(7)]
    for bad in ("garbage!", "YWZ0ZXI6", "bm9wZQ=="):
        with pytest.raises(InvalidPageToken):
            services.keys.list_keys(Call(), 3, bad)
    with pytest.raises(InvalidArgument):
        services.keys.list_keys(Call(), -1)


@STORAGES
def test_concurrent_creates_of_one_id_make_exactly_one_key(services, storage):
    outcomes: list[str] = []

    def create() -> None:
        try:
            services.keys.create_key(Call(), "contended", storage=storage)
            outcomes.append("created")
        except KeyAlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 5
    # The losers' token objects were destroyed: one object per version, or none when wrapped.
    assert len(services.master_keys.find("contended", 1)) == (1 if storage is Storage.HSM_OBJECT else 0)


@STORAGES
def test_concurrent_rotations_make_consecutive_versions(services, storage):
    services.keys.create_key(Call(), "spin", storage=storage)
    threads = [threading.Thread(target=services.keys.rotate_key, args=(Call(), "spin")) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    key = services.keys.get_key(Call(), "spin")
    assert [v.version for v in key.versions] == [1, 2, 3, 4, 5, 6]
    assert key.primary_version == 6
    assert len({v.master_key_id for v in key.versions}) == 6
    assert {v.storage for v in key.versions} == {storage}
    assert len(services.master_keys.list_objects()) == (6 if storage is Storage.HSM_OBJECT else 0)
