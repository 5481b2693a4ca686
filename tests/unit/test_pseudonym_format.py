"""The token text (kms.crypto.pseudonym): what makes a token, and what is refused as one."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.crypto import pseudonym


@given(st.integers(1, 2**32 - 1), st.binary(min_size=32, max_size=32))
def test_a_token_names_its_version_and_gives_back_its_mac(version, mac):
    token = pseudonym.token(version, mac)
    assert token.startswith(f"kps1.{version}.") and len(token) == len(f"kps1.{version}.") + 43
    assert token.isascii() and "=" not in token
    assert pseudonym.parse_token(token) == (version, mac)


@given(st.integers(1, 2**32 - 1), st.lists(st.binary(min_size=32, max_size=32), max_size=20))
def test_a_batch_of_tokens_is_the_rfc_4648_url_safe_text_of_each_mac(version, macs):
    macs += [bytes([0xFB, 0xFF]) * 16, bytes(32)]  # "-" and "_" where standard base64 has "+" and "/"
    expected = [f"kps1.{version}." + base64.urlsafe_b64encode(mac).decode().rstrip("=") for mac in macs]
    assert pseudonym.tokens(version, macs) == expected
    assert [pseudonym.token(version, mac) for mac in macs] == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "kps1.1",
        "kps2.1." + "A" * 43,
        "kps1.0." + "A" * 43,
        "kps1.01." + "A" * 43,
        "kps1.4294967296." + "A" * 43,
        "kps1.1." + "A" * 42,
        "kps1.1." + "A" * 44,
        "kps1.1." + "A" * 42 + "=",
        "kps1.1." + "A" * 42 + "+",
        "kps1.1." + "A" * 42 + "B",  # non-zero bits past the 256 the MAC has
        "KPS1.1." + "A" * 43,
        " kps1.1." + "A" * 43,
    ],
)
def test_text_that_is_not_a_v1_token_is_refused(text):
    with pytest.raises(ValueError):
        pseudonym.parse_token(text)


def test_the_message_binds_each_input_by_its_length():
    prefix = pseudonym.message_prefix("emails", 1, b"\x00\x00")
    assert pseudonym.message(prefix, b"ab") != pseudonym.message(prefix, b"a") + b"b"
    assert pseudonym.message_prefix("ab", 1, b"\x00\x00") != pseudonym.message_prefix("a", 1, b"b\x00\x00")


def test_only_32_byte_macs_make_tokens():
    with pytest.raises(ValueError):
        pseudonym.token(1, bytes(31))
    with pytest.raises(ValueError):
        pseudonym.tokens(1, [bytes(32), bytes(33)])
