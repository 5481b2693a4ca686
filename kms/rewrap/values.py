"""What a stored value is: a bare wrapped key, or an SDK ciphertext whose header holds one.

For both, re-wrapping replaces the wrapped key and nothing else; the value is written back in
the form it was read (binary, or base64 text).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kms.crypto import wrapped_key as wrapped_key_format
from kms.errors import InvalidCiphertext
from kms_client import KmsError as KmsClientError
from kms_client import envelope


@dataclass(frozen=True)
class StoredValue:
    wrapped_key: bytes
    context: Mapping[str, str] | None  # None: a bare wrapped key, whose context the job supplies
    as_stored: Any  # the value exactly as read, for compare-and-set
    _rebuild: Callable[[bytes], bytes]

    def replaced(self, new_wrapped_key: bytes) -> Any:
        rebuilt = self._rebuild(new_wrapped_key)
        if isinstance(self.as_stored, str):
            return base64.b64encode(rebuilt).decode("ascii")
        return rebuilt


def read_value(data: bytes, as_stored: Any) -> StoredValue:
    """Recognizes ``data``; raises ValueError naming what it is not."""
    envelope = _sdk_envelope(data)
    if envelope is not None:
        return envelope(as_stored)
    try:
        wrapped_key_format.parse(data)
    except InvalidCiphertext:
        raise ValueError("neither a wrapped key nor an SDK ciphertext") from None
    return StoredValue(data, None, as_stored, lambda new: new)


def _sdk_envelope(data: bytes) -> Callable[[Any], StoredValue] | None:
    """An SDK ciphertext: its header holds the wrapped key and the context; re-wrapping
    replaces the wrapped key and keeps every other byte (kms_client.envelope.replace_wrapped_key)."""
    if not data.startswith(envelope.MAGIC):
        return None
    try:
        header = envelope.parse_header_bytes(data)
    except KmsClientError:
        raise ValueError("unreadable SDK ciphertext header") from None
    return lambda as_stored: StoredValue(
        header.wrapped_key, dict(header.context), as_stored, lambda new: envelope.replace_wrapped_key(data, new)
    )
