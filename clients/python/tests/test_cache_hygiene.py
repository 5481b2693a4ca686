"""Cached data keys live in bytearrays that the cache overwrites with zeros whenever it lets go.

White-box on purpose: ``DataKeyCache.entries()`` hands out the live entries, and an entry's
``plaintext`` is a read-only view of the very bytearray that holds the key (``view.obj``), so a
view taken while the key is cached shows what is left in that memory afterwards.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle

import pytest

from kms_client import DataKeyCaching
from kms_client.caching import CachedDataKey, DataKeyCache
from kms_client.types import DataKey

ZEROS = bytes(32)
CONTEXT = {"tenant": "acme"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def data_key(n: int) -> DataKey:
    return DataKey("k", 1, bytes([n]) * 70, os.urandom(32))


def slot(n: int) -> bytes:
    return bytes([0, n])


class Side:
    """One of the two caches, driven through DataKeyCache's own methods."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def cache(
        self, clock: FakeClock | None = None, max_entries: int = 4, max_age: float = 300.0, **encrypt_limits: int
    ) -> DataKeyCache:
        if self.name == "encrypt":
            limits = dict(max_entries=max_entries, max_age=max_age, decrypt_max_entries=0, **encrypt_limits)
        else:
            limits = {"decrypt_max_entries": max_entries, "decrypt_max_age": max_age, "max_entries": 0}
        return DataKeyCache(DataKeyCaching(**limits, **({"clock": clock} if clock else {})))

    def store(self, cache: DataKeyCache, key: DataKey, at: int) -> memoryview:
        """Caches ``key`` in slot ``at``; returns a view of the bytearray the cache holds it in."""
        if self.name == "encrypt":
            cache.store_for_encrypt(key.key_id, slot(at), key, 1)
        else:
            cache.store_for_decrypt(key.wrapped_key, slot(at), key)
        view = cache.entries()[-1].plaintext
        assert isinstance(view.obj, bytearray) and bytes(view) == key.plaintext
        return view

    def lease(self, cache: DataKeyCache, key: DataKey, at: int):
        if self.name == "encrypt":
            return cache.take_for_encrypt(key.key_id, slot(at), 1)
        return cache.get_for_decrypt(key.wrapped_key, slot(at))


SIDES = [Side("encrypt"), Side("decrypt")]


@pytest.mark.parametrize("side", SIDES)
def test_the_least_recently_used_key_is_zeroed_when_the_cache_overflows(side):
    cache = side.cache(max_entries=2)
    keys = [data_key(n) for n in range(3)]
    views = [side.store(cache, key, at=n) for n, key in enumerate(keys)]
    assert bytes(views[0]) == ZEROS
    assert bytes(views[1]) == keys[1].plaintext and bytes(views[2]) == keys[2].plaintext


@pytest.mark.parametrize("side", SIDES)
def test_an_expired_key_is_zeroed_at_the_next_operation_on_the_cache(side):
    clock = FakeClock()
    cache = side.cache(clock, max_age=60)
    key, other = data_key(1), data_key(2)
    view = side.store(cache, key, at=1)
    clock.now += 59.5
    with side.lease(cache, other, at=2) as entry:
        assert entry is None
    assert bytes(view) == key.plaintext
    clock.now += 0.5
    with side.lease(cache, other, at=2):  # a miss on another slot is enough
        pass
    assert bytes(view) == ZEROS and cache.entries() == []


@pytest.mark.parametrize("side", SIDES)
def test_a_replaced_key_is_zeroed(side):
    cache = side.cache()
    first, second = data_key(1), DataKey("k", 1, data_key(1).wrapped_key, os.urandom(32))
    view = side.store(cache, first, at=1)
    side.store(cache, second, at=1)  # two threads that missed at once: the second one wins the slot
    assert bytes(view) == ZEROS and len(cache.entries()) == 1


@pytest.mark.parametrize("side", SIDES)
def test_clear_zeroes_every_key(side):
    cache = side.cache()
    keys = [data_key(n) for n in range(3)]
    views = [side.store(cache, key, at=n) for n, key in enumerate(keys)]
    cache.clear()
    assert [bytes(v) for v in views] == [ZEROS] * 3 and cache.entries() == []


@pytest.mark.parametrize("side", SIDES)
def test_a_key_in_use_is_zeroed_only_once_its_user_is_done(side):
    cache = side.cache(max_entries=1)
    key = data_key(1)
    view = side.store(cache, key, at=1)
    with side.lease(cache, key, at=1) as entry:
        cache.clear()
        side.store(cache, data_key(2), at=2)
        assert bytes(entry.plaintext) == key.plaintext  # another thread's eviction must not pull it away
    assert bytes(view) == ZEROS and entry.wiped
    with pytest.raises(RuntimeError, match="wiped"):
        entry.plaintext  # noqa: B018


def test_a_key_that_reaches_max_messages_is_zeroed_after_its_last_message():
    side = SIDES[0]
    cache = side.cache(max_messages=2)
    key = data_key(1)
    view = side.store(cache, key, at=1)  # its first message
    with side.lease(cache, key, at=1) as entry:  # its second and last
        assert bytes(entry.plaintext) == key.plaintext
    assert bytes(view) == ZEROS and cache.entries() == []


