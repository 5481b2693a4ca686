"""CRC32C (Castagnoli, RFC 3720) of byte fields, as carried by the ``*_crc32c`` fields of the API
(docs/api.md, "Integrity in transit").

A CRC detects accidental corruption between the caller's memory and ours (a faulty NIC, proxy or
buffer); it is no defence against someone who can change the bytes on purpose, since they can
recompute it (TLS is that defence). So it is compared as any integer, and a mismatch says only
which field.
"""

from __future__ import annotations

import google_crc32c


def crc32c(data: bytes) -> int:
    """The CRC32C of ``data`` as an unsigned 32-bit integer (``123456789`` gives 0xE3069283)."""
    return int(google_crc32c.value(data))


def matches(data: bytes, expected: int) -> bool:
    return crc32c(data) == expected
