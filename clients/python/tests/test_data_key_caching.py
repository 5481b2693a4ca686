"""Data key caching: fewer service calls, within every documented limit."""

from __future__ import annotations

import io
import threading
from collections import Counter

import pytest
from sdk_helpers import seal

from kms_client import DataKeyCaching, EncryptionContextMismatch, InvalidCiphertext, parse_header_bytes
from kms_client.caching import DataKeyCache
from kms_client.types import DataKey


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wrapped_keys(ciphertexts: list[bytes]) -> Counter:
    return Counter(parse_header_bytes(c).wrapped_key for c in ciphertexts)


def test_ten_thousand_small_records_take_a_handful_of_calls(caching_client, counter, orders):
    records = [f"order {i}: 3 x widget".encode() for i in range(10_000)]
    ciphertexts = [caching_client.encrypt(r, key_id=orders, context={"tenant": "acme"}) for r in records]
    assert counter.calls["GenerateDataKey"] <= 5 and counter.total() <= 5
    assert len({parse_header_bytes(c).salt for c in ciphertexts}) == len(records)
    before = counter.total()
    assert [caching_client.decrypt(c, context={"tenant": "acme"}) for c in ciphertexts] == records
    assert counter.calls["Decrypt"] <= 5 and counter.total() - before <= 5


def test_without_caching_every_message_asks_the_service(make_client, counter, orders):
    client = make_client()
    ciphertexts = [client.encrypt(b"r", key_id=orders) for _ in range(20)]
    for ciphertext in ciphertexts:
        client.decrypt(ciphertext)
    assert (counter.calls["GenerateDataKey"], counter.calls["Decrypt"]) == (20, 20)


def test_encrypt_side_limits_on_age_messages_and_bytes(make_client, counter, orders):
    clock = FakeClock()
    client = make_client(DataKeyCaching(max_age=60, max_messages=3, max_bytes=100, clock=clock))
    assert list(wrapped_keys([client.encrypt(b"m", key_id=orders) for _ in range(7)]).values()) == [3, 3, 1]
    counter.calls.clear()
    client.encrypt(b"m", key_id=orders)
    clock.now += 60
    client.encrypt(b"m", key_id=orders)
    assert counter.calls["GenerateDataKey"] == 1  # the third key still had room, but was too old
    counter.calls.clear()
    client.encrypt(b"x" * 60, key_id=orders)
    client.encrypt(b"x" * 60, key_id=orders)  # 1 + 60 + 60 > 100 bytes
    client.encrypt(b"x" * 101, key_id=orders)  # never cached: alone larger than max_bytes
    client.encrypt(b"x" * 101, key_id=orders)
    assert counter.calls["GenerateDataKey"] == 3


def test_cache_entries_are_per_key_id_and_context(make_client, counter, client, orders):
    client.create_key("invoices")
    caching = make_client(DataKeyCaching())
    for _ in range(3):
        for key_id in (orders, "invoices"):
            for tenant in ("acme", "umbrella"):
                caching.encrypt(b"r", key_id=key_id, context={"tenant": tenant})
    assert counter.calls["GenerateDataKey"] == 4


def test_decrypt_side_cache_expires_and_keys_on_the_context(make_client, counter, orders):
    clock = FakeClock()
    client = make_client(DataKeyCaching(decrypt_max_age=30, clock=clock))
    ciphertext = client.encrypt(b"secret", key_id=orders, context={"tenant": "acme"})
    for _ in range(3):
        assert client.decrypt(ciphertext, context={"tenant": "acme"}) == b"secret"
    assert counter.calls["Decrypt"] == 1
    with pytest.raises(EncryptionContextMismatch):
        client.decrypt(ciphertext, context={"tenant": "other"})
    clock.now += 30
    client.decrypt(ciphertext, context={"tenant": "acme"})
    assert counter.calls["Decrypt"] == 2
    client.clear_data_key_cache()
    client.decrypt(ciphertext, context={"tenant": "acme"})
    assert counter.calls["Decrypt"] == 3


