"""Data keys through the service: round trips, binding, tampering, rotation, re-wrapping."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kms.crypto.wrapped_key import MAX_KEY_VERSION
from kms.errors import (
    BatchTooLarge,
    InvalidCiphertext,
    InvalidEncryptionContext,
    InvalidKeyId,
    KeyNotFound,
)
from kms.service.calls import Call
from kms.service.data_keys import DataKeyRequest, UnwrapRequest
from tests.support.mutations import mutations, wrapped_key_fields

CONTEXT = {"tenant": "acme", "table": "orders"}


@pytest.fixture
def data_keys(sqlite_services):
    sqlite_services.keys.create_key(Call(), "orders")
    return sqlite_services.data_keys


def test_round_trip_returns_the_same_32_byte_key_and_names_the_version(data_keys):
    issued = data_keys.generate_data_key(Call(), "orders", CONTEXT)
    assert len(issued.plaintext) == 32
    assert (issued.key_id, issued.key_version) == ("orders", 1)
    opened = data_keys.decrypt(Call(), issued.wrapped_key, dict(reversed(list(CONTEXT.items()))))
    assert opened.plaintext == issued.plaintext
    assert (opened.key_id, opened.key_version) == ("orders", 1)
    assert repr(issued.plaintext) not in repr(issued)


def test_data_keys_are_fresh(data_keys):
    issued = [data_keys.generate_data_key(Call(), "orders", {}) for _ in range(50)]
    assert len({d.plaintext for d in issued}) == 50
    assert len({d.wrapped_key for d in issued}) == 50


def test_without_plaintext_still_opens(data_keys):
    issued = data_keys.generate_data_key(Call(), "orders", CONTEXT, include_plaintext=False)
    assert issued.plaintext == b""
    assert len(data_keys.decrypt(Call(), issued.wrapped_key, CONTEXT).plaintext) == 32


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"tenant": "acme"},
        {**CONTEXT, "extra": ""},
        {"tenant": "ACME", "table": "orders"},
        {"tenant": "acme", "table": "orders "},
    ],
)
def test_a_different_context_never_opens(data_keys, context):
    issued = data_keys.generate_data_key(Call(), "orders", CONTEXT)
    with pytest.raises(InvalidCiphertext):
        data_keys.decrypt(Call(), issued.wrapped_key, context)


def test_every_bit_flip_anywhere_fails_with_the_one_opaque_error(data_keys):
    blob = data_keys.generate_data_key(Call(), "orders", CONTEXT).wrapped_key
    messages = set()
    for index in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= bit
            with pytest.raises(InvalidCiphertext) as raised:
                data_keys.decrypt(Call(), bytes(tampered), CONTEXT)
            messages.add(str(raised.value))
    assert messages == {InvalidCiphertext.MESSAGE}


@pytest.fixture
def issued_orders_key(data_keys) -> bytes:
    return data_keys.generate_data_key(Call(), "orders", CONTEXT).wrapped_key


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_real_wrapped_key_never_opens_and_never_says_why(data_keys, issued_orders_key, data):
    """Fuzzing from a wrapped key the service issued: flips, insertions, deletions and zeroed or
    saturated fields, at the layout's field boundaries too, reach the key lookup and the HSM."""
    damaged = data.draw(mutations(issued_orders_key, wrapped_key_fields))
    assume(damaged != issued_orders_key)
    with pytest.raises(InvalidCiphertext) as raised:
        data_keys.decrypt(Call(), damaged, CONTEXT)
    assert str(raised.value) == InvalidCiphertext.MESSAGE


def test_truncation_extension_and_garbage_fail_alike(data_keys):
    blob = data_keys.generate_data_key(Call(), "orders", CONTEXT).wrapped_key
    candidates = [blob[:n] for n in range(len(blob))] + [blob + b"\x00", b"garbage", b"\x01" * 5000, b""]
    for candidate in candidates:
        with pytest.raises(InvalidCiphertext):
            data_keys.decrypt(Call(), candidate, CONTEXT)


