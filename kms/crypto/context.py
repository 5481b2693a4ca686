"""Canonical encoding of an encryption context, the bytes bound as associated data.

Layout (all integers big-endian, unsigned):

    uint16  number of entries N
    N times, entries sorted by the UTF-8 bytes of their keys:
        uint16  length of key in bytes, then the key (UTF-8)
        uint16  length of value in bytes, then the value (UTF-8)

The encoding is independent of the map's order, and the length prefixes make it injective:
two different maps never encode to the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from kms.errors import InvalidEncryptionContext

MAX_ENTRIES = 64
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 1024
MAX_ENCODED_BYTES = 8192

_EMPTY = struct.pack(">H", 0)


def encode_context(context: Mapping[str, str]) -> bytes:
    """Validates ``context`` against the limits and returns its canonical encoding.

    Raises InvalidEncryptionContext naming the broken limit (never echoing a value).
    """
    if not context:
        return _EMPTY
    if len(context) > MAX_ENTRIES:
        raise InvalidEncryptionContext(f"encryption context has more than {MAX_ENTRIES} entries")
    entries = []
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidEncryptionContext("encryption context keys and values must be strings")
        try:
            key_bytes, value_bytes = key.encode("utf-8"), value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEncryptionContext("encryption context is not valid Unicode") from None
        if not 1 <= len(key_bytes) <= MAX_KEY_BYTES:
            raise InvalidEncryptionContext(f"encryption context keys must be 1-{MAX_KEY_BYTES} bytes")
        if len(value_bytes) > MAX_VALUE_BYTES:
            raise InvalidEncryptionContext(f"encryption context values must be at most {MAX_VALUE_BYTES} bytes")
        entries.append((key_bytes, value_bytes))
    entries.sort()
    parts = [struct.pack(">H", len(entries))]
    for key_bytes, value_bytes in entries:
        parts += [struct.pack(">H", len(key_bytes)), key_bytes, struct.pack(">H", len(value_bytes)), value_bytes]
    encoded = b"".join(parts)
    if len(encoded) > MAX_ENCODED_BYTES:
        raise InvalidEncryptionContext(f"encryption context exceeds {MAX_ENCODED_BYTES} bytes encoded")
    return encoded