def test_a_cached_data_key_opens_only_headers_that_name_the_key_it_belongs_to(make_client, client, orders):
    # Whoever holds a data key of `orders` can seal a message whose header names `payroll` but
    # carries the `orders` wrapped key: the service opens that wrapped key and says `orders`.
    client.create_key("payroll")
    context = {"tenant": "acme"}
    data_key = client.generate_data_key(orders, context)
    genuine = seal(
        b"an order", context=context, data_key=data_key.plaintext, wrapped_key=data_key.wrapped_key, key_id=orders
    )
    forged = seal(
        b"pay everyone twice",
        context=context,
        data_key=data_key.plaintext,
        wrapped_key=data_key.wrapped_key,
        key_id="payroll",
    )
    victim = make_client(DataKeyCaching())
    assert victim.decrypt(genuine, context=context) == b"an order"  # its data key is now cached
    with pytest.raises(InvalidCiphertext) as raised:
        victim.decrypt(forged, context=context)
    assert type(raised.value) is InvalidCiphertext
    with pytest.raises(InvalidCiphertext) as raised:
        victim.decrypt_stream(io.BytesIO(forged), io.BytesIO(), context=context)
    assert type(raised.value) is InvalidCiphertext
    assert victim.decrypt(genuine, context=context) == b"an order"


def test_streams_never_reuse_a_data_key(caching_client, counter, orders):
    for _ in range(2):
        caching_client.encrypt_stream(io.BytesIO(b"big"), io.BytesIO(), key_id=orders)
    assert counter.calls["GenerateDataKey"] == 2


def test_the_cache_is_bounded_and_least_recently_used_goes_first():
    clock = FakeClock()
    cache = DataKeyCache(DataKeyCaching(max_entries=2, decrypt_max_entries=2, clock=clock))
    keys = [DataKey("k", 1, bytes([i]) * 70, bytes([200 + i]) * 32) for i in range(3)]
    for i, key in enumerate(keys):
        cache.store_for_encrypt("k", bytes([i]), key, 1)
        cache.store_for_decrypt(key.wrapped_key, b"\x00\x00", key)
    with cache.take_for_encrypt("k", b"\x00", 1) as evicted:
        assert evicted is None
    with cache.take_for_encrypt("k", b"\x02", 1) as kept:
        assert (kept.wrapped_key, bytes(kept.plaintext)) == (keys[2].wrapped_key, keys[2].plaintext)
    with cache.get_for_decrypt(keys[0].wrapped_key, b"\x00\x00") as evicted:
        assert evicted is None
    with cache.get_for_decrypt(keys[1].wrapped_key, b"\x00\x00") as kept:
        assert (kept.wrapped_key, bytes(kept.plaintext)) == (keys[1].wrapped_key, keys[1].plaintext)
    text = " ".join([repr(cache), repr(keys[1]), repr(DataKeyCaching()), *map(repr, cache.entries())])
    assert all(k.plaintext.hex() not in text and repr(k.plaintext)[2:-1] not in text for k in keys)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_age": 0},
        {"max_age": 86401},
        {"max_messages": 0},
        {"max_messages": 2**32 + 1},
        {"max_bytes": 2**40 + 1},
        {"max_entries": -1},
        {"decrypt_max_age": -1},
    ],
)
def test_limits_outside_the_ceilings_are_refused(limits):
    with pytest.raises(ValueError):
        DataKeyCaching(**limits)


def test_concurrent_encrypts_never_exceed_the_message_limit(make_client, orders):
    client = make_client(DataKeyCaching(max_messages=50))
    results: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [client.encrypt(b"row", key_id=orders) for _ in range(200)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = wrapped_keys(results)
    assert sum(counts.values()) == 800 and max(counts.values()) <= 50
