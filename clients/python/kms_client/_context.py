"""Canonical encoding of an encryption context: the exact bytes the service binds to a wrapped
key as associated data (docs/wrapped-key-format.md, "Encryption context encoding"). The SDK
re-implements it rather than importing the service, and the envelope header carries it.

    uint16  number of entries N (0-64)
    N times, sorted by the UTF-8 bytes of the keys, strictly ascending:
        uint16  len(key)    1-128
        key                 len(key) bytes of UTF-8
        uint16  len(value)  0-1024
        value               len(value) bytes of UTF-8
    at most 8192 bytes in all; the empty context is 00 00
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from kms_client.errors import InvalidCiphertext, InvalidEncryptionContext

MAX_ENTRIES = 64
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 1024
MAX_ENCODED_BYTES = 8192

_U16 = struct.Struct(">H")
EMPTY = _U16.pack(0)


def encode_context(context: Mapping[str, str] | None) -> bytes:
    """The canonical encoding of ``context`` (None is the empty context).

    Raises InvalidEncryptionContext naming the broken limit, never echoing a key or value.
    """
    if not context:
        return EMPTY
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
    parts = [_U16.pack(len(entries))]
    for key_bytes, value_bytes in entries:
        parts += [_U16.pack(len(key_bytes)), key_bytes, _U16.pack(len(value_bytes)), value_bytes]
    encoded = b"".join(parts)
    if len(encoded) > MAX_ENCODED_BYTES:
        raise InvalidEncryptionContext(f"encryption context exceeds {MAX_ENCODED_BYTES} bytes encoded")
    return encoded


def decode_context(encoded: bytes) -> dict[str, str]:
    """The context whose canonical encoding is exactly ``encoded``.

    Only canonical input is accepted (keys strictly ascending, so no duplicates; every limit
    respected; strict UTF-8; nothing left over), so decoding and encoding are inverse bijections.
    Raises InvalidCiphertext otherwise: these bytes come from a ciphertext header.
    """
    data = bytes(encoded)
    if not 2 <= len(data) <= MAX_ENCODED_BYTES:
        raise InvalidCiphertext("malformed encryption context in header")
    (count,) = _U16.unpack_from(data, 0)
    if count > MAX_ENTRIES:
        raise InvalidCiphertext("malformed encryption context in header")
    offset = 2
    previous: bytes | None = None
    context: dict[str, str] = {}

    def field(limit: int, minimum: int) -> bytes:
        nonlocal offset
        if offset + 2 > len(data):
            raise InvalidCiphertext("malformed encryption context in header")
        (length,) = _U16.unpack_from(data, offset)
        if not minimum <= length <= limit or offset + 2 + length > len(data):
            raise InvalidCiphertext("malformed encryption context in header")
        value = data[offset + 2 : offset + 2 + length]
        offset += 2 + length
        return value

    try:
        for _ in range(count):
            key = field(MAX_KEY_BYTES, 1)
            value = field(MAX_VALUE_BYTES, 0)
            if previous is not None and key <= previous:
                raise InvalidCiphertext("malformed encryption context in header")
            previous = key
            context[key.decode("utf-8")] = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCiphertext("malformed encryption context in header") from None
    if offset != len(data):
        raise InvalidCiphertext("malformed encryption context in header")
    return context