def test_naming_an_unknown_key_or_version_looks_like_tampering(data_keys, sqlite_services):
    sqlite_services.keys.create_key(Call(), "other")
    blob = data_keys.generate_data_key(Call(), "orders", CONTEXT).wrapped_key
    as_other_key = blob[:1] + b"\x05other" + blob[8:]
    as_unknown_key = blob[:1] + b"\x05nokey" + blob[8:]
    as_version_9 = blob[:8] + (9).to_bytes(4, "big") + blob[12:]
    as_max_version = blob[:8] + MAX_KEY_VERSION.to_bytes(4, "big") + blob[12:]
    for candidate in (as_other_key, as_unknown_key, as_version_9, as_max_version):
        with pytest.raises(InvalidCiphertext):
            data_keys.decrypt(Call(), candidate, CONTEXT)


def test_generate_names_unknown_keys_and_rejects_bad_ids(data_keys):
    with pytest.raises(KeyNotFound):
        data_keys.generate_data_key(Call(), "missing", {})
    for bad in ("", "a b", "x" * 65, "../etc"):
        with pytest.raises(InvalidKeyId):
            data_keys.generate_data_key(Call(), bad, {})


def test_oversized_context_is_refused_before_the_hsm_is_used(data_keys):
    with pytest.raises(InvalidEncryptionContext):
        data_keys.generate_data_key(Call(), "orders", {"k": "v" * 5000})


def test_rotation_keeps_old_wrapped_keys_opening_and_rewrap_moves_them(data_keys, sqlite_services):
    old = data_keys.generate_data_key(Call(), "orders", CONTEXT)
    sqlite_services.keys.rotate_key(Call(), "orders")
    new = data_keys.generate_data_key(Call(), "orders", CONTEXT)
    assert (old.key_version, new.key_version) == (1, 2)
    assert data_keys.decrypt(Call(), old.wrapped_key, CONTEXT).key_version == 1

    moved = data_keys.rewrap(Call(), old.wrapped_key, CONTEXT)
    assert (moved.source_key_version, moved.key_version) == (1, 2)
    assert moved.wrapped_key != old.wrapped_key
    reopened = data_keys.decrypt(Call(), moved.wrapped_key, CONTEXT)
    assert (reopened.plaintext, reopened.key_version) == (old.plaintext, 2)

    again = data_keys.rewrap(Call(), moved.wrapped_key, CONTEXT)
    assert again.wrapped_key == moved.wrapped_key  # already current: returned unchanged
    with pytest.raises(InvalidCiphertext):
        data_keys.rewrap(Call(), moved.wrapped_key, {"tenant": "evil"})  # never vouches unopened


def test_rewrap_to_another_key(data_keys, sqlite_services):
    sqlite_services.keys.create_key(Call(), "archive")
    issued = data_keys.generate_data_key(Call(), "orders", CONTEXT)
    moved = data_keys.rewrap(Call(), issued.wrapped_key, CONTEXT, "archive")
    assert (moved.source_key_id, moved.key_id) == ("orders", "archive")
    assert data_keys.decrypt(Call(), moved.wrapped_key, CONTEXT).plaintext == issued.plaintext
    with pytest.raises(KeyNotFound):
        data_keys.rewrap(Call(), issued.wrapped_key, CONTEXT, "nowhere")


def test_batches_report_each_item_on_its_own(data_keys):
    results = data_keys.generate_data_keys(
        Call(), [DataKeyRequest("orders", CONTEXT), DataKeyRequest("missing", {}), DataKeyRequest("bad id", {})]
    )
    assert results[0].key_id == "orders"
    assert [type(r) for r in results[1:]] == [KeyNotFound, InvalidKeyId]
    opened = data_keys.decrypt_many(
        Call(), [UnwrapRequest(results[0].wrapped_key, CONTEXT), UnwrapRequest(b"junk", CONTEXT)]
    )
    assert opened[0].plaintext == results[0].plaintext
    assert isinstance(opened[1], InvalidCiphertext)
    with pytest.raises(BatchTooLarge):
        data_keys.decrypt_many(Call(), [UnwrapRequest(b"x", {})] * 1001)


