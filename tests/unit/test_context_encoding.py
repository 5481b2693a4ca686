import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.crypto.context import MAX_ENTRIES, MAX_KEY_BYTES, MAX_VALUE_BYTES, encode_context
from kms.errors import InvalidEncryptionContext


def test_empty_context_encodes_to_a_zero_count():
    assert encode_context({}) == b"\x00\x00"


def test_known_encoding():
    assert encode_context({"tenant": "acme", "a": ""}) == (
        b"\x00\x02" + b"\x00\x01a" + b"\x00\x00" + b"\x00\x06tenant" + b"\x00\x04acme"
    )


def test_entries_are_sorted_by_their_utf8_bytes():
    context = {"\U00010000": "1", "\ufffd": "2", "z": "3"}
    encoded = encode_context(context)
    assert encoded.index("z".encode()) < encoded.index("\ufffd".encode()) < encoded.index("\U00010000".encode())


contexts = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=10)


@given(contexts)
def test_encoding_ignores_insertion_order(context):
    reordered = dict(reversed(list(context.items())))
    assert encode_context(context) == encode_context(reordered)


@given(contexts, contexts)
def test_different_contexts_never_encode_alike(first, second):
    if first != second:
        assert encode_context(first) != encode_context(second)


@pytest.mark.parametrize(
    "context",
    [
        {"": "value"},
        {"k" * (MAX_KEY_BYTES + 1): "v"},
        {"k": "v" * (MAX_VALUE_BYTES + 1)},
        {f"k{i}": "v" for i in range(MAX_ENTRIES + 1)},
        {f"key-{i:03d}-" + "x" * 100: "v" * 1000 for i in range(9)},
        {"\ud800": "lone surrogate"},
    ],
    ids=["empty-key", "long-key", "long-value", "too-many", "too-large", "surrogate"],
)
def test_limits_are_enforced(context):
    with pytest.raises(InvalidEncryptionContext) as raised:
        encode_context(context)
    assert "v" * 50 not in str(raised.value)  # never echoes values