def test_a_key_without_room_for_the_next_message_is_zeroed():
    cache = DataKeyCache(DataKeyCaching(max_bytes=100, decrypt_max_entries=0))
    key = data_key(1)
    cache.store_for_encrypt("k", slot(1), key, 60)
    view = cache.entries()[0].plaintext
    with cache.take_for_encrypt("k", slot(1), 41) as entry:  # 60 + 41 > 100
        assert entry is None
    assert bytes(view) == ZEROS
    cache.store_for_encrypt("k", slot(1), key, 60)
    view = cache.entries()[0].plaintext
    with cache.take_for_encrypt("k", slot(1), 40) as entry:  # exactly 100: nothing more fits
        assert entry is not None
    assert bytes(view) == ZEROS and cache.entries() == []


def test_a_key_that_no_further_message_could_use_is_not_copied_at_all():
    cache = DataKeyCache(DataKeyCaching(max_messages=1, max_bytes=10))
    cache.store_for_encrypt("k", slot(1), data_key(1), 1)
    cache.store_for_encrypt("k", slot(2), data_key(2), 11)
    assert cache.entries() == []


def test_a_cache_dropped_without_clear_still_zeroes_its_keys():
    cache = SIDES[1].cache()
    view = SIDES[1].store(cache, data_key(1), at=1)
    del cache
    gc.collect()
    assert bytes(view) == ZEROS


def test_no_key_material_in_a_repr_and_entries_cannot_be_copied():
    cache = DataKeyCache(DataKeyCaching())
    keys = [data_key(n) for n in range(2)]
    cache.store_for_encrypt("k", slot(0), keys[0], 1)
    cache.store_for_decrypt(keys[1].wrapped_key, slot(1), keys[1])
    entries = cache.entries()
    assert len(entries) == 2 and all(isinstance(e, CachedDataKey) for e in entries)
    text = " ".join([repr(cache), str(cache), *map(repr, entries), *map(str, entries), *map(repr, keys)])
    for key in keys:
        for spelling in (key.plaintext.hex(), repr(key.plaintext)[2:-1], key.plaintext.hex()[:16]):
            assert spelling not in text
    for entry in entries:
        for leak in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match="cannot be copied"):
                leak(entry)


# -- end to end, against the real server ----------------------------------------------------


def real_key(client, entry: CachedDataKey) -> bytes:
    return client.decrypt_data_key(entry.wrapped_key, CONTEXT).plaintext


def test_cached_keys_are_the_real_data_keys_and_close_zeroes_them(make_client, client, orders):
    with make_client(DataKeyCaching()) as caching:
        ciphertexts = [caching.encrypt(b"row %d" % i, key_id=orders, context=CONTEXT) for i in range(5)]
        assert [caching.decrypt(c, context=CONTEXT) for c in ciphertexts] == [b"row %d" % i for i in range(5)]
        entries = caching._data_key_cache.entries()
        assert len(entries) == 2  # one encrypt-side key for all five, the same key unwrapped for decrypt
        views = [e.plaintext for e in entries]
        assert all(isinstance(v.obj, bytearray) for v in views)
        assert {bytes(v) for v in views} == {real_key(client, entries[0])}
    assert [bytes(v) for v in views] == [ZEROS, ZEROS]
    assert caching._data_key_cache.entries() == []


def test_close_zeroes_the_cache_of_a_client_used_without_with(make_client, orders):
    caching = make_client(DataKeyCaching())
    caching.decrypt(caching.encrypt(b"x", key_id=orders))
    views = [e.plaintext for e in caching._data_key_cache.entries()]
    caching.close()
    assert len(views) == 2 and [bytes(v) for v in views] == [ZEROS, ZEROS]


def test_evicted_keys_are_zeroed_and_their_messages_still_decrypt(make_client, counter, orders):
    clock = FakeClock()
    caching = make_client(
        DataKeyCaching(max_age=60, max_messages=3, max_bytes=100, max_entries=1, decrypt_max_entries=1, clock=clock)
    )
    messages: list[tuple[bytes, dict[str, str], bytes]] = []

    def encrypt(plaintext: bytes, tenant: str = "acme") -> memoryview:
        context = {"tenant": tenant}
        messages.append((caching.encrypt(plaintext, key_id=orders, context=context), context, plaintext))
        entries = caching._data_key_cache.entries()
        return entries[0].plaintext if entries else memoryview(ZEROS)

    lru = encrypt(b"a")
    encrypt(b"b", tenant="umbrella")  # one entry only: acme's key goes
    assert bytes(lru) == ZEROS
    aged = encrypt(b"c")
    clock.now += 60
    encrypt(b"d")
    assert bytes(aged) == ZEROS
    clock.now += 60
    counted = encrypt(b"e")
    encrypt(b"f")
    assert bytes(counted) != ZEROS
    encrypt(b"g")  # the third message under that key
    assert bytes(counted) == ZEROS
    sized = encrypt(b"x" * 60)
    encrypt(b"x" * 41)  # would pass max_bytes: a fresh key, and the old one goes
    assert bytes(sized) == ZEROS
    assert counter.calls["GenerateDataKey"] == 7
    for ciphertext, context, plaintext in messages:
        assert caching.decrypt(ciphertext, context=context) == plaintext
    decrypt_side = caching._data_key_cache.entries()[-1].plaintext
    caching.decrypt(messages[0][0], context=messages[0][1])  # one decrypt entry only: the last one goes
    assert bytes(decrypt_side) == ZEROS
