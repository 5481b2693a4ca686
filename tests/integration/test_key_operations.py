"""Creating, listing and rotating keys, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from kms.errors import (
    InvalidArgument,
    InvalidKeyId,
    InvalidPageToken,
    InvalidRotationPeriod,
    KeyAlreadyExists,
    KeyNotFound,
)
from kms.service.calls import Call


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


def test_errors(services):
    keys = services.keys
    keys.create_key(Call(), "orders")
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
    # Nothing was created in the HSM for the refused requests.
    assert {o.key_id for o in services.master_keys.list_objects()} == {"orders"}


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


def test_concurrent_creates_of_one_id_make_exactly_one_key(services):
    outcomes: list[str] = []

    def create() -> None:
        try:
            services.keys.create_key(Call(), "contended")
            outcomes.append("created")
        except KeyAlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 5
    assert len(services.master_keys.find("contended", 1)) == 1


def test_concurrent_rotations_make_consecutive_versions(services):
    services.keys.create_key(Call(), "spin")
    threads = [threading.Thread(target=services.keys.rotate_key, args=(Call(), "spin")) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    key = services.keys.get_key(Call(), "spin")
    assert [v.version for v in key.versions] == [1, 2, 3, 4, 5, 6]
    assert key.primary_version == 6
    assert len({v.master_key_id for v in key.versions}) == 6
