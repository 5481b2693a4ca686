"""Checking each new value the way the application will read it, before it is written.

A bare wrapped key is read by the service alone: Decrypt(wrapped key, context). An SDK
ciphertext is read by the SDK (docs/envelope-format.md, Reading), which

1. parses the header;
2. requires the caller's context to equal the header's;
3. has the service open the wrapped key under that context, and requires the key id the
   service reports to equal the header's key id (authenticated: the header tag covers it);
4. checks the key commitment and the header tag with keys derived from the data key;
5. opens the frames.

The job never sees a data key (it needs no permission to decrypt), so it checks 1 to 3 as the
SDK does, and stands in for 4 and 5 by checking that nothing the data key authenticates has
changed: the new value is the value as read with its wrapped key replaced by exactly the one the
service returned, and ReWrap keeps the data key. Step 3 runs as a ReWrap of the new wrapped key,
which the service must return unchanged: that shows it opens under the context, names the key
the value needs and is under that key's primary version, and the data key stays in the service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kms.crypto.context import encode_context
from kms.errors import InvalidEncryptionContext
from kms.rewrap.values import StoredValue
from kms_client import KmsClient, KmsError, Rewrapped, envelope


class Unopenable(Exception):
    """A new value the application's reader would refuse before asking the service. The
    message says why and holds no key material."""


@dataclass(frozen=True)
class Reading:
    """How the application will open a new value: what it sends the service, and the key the
    service must report."""

    key_id: str
    because: str  # who requires key_id, for messages
    wrapped_key: bytes = field(repr=False)
    context: Mapping[str, str] = field(repr=False)


def reading(
    original: StoredValue, new_value: bytes, wrapped_key: bytes, context: Mapping[str, str], key_id: str
) -> Reading:
    """How ``new_value``, ``original`` rebuilt around ``wrapped_key`` (as the service returned
    it), will be opened. ``context`` and ``key_id`` are what a bare wrapped key is opened with and
    must be under; an SDK ciphertext names both in its header. Raises Unopenable."""
    if original.sdk_header is None:
        return _bare_reading(new_value, wrapped_key, context, key_id)
    return _sdk_reading(original, original.sdk_header, new_value, wrapped_key)


def confirm(client: KmsClient, readings: Sequence[Reading]) -> list[str | None]:
    """Has the service open every new wrapped key as the application will, in one BatchReWrap:
    per reading, None when the service returns it unchanged under the key it needs, else why not."""
    if not readings:
        return []
    checks = client.rewrap_data_keys([(r.wrapped_key, dict(r.context)) for r in readings])
    return [_problem(r, check) for r, check in zip(readings, checks, strict=True)]


def _bare_reading(new_value: bytes, wrapped_key: bytes, context: Mapping[str, str], key_id: str) -> Reading:
    if new_value != wrapped_key:
        raise Unopenable("the new value is not the wrapped key the service returned")
    return Reading(key_id, "the job re-wraps it onto", new_value, dict(context))


def _sdk_reading(original: StoredValue, before: envelope.Header, new_value: bytes, wrapped_key: bytes) -> Reading:
    try:
        header = envelope.parse_header_bytes(new_value)
    except KmsError:
        raise Unopenable("the new SDK ciphertext's header does not parse") from None
    if header.wrapped_key != wrapped_key:
        raise Unopenable("the new SDK ciphertext does not hold the wrapped key the service returned")
    if not _only_wrapped_key_differs(original.data, before, new_value, header):
        raise Unopenable("the new SDK ciphertext differs from the one read in more than its wrapped key")
    if _service_encoding(header.context) != header.encoded_context:
        raise Unopenable("the service would bind another encoding of the context than the header holds")
    return Reading(header.key_id, "the SDK ciphertext's header names", header.wrapped_key, dict(header.context))


def _only_wrapped_key_differs(old: bytes, before: envelope.Header, new: bytes, after: envelope.Header) -> bool:
    """Byte for byte: the authenticated header with its tag, and whatever follows the header."""
    return (
        new[: after.wrapped_key_offset] == old[: before.wrapped_key_offset]
        and new[after.length :] == old[before.length :]
    )


def _service_encoding(context: Mapping[str, str]) -> bytes | None:
    try:
        return encode_context(context)
    except InvalidEncryptionContext:
        return None


def _problem(reading: Reading, check: Rewrapped | KmsError) -> str | None:
    if isinstance(check, KmsError):
        return f"the service does not open the new wrapped key ({check.reason})"
    if check.source_key_id != reading.key_id:
        return f"the new wrapped key is under key {check.source_key_id}, but {reading.because} {reading.key_id}"
    if check.changed or check.wrapped_key != reading.wrapped_key:
        return "the new wrapped key is not under the primary version"
    return None
