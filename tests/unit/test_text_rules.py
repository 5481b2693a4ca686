"""kms.domain.text.validate_text: caller text is bounded, printable, single-line unless allowed
otherwise, and a refusal names the field and the rule, never the value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.domain.text import validate_text
from kms.errors import InvalidArgument

PRINTABLE = ["", "orders", "rows of the orders table", "é ü ß — 日本語 🔑", "\u00a0nbsp", "\u200bzero-width"]
C0 = [chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"]
C1 = [chr(c) for c in range(0x7F, 0xA0)]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]


@pytest.mark.parametrize("value", PRINTABLE)
def test_printable_text_is_returned_as_it_is(value):
    assert validate_text("description", value, 64) is value


def test_the_length_limit_counts_characters_and_is_inclusive():
    assert validate_text("description", "é" * 10, 10) == "é" * 10
    with pytest.raises(InvalidArgument, match=r"^description must be at most 10 characters$"):
        validate_text("description", "é" * 11, 10)


@pytest.mark.parametrize("character", C0 + C1 + SURROGATES, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("multiline", [False, True])
def test_nul_controls_and_lone_surrogates_are_refused_anywhere(character, multiline):
    for value in (character, f"a{character}", f"{character}b", f"a{character}b"):
        with pytest.raises(InvalidArgument, match=r"^note must not contain NUL or control characters$"):
            validate_text("note", value, 64, multiline=multiline)


@pytest.mark.parametrize("character", ["\t", "\n", "\r"], ids=["tab", "lf", "cr"])
def test_tabs_and_line_breaks_only_where_lines_are_allowed(character):
    value = f"line one{character}line two"
    assert validate_text("note", value, 64, multiline=True) == value
    with pytest.raises(InvalidArgument, match="must not contain NUL or control characters"):
        validate_text("note", value, 64)


@pytest.mark.parametrize("value", [b"bytes", 42, None, ["orders"]], ids=["bytes", "int", "none", "list"])
def test_anything_but_text_is_refused(value):
    with pytest.raises(InvalidArgument, match=r"^label must be text$"):
        validate_text("label", value, 64)


def test_length_is_checked_before_content():
    with pytest.raises(InvalidArgument, match="at most 4 characters"):
        validate_text("description", "\x00" * 5, 4)


@given(st.text(max_size=40), st.booleans())
def test_a_refusal_never_quotes_the_value(value, multiline):
    marked = "SECRET-" + value
    try:
        assert validate_text("description", marked, 30, multiline=multiline) == marked
    except InvalidArgument as refused:
        assert str(refused).startswith("description must ")
        assert "SECRET" not in str(refused)