def test_a_mixed_rewrap_batch_answers_and_records_each_item_as_it_would_alone(data_keys, sqlite_services):
    """BatchReWrap does its HSM work per pass (items sharing source and destination versions
    together): items of every kind, interleaved, still get their own result and audit trail,
    in order, and the usage counts add up."""
    sqlite_services.keys.create_key(Call(), "archive")
    old = data_keys.generate_data_keys(Call(), [DataKeyRequest("orders", CONTEXT)] * 4)
    other = data_keys.generate_data_key(Call(), "archive", CONTEXT)
    sqlite_services.keys.rotate_key(Call(), "orders")
    current = data_keys.generate_data_key(Call(), "orders", CONTEXT)
    flipped = bytearray(old[1].wrapped_key)
    flipped[-1] ^= 1
    sqlite_services.usage.flush()
    before = {v.version: v.usage for v in sqlite_services.cache.read_through("orders").versions}
    requests = [
        UnwrapRequest(old[0].wrapped_key, CONTEXT),  # moves to orders v2
        UnwrapRequest(current.wrapped_key, CONTEXT),  # current: opened, returned unchanged
        UnwrapRequest(bytes(flipped), CONTEXT),  # does not open
        UnwrapRequest(old[2].wrapped_key, CONTEXT, "archive"),  # moves to another key
        UnwrapRequest(old[3].wrapped_key, {"tenant": "evil"}),  # the wrong context
        UnwrapRequest(b"junk", CONTEXT),
        UnwrapRequest(other.wrapped_key, CONTEXT),  # another key, current
        UnwrapRequest(old[1].wrapped_key, CONTEXT),  # moves, after a failure in its own pass
        UnwrapRequest(current.wrapped_key, CONTEXT, "nowhere"),
    ]
    call = Call()
    results = data_keys.rewrap_many(call, requests)
    sqlite_services.usage.flush()
    after = {v.version: v.usage for v in sqlite_services.cache.read_through("orders").versions}
    assert after[1].decrypts - before[1].decrypts == 3  # the three moved away from version 1
    assert after[2].data_keys_issued - before[2].data_keys_issued == 2  # two moved onto version 2
    assert after[2].decrypts - before[2].decrypts == 1  # the current one, opened

    kinds = [type(r).__name__ for r in results]
    assert kinds == [
        "Rewrapped",
        "Rewrapped",
        "InvalidCiphertext",
        "Rewrapped",
        "InvalidCiphertext",
        "InvalidCiphertext",
        "Rewrapped",
        "Rewrapped",
        "KeyNotFound",
    ]
    moved = {index: results[index] for index in (0, 3, 7)}
    assert [(r.key_id, r.key_version, r.source_key_version) for r in moved.values()] == [
        ("orders", 2, 1),
        ("archive", 1, 1),
        ("orders", 2, 1),
    ]
    for index, issued in ((0, old[0]), (3, old[2]), (7, old[1])):
        assert data_keys.decrypt(Call(), moved[index].wrapped_key, CONTEXT).plaintext == issued.plaintext
    assert results[1].wrapped_key == current.wrapped_key and results[6].wrapped_key == other.wrapped_key
    items = call.trail.items
    assert [position for position, _, _ in items] == list(range(len(requests)))
    assert [type(error).__name__ if error else "OK" for _, _, error in items] == [
        "OK" if kind == "Rewrapped" else kind for kind in kinds
    ]
    assert [trail.detail for _, trail, _ in items[:4]] == [
        "to orders v2",
        "to orders v2",
        "to orders v2",
        "to archive v1",
    ]


def test_data_keys_from_the_hsm_rng_work_the_same(sqlite_services):
    from kms.service.data_keys import DataKeyService

    sqlite_services.keys.create_key(Call(), "hsm-rng")
    service = DataKeyService(
        sqlite_services.cache,
        sqlite_services.master_keys,
        sqlite_services.usage,
        sqlite_services.authorizer,
        data_key_source="hsm",
    )
    issued = service.generate_data_key(Call(), "hsm-rng", {})
    assert service.decrypt(Call(), issued.wrapped_key, {}).plaintext == issued.plaintext
