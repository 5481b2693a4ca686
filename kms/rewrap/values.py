"""What a stored value is: a bare wrapped key, or an SDK ciphertext whose header holds one.

For both, re-wrapping replaces the wrapped key and nothing else (``StoredValue.rebuilt``). A
value that is neither is ``Unrecognized``; one that starts like an SDK ciphertext but whose
header this SDK cannot parse (cut short, or from a newer format version) is ``UnreadableHeader``:
it may hold a wrapped key under any version, and the job cannot tell which.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kms.crypto import subject_key
from kms.crypto import wrapped_key as wrapped_key_format
from kms.errors import InvalidCiphertext
from kms_client import KmsError as KmsClientError
from kms_client import TruncatedCiphertext, envelope


class Unrecognized(ValueError):
    """Neither a wrapped key nor an SDK ciphertext: nothing this job can re-wrap."""


class UnreadableHeader(ValueError):
    """Starts like an SDK ciphertext, but its header does not parse: under which key version it
    is cannot be told."""


@dataclass(frozen=True)
class StoredValue:
    """A value as read. ``data`` is the bare wrapped key itself, or the SDK ciphertext from its
    first byte to at least the end of its header (a file's body is never read into memory)."""

    data: bytes = field(repr=False)
    sdk_header: envelope.Header | None = None  # None: a bare wrapped key

    @property
    def wrapped_key(self) -> bytes:
        return self.data if self.sdk_header is None else self.sdk_header.wrapped_key

    def context_for_reading(self, bare: Mapping[str, str]) -> dict[str, str]:
        """The context the application opens the value with: an SDK ciphertext's own (in its
        header), or ``bare``, the job's, for a bare wrapped key."""
        return dict(bare if self.sdk_header is None else self.sdk_header.context)

    def rebuilt(self, new_wrapped_key: bytes) -> bytes:
        """The value with its wrapped key replaced by ``new_wrapped_key`` and every other byte
        kept (for an SDK ciphertext, kms_client.envelope.replace_wrapped_key)."""
        if self.sdk_header is None:
            return bytes(new_wrapped_key)
        return envelope.replace_wrapped_key(self.data, new_wrapped_key)


def read_value(data: bytes) -> StoredValue:
    """Recognizes ``data``, a whole stored value. Raises Unrecognized or UnreadableHeader."""
    if data.startswith(envelope.MAGIC):
        return StoredValue(bytes(data), read_sdk_ciphertext(io.BytesIO(data).read).sdk_header)
    for parse in (wrapped_key_format.parse, subject_key.parse):  # formats 1 and 2
        try:
            parse(data)
        except InvalidCiphertext:
            continue
        return StoredValue(bytes(data))
    raise Unrecognized("neither a wrapped key nor an SDK ciphertext")


def read_sdk_ciphertext(read: Callable[[int], bytes]) -> StoredValue:
    """An SDK ciphertext's header, read through ``read(n)`` (up to n bytes, as a file's read);
    the value holds the header's bytes and no more. Raises Unrecognized when the input does not
    start with the SDK's magic, UnreadableHeader when it does but the header does not parse."""
    consumed = bytearray()

    def exactly(count: int) -> bytes:
        chunk = read(count)
        consumed.extend(chunk)
        if len(chunk) != count:
            raise TruncatedCiphertext("ciphertext ends inside its header")
        return chunk

    try:
        header = envelope.parse_header(exactly)
    except KmsClientError:
        if consumed.startswith(envelope.MAGIC):
            raise UnreadableHeader("unreadable SDK ciphertext header") from None
        raise Unrecognized("not an SDK ciphertext") from None
    return StoredValue(bytes(consumed), header)
