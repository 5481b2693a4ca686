"""Integrity in transit (docs/api.md): the CRC32C (Castagnoli) of each byte field, sent with
requests and checked on responses, in the manner of Google Cloud KMS's ``*_crc32c`` fields.

A request carries the checksum of the bytes it sends (``wrapped_key_crc32c``,
``values_crc32c``); the service refuses a mismatch (ChecksumMismatch) and says in
``verified_*`` that it checked. A response carries the checksum of each byte field it returns,
which the ``check_*`` functions compare with what arrived; each raises ResponseChecksumMismatch.
A CRC catches accidental corruption (a bad NIC, proxy or buffer), not tampering, which TLS
prevents.
"""

from __future__ import annotations

from typing import Any

import google_crc32c

from kms_client.errors import ResponseChecksumMismatch


def crc32c(data: bytes) -> int:
    """The CRC32C of ``data``, an unsigned 32-bit integer (``b"123456789"``: 0xE3069283)."""
    return int(google_crc32c.value(bytes(data)))


def check_field(message: Any, data: bytes, field: str) -> None:
    """Unless ``message`` carries ``field`` and it is the CRC32C of ``data``."""
    if not message.HasField(field):
        raise ResponseChecksumMismatch(f"the response carries no {field}: the service does not send checksums")
    if google_crc32c.value(data) != getattr(message, field):
        raise ResponseChecksumMismatch(f"the response's {field} does not match: it was altered in transit")


def check_verified(message: Any, field: str) -> None:
    """Unless the service says it checked the request's checksum."""
    if not getattr(message, field):
        raise ResponseChecksumMismatch(f"the service did not verify the request's checksum ({field} is false)")


# -- what each response must show -----------------------------------------------------------


def check_data_key(response: Any) -> None:
    """A GenerateDataKeyResponse (or a batch item's)."""
    check_field(response, response.plaintext, "plaintext_crc32c")
    check_field(response, response.wrapped_key, "wrapped_key_crc32c")


def check_wrapped_only(response: Any) -> None:
    """A GenerateDataKeyWithoutPlaintextResponse."""
    check_field(response, response.wrapped_key, "wrapped_key_crc32c")


def check_decrypted(response: Any) -> None:
    """A DecryptResponse to a request that carried wrapped_key_crc32c."""
    check_verified(response, "verified_wrapped_key_crc32c")
    check_field(response, response.plaintext, "plaintext_crc32c")


def check_rewrapped(response: Any) -> None:
    """A ReWrapResponse to a request that carried wrapped_key_crc32c."""
    check_verified(response, "verified_wrapped_key_crc32c")
    check_field(response, response.wrapped_key, "wrapped_key_crc32c")


def check_token(result: Any) -> None:
    """A PseudonymizeResult holding a token, to a request that carried values_crc32c."""
    check_verified(result, "verified_value_crc32c")
    check_field(result, result.token.encode("utf-8"), "token_crc32c")
