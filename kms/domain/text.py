"""Caller-supplied text, checked before it can reach a database, a log or an HSM label.

Protobuf has already refused bytes that are not UTF-8. What is left is text that PostgreSQL
cannot store (NUL), control characters that would forge lines in logs and terminals, and length.
Messages name the field and the rule, never the value.
"""

from __future__ import annotations

import re

from kms.errors import InvalidArgument

# NUL and the other C0/C1 controls except tab, line feed and carriage return; lone surrogates
# (possible in a Python str, never in UTF-8 that protobuf accepted).
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_SINGLE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def validate_text(field: str, value: str, max_length: int, *, multiline: bool = False) -> str:
    """Returns ``value`` if it is at most ``max_length`` characters of printable text (tabs and
    line breaks allowed only when ``multiline``), else raises InvalidArgument naming ``field``."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be text")
    if len(value) > max_length:
        raise InvalidArgument(f"{field} must be at most {max_length} characters")
    if (_FORBIDDEN if multiline else _FORBIDDEN_SINGLE_LINE).search(value):
        raise InvalidArgument(f"{field} must not contain NUL or control characters")
    return value
