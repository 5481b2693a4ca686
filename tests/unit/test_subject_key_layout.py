"""The wrapped key format 2 (kms.crypto.subject_key): its layout, its parser's refusals, and a
fuzzed parser that never raises anything but InvalidCiphertext."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.crypto import subject_key
from kms.crypto.context import encode_context
from kms.errors import InvalidCiphertext

SUBJECT_KEY = bytes(range(32))
DATA_KEY = bytes(range(100, 132))
IV = bytes(range(12))
CONTEXT = encode_context({"user_id": "alice"})


def sample() -> bytes:
    return subject_key.wrap_data_key(SUBJECT_KEY, "people", DATA_KEY, CONTEXT, iv=IV)


def test_layout_is_as_specified():
    blob = sample()
    assert blob[:2] == b"\x02\x06" and blob[2:8] == b"people"
    assert blob[8:20] == IV
    assert len(blob) == 62 + len("people")
    parsed = subject_key.parse(blob)
    assert (parsed.key_id, parsed.iv, parsed.encode()) == ("people", IV, blob)
    assert subject_key.format_of(blob) == 2 and subject_key.format_of(b"") == 0


def test_it_opens_only_with_its_subject_key_and_context():
    parsed = subject_key.parse(sample())
    assert subject_key.open_data_key(SUBJECT_KEY, parsed, CONTEXT) == DATA_KEY
    with pytest.raises(InvalidCiphertext):
        subject_key.open_data_key(bytes(32), parsed, CONTEXT)
    with pytest.raises(InvalidCiphertext):
        subject_key.open_data_key(SUBJECT_KEY, parsed, encode_context({"user_id": "bob"}))


def test_every_wrap_has_a_fresh_iv():
    assert len({subject_key.wrap_data_key(SUBJECT_KEY, "people", DATA_KEY, CONTEXT)[8:20] for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x02",
        b"\x01" + sample()[1:],  # format 1's byte
        sample()[:-1],
        sample() + b"\x00",
        b"\x02\x00" + sample()[8:],  # empty key id
        b"\x02\x06peo/le" + sample()[8:],  # a byte outside the alphabet
    ],
)
def test_malformed_blobs_are_invalid(blob):
    with pytest.raises(InvalidCiphertext):
        subject_key.parse(blob)


def test_subject_key_associated_data_binds_key_digest_and_version():
    digest = "ab" * 32
    ad = subject_key.subject_key_associated_data("people", digest, 7)
    assert ad == b"kms-subject-key-v1" + b"\x06people" + bytes.fromhex(digest) + b"\x00\x00\x00\x07"
    assert ad != subject_key.subject_key_associated_data("people", digest, 8)
    assert ad != subject_key.subject_key_associated_data("peoplf", digest, 7)


def test_subject_digests_are_keyed_and_bound_to_the_key():
    key = bytes(32)
    digest = subject_key.subject_digest(key, "people", "alice")
    assert len(digest) == 64 and digest == subject_key.subject_digest(key, "people", "alice")
    assert digest != subject_key.subject_digest(bytes([1]) * 32, "people", "alice")
    assert digest != subject_key.subject_digest(key, "other", "alice")
    assert subject_key.subject_digest(key, "a", "bc") != subject_key.subject_digest(key, "ab", "c")


@given(st.binary(max_size=200))
def test_parse_never_raises_anything_else(blob):
    try:
        parsed = subject_key.parse(blob)
    except InvalidCiphertext:
        return
    assert parsed.encode() == blob
