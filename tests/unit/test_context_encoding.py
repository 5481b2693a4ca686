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
    assert encoded.index(b"z") < encoded.index("\ufffd".encode()) < encoded.index("\U00010000".encode())


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
        {"": "hidden-value"},
        {"K" * (MAX_KEY_BYTES + 1): "hidden-value"},
        {"tenant": "V" * (MAX_VALUE_BYTES + 1)},
        {f"tenant-{i}": f"hidden-{i}" for i in range(MAX_ENTRIES + 1)},
        {f"key-{i:03d}-" + "x" * 100: "V" * 1000 for i in range(9)},
        {"\ud800": "hidden-value"},
        {"tenant": "hidden-\udfff"},
        {"tenant": b"hidden-bytes"},
    ],
    ids=[
        "empty-key",
        "long-key",
        "long-value",
        "too-many",
        "too-large",
        "surrogate-key",
        "surrogate-value",
        "not-text",
    ],
)
def test_limits_are_enforced_and_refusals_never_echo_the_context(context):
    with pytest.raises(InvalidEncryptionContext) as raised:
        encode_context(context)
    message = str(raised.value)
    assert message.startswith("encryption context ")
    for text in (*context, *context.values()):  # neither a key nor a value, nor the start of one
        shown = text.decode() if isinstance(text, bytes) else text
        assert not shown or shown[:12] not in message, shown[:12]
