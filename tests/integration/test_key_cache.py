"""How one replica sees another's key changes: through the metadata ledger, read when it moves,
never by re-reading keys on a timer. Two service stacks on one database."""

from __future__ import annotations

import pytest

from kms.app import build_services
from kms.errors import DatabaseUnavailable, KeyNotFound
from kms.service.calls import Call
from kms.service.integrity import MetadataIntegrity
from kms.service.key_cache import KeyCache
from tests.support.fixtures import own_journal


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingRepository:
    """The real repository, counting the reads that reach the database."""

    def __init__(self, repository) -> None:
        self._repository = repository
        self.reads = 0

    def get(self, key_id: str):
        self.reads += 1
        return self._repository.get(key_id)


def _follower(services, ticks: Ticks, max_stale: float = 30.0) -> MetadataIntegrity:
    """A second view of the same ledger with a clock of the test's own."""
    integrity = MetadataIntegrity(
        services.ledger, services.sealer, services.anchor, max_stale=max_stale, monotonic=ticks
    )
    integrity.catch_up()
    return integrity


def test_another_replicas_rotation_is_seen_once_the_ledger_is_read_and_not_before(settings):
    first, second = build_services(settings), build_services(own_journal(settings, "second"))
    try:
        first.keys.create_key(Call(), "shared")
        second.integrity.refresh()
        assert second.cache.get("shared").primary_version == 1
        first.keys.rotate_key(Call(), "shared")
        assert second.cache.get("shared").primary_version == 1  # the ledger has not been read yet
        second.integrity.refresh()  # what the poller does every KMS_POLICY_POLL_INTERVAL
        assert second.cache.get("shared").primary_version == 2
    finally:
        first.close()
        second.close()


def test_a_key_is_read_from_the_database_once_until_it_changes(sqlite_services):
    services = sqlite_services
    services.keys.create_key(Call(), "steady")
    for _ in range(3):
        services.keys.rotate_key(Call(), "steady")
    counting = CountingRepository(services.repository)
    cache = KeyCache(counting, services.integrity)
    services.integrity.on_keys_changed(cache.invalidate)
    for _ in range(100):
        assert cache.get("steady").primary_version == 4
    assert counting.reads == 1
    services.keys.rotate_key(Call(), "steady")
    assert cache.get("steady").primary_version == 5
    assert counting.reads == 2


def test_unknown_keys_never_reach_the_database_and_the_cache_is_bounded(sqlite_services):
    services = sqlite_services
    counting = CountingRepository(services.repository)
    cache = KeyCache(counting, services.integrity, max_entries=10)
    for n in range(25):
        services.keys.create_key(Call(), f"k{n}")
        with pytest.raises(KeyNotFound):
            cache.get(f"ghost{n}")
    assert counting.reads == 0
    for n in range(25):
        assert cache.get(f"k{n}").key_id == f"k{n}"
    assert len(cache) == 10


def test_entries_never_go_backwards(sqlite_services):
    """A key this process wrote, handed to the cache after another change superseded it (a
    replica rotated it meanwhile), is dropped rather than kept or reported."""
    services = sqlite_services
    created = services.keys.create_key(Call(), "forward")
    rotated = services.keys.rotate_key(Call(), "forward")
    cache = services.cache
    assert cache.get("forward").revision == rotated.revision
    cache.put(created)  # late: revision 1 after revision 2
    assert cache.get("forward").revision == rotated.revision
    assert services.integrity.rejected_rows() == {}


def test_cached_keys_keep_serving_while_the_database_is_down_until_the_stale_bound(sqlite_services, tmp_path):
    services = sqlite_services
    services.keys.create_key(Call(), "steady")
    ticks = Ticks()
    integrity = _follower(services, ticks, max_stale=30.0)
    cache = KeyCache(services.repository, integrity)
    assert cache.get("steady").key_id == "steady"
    (tmp_path / "kms.db").rename(tmp_path / "moved.db")
    services.engine.dispose()  # the next read opens a new, empty file: the tables are gone
    try:
        ticks.now += 5
        with pytest.raises(DatabaseUnavailable):
            integrity.refresh()
        assert cache.get("steady").key_id == "steady"  # 5 s since the ledger was last read
        ticks.now += 60
        with pytest.raises(DatabaseUnavailable):
            cache.get("steady")
    finally:
        (tmp_path / "moved.db").rename(tmp_path / "kms.db")
