"""How quickly one replica sees another's changes: two service stacks on one database."""

from __future__ import annotations

import pytest

from kms.app import build_services
from kms.errors import DatabaseUnavailable, KeyNotFound
from kms.service.calls import Call
from kms.service.key_cache import KeyCache


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rotation_on_another_replica_is_seen_once_the_ttl_passes(settings):
    first, second = build_services(settings), build_services(settings)
    try:
        first.keys.create_key(Call(), "shared")
        ticks = Ticks()
        cache = KeyCache(second.repository, ttl=1.0, monotonic=ticks)
        assert cache.get("shared").primary_version == 1
        first.keys.rotate_key(Call(), "shared")
        ticks.now += 0.5
        assert cache.get("shared").primary_version == 1  # still within the TTL
        ticks.now += 0.6
        assert cache.get("shared").primary_version == 2
    finally:
        first.close()
        second.close()


def test_unknown_keys_are_cached_as_unknown_and_bounded(sqlite_services):
    ticks = Ticks()
    cache = KeyCache(sqlite_services.repository, ttl=1.0, monotonic=ticks, max_entries=10)
    for n in range(25):
        with pytest.raises(KeyNotFound):
            cache.get(f"ghost{n}")
    assert len(cache._entries) <= 10
    with pytest.raises(KeyNotFound):
        cache.get("late")
    sqlite_services.keys.create_key(Call(), "late")
    with pytest.raises(KeyNotFound):
        cache.get("late")  # "unknown" is remembered for the TTL too
    ticks.now += 1.1
    assert cache.get("late").key_id == "late"


def test_stale_entries_keep_serving_for_a_while_when_the_database_is_down(sqlite_services, tmp_path):
    ticks = Ticks()
    cache = KeyCache(sqlite_services.repository, ttl=1.0, max_stale=30.0, monotonic=ticks)
    sqlite_services.keys.create_key(Call(), "steady")
    assert cache.get("steady").key_id == "steady"
    (tmp_path / "kms.db").rename(tmp_path / "moved.db")
    sqlite_services.engine.dispose()  # the next read opens a new, empty file: the table is gone
    ticks.now += 5
    try:
        assert cache.get("steady").key_id == "steady"
        ticks.now += 60
        with pytest.raises(DatabaseUnavailable):
            cache.get("steady")
    finally:
        (tmp_path / "moved.db").rename(tmp_path / "kms.db")
