import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from kms.crypto import wrapped_key
from kms.crypto.wrapped_key import IV_LENGTH, MAX_KEY_VERSION, SEALED_LENGTH, WrappedKey, WrappedKeyHeader
from kms.errors import InvalidCiphertext
from tests.support.mutations import mutations, wrapped_key_fields

IV = bytes(range(12))
SEALED = bytes(range(48))


def sample() -> bytes:
    return WrappedKey(WrappedKeyHeader("orders", 3), IV, SEALED).encode()


def test_layout_is_as_specified():
    blob = sample()
    assert blob[:2] == b"\x01\x06"
    assert blob[2:8] == b"orders"
    assert blob[8:12] == b"\x00\x00\x00\x03"
    assert blob[12:24] == IV
    assert blob[24:] == SEALED
    assert len(blob) == 66 + len("orders")


def test_round_trip():
    parsed = wrapped_key.parse(sample())
    assert parsed.header == WrappedKeyHeader("orders", 3)
    assert (parsed.iv, parsed.sealed) == (IV, SEALED)


def test_associated_data_is_header_then_context():
    header = WrappedKeyHeader("orders", 3)
    assert header.associated_data(b"\x00\x00") == sample()[:12] + b"\x00\x00"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01",
        b"\x02" + sample()[1:],  # unknown format version
        sample()[:-1],
        sample() + b"\x00",
        sample()[:1] + b"\x00" + sample()[2:],  # zero-length key id
        sample()[:2] + b"order$" + sample()[8:],  # key id outside the alphabet
        sample()[:8] + b"\x00\x00\x00\x00" + sample()[12:],  # version 0
    ],
)
def test_malformed_layouts_are_rejected(blob):
    with pytest.raises(InvalidCiphertext):
        wrapped_key.parse(blob)


# -- fuzzing from valid samples -----------------------------------------------------------

ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
valid_samples = st.builds(
    lambda key_id, version, iv, sealed: WrappedKey(WrappedKeyHeader(key_id, version), iv, sealed).encode(),
    st.text(alphabet=sorted(ALPHABET), min_size=1, max_size=64),
    st.integers(1, MAX_KEY_VERSION),
    st.binary(min_size=IV_LENGTH, max_size=IV_LENGTH),
    st.binary(min_size=SEALED_LENGTH, max_size=SEALED_LENGTH),
)


def verdict(blob: bytes) -> str:
    """Which rule of docs/wrapped-key-format.md ``blob`` breaks first, read from the layout table
    alone: "version", "length", "key id", "key version", or "valid"."""
    if len(blob) < 2 or blob[0] != 0x01:
        return "version"
    key_id_length = blob[1]
    if len(blob) != 2 + key_id_length + 4 + 12 + 32 + 16:
        return "length"
    key_id = blob[2 : 2 + key_id_length]
    if not 1 <= key_id_length <= 64 or any(chr(c) not in ALPHABET for c in key_id):
        return "key id"
    if int.from_bytes(blob[2 + key_id_length : 6 + key_id_length], "big") == 0:
        return "key version"
    return "valid"


damaged = mutations(valid_samples, wrapped_key_fields)


@settings(max_examples=150)
@given(damaged)
def test_a_damaged_wrapped_key_parses_exactly_when_the_specification_allows_it(blob):
    expected = verdict(blob)
    if expected != "valid":
        with pytest.raises(InvalidCiphertext) as raised:
            wrapped_key.parse(blob)
        assert str(raised.value) == InvalidCiphertext.MESSAGE
        return
    parsed = wrapped_key.parse(blob)
    assert parsed.encode() == blob  # nothing ignored, nothing added
    assert blob[2 : 2 + blob[1]] == parsed.header.key_id.encode()


@pytest.mark.parametrize("rule", ["version", "length", "key id", "valid"])
def test_the_damage_reaches_every_rule_of_the_parser(rule):
    """The fuzzing above is worth something only if its inputs get past the first byte. (A
    key version of zero needs four zero bytes in one place; test_malformed_layouts_are_rejected
    has it.)"""
    quick = settings(max_examples=300, phases=[Phase.generate], database=None)
    assert verdict(find(damaged, lambda blob: verdict(blob) == rule, settings=quick)) == rule
