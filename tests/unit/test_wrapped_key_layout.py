import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.crypto import wrapped_key
from kms.crypto.wrapped_key import WrappedKey, WrappedKeyHeader
from kms.errors import InvalidCiphertext

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


@given(st.binary(max_size=300))
def test_parser_only_ever_raises_invalid_ciphertext(blob):
    try:
        wrapped_key.parse(blob)
    except InvalidCiphertext:
        pass
