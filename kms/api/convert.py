"""Domain objects to and from protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from kms.api.errors import item_error
from kms.api.proto import pb
from kms.crypto.checksums import crc32c
from kms.domain.keys import Key, KeyVersion, Purpose, Storage
from kms.errors import InvalidArgument, KmsError
from kms.service.data_keys import DataKey, Rewrapped
from kms.service.pseudonyms import Pseudonyms


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


_MAX_DURATION_SECONDS = 100 * 365 * 86400


def optional_duration(message: object, field: str, error: type[InvalidArgument] = InvalidArgument) -> timedelta | None:
    """The Duration in ``field`` if set; rejects negative values and any beyond 100 years (no
    period or window of a key is longer, and date arithmetic with them stays in range)."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value = getattr(message, field)
    if value.seconds < 0 or value.nanos < 0 or value.seconds > _MAX_DURATION_SECONDS or value.nanos >= 10**9:
        raise error(f"{field} must be a duration from 0 to 100 years")
    return value.ToTimedelta()


def optional_time(message: object, field: str) -> datetime | None:
    """The Timestamp in ``field`` if set, as an aware datetime; rejects values outside the
    range a Timestamp may hold (years 1 to 9999)."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    try:
        return getattr(message, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field} is not a valid time") from None


def key_version(version: KeyVersion) -> pb.KeyVersion:
    return pb.KeyVersion(
        version=version.version,
        state=version.state.value,  # protobuf takes an enum by its name
        create_time=timestamp(version.create_time),
        destroy_time=timestamp(version.destroy_time),
        hsm_label=version.master_key_label,
        hsm_object_id=version.master_key_id,
        data_keys_issued=version.usage.data_keys_issued,
        decrypts=version.usage.decrypts,
        last_used_time=timestamp(version.usage.last_used_time),
        storage=version.storage.value,
        root_key_id=version.root_key_id,
    )


def key(value: Key) -> pb.Key:
    return pb.Key(
        key_id=value.key_id,
        description=value.description,
        primary_version=value.primary_version,
        versions=[key_version(v) for v in value.versions],
        rotation_period=duration(value.rotation_period),
        next_rotation_time=timestamp(value.next_rotation_time),
        create_time=timestamp(value.create_time),
        update_time=timestamp(value.update_time),
        min_decryption_version=value.min_decryption_version,
        storage=value.storage.value,
        purpose=value.purpose.value,
        subject_field=value.subject_field,
        retention_period=duration(value.retention_period),
        erasure_finality=duration(value.erasure_finality),
    )


def purpose(value: int) -> Purpose:
    """A requested Key.Purpose (PURPOSE_UNSPECIFIED: ENCRYPT_DECRYPT)."""
    if value == pb.Key.Purpose.PURPOSE_UNSPECIFIED:
        return Purpose.ENCRYPT_DECRYPT
    try:
        return Purpose(pb.Key.Purpose.Name(value))
    except ValueError:
        raise InvalidArgument(f"unknown purpose {value}") from None


def storage(value: int) -> Storage | None:
    """A requested Key.Storage, or None for "the server's default"."""
    if value == pb.Key.Storage.STORAGE_UNSPECIFIED:
        return None
    try:
        return Storage(pb.Key.Storage.Name(value))
    except ValueError:
        raise InvalidArgument(f"unknown storage {value}") from None


# Every response carries the CRC32C of its byte fields, and says whether the request's own
# checksum was checked (docs/api.md, "Integrity in transit"): a request checksum is checked
# whenever it is present, so "verified" is "was present and the call got this far".


def data_key(value: DataKey) -> pb.GenerateDataKeyResponse:
    return pb.GenerateDataKeyResponse(
        key_id=value.key_id,
        key_version=value.key_version,
        plaintext=value.plaintext,
        wrapped_key=value.wrapped_key,
        plaintext_crc32c=crc32c(value.plaintext),
        wrapped_key_crc32c=crc32c(value.wrapped_key),
    )


def data_key_without_plaintext(value: DataKey) -> pb.GenerateDataKeyWithoutPlaintextResponse:
    return pb.GenerateDataKeyWithoutPlaintextResponse(
        key_id=value.key_id,
        key_version=value.key_version,
        wrapped_key=value.wrapped_key,
        wrapped_key_crc32c=crc32c(value.wrapped_key),
    )


def decrypted(value: DataKey, verified: bool = False) -> pb.DecryptResponse:
    return pb.DecryptResponse(
        key_id=value.key_id,
        key_version=value.key_version,
        plaintext=value.plaintext,
        plaintext_crc32c=crc32c(value.plaintext),
        verified_wrapped_key_crc32c=verified,
    )


def rewrapped(value: Rewrapped, verified: bool = False) -> pb.ReWrapResponse:
    return pb.ReWrapResponse(
        key_id=value.key_id,
        key_version=value.key_version,
        source_key_id=value.source_key_id,
        source_key_version=value.source_key_version,
        wrapped_key=value.wrapped_key,
        wrapped_key_crc32c=crc32c(value.wrapped_key),
        verified_wrapped_key_crc32c=verified,
    )


def request_crc32c(request: pb.DecryptRequest | pb.ReWrapRequest) -> int | None:
    """The request's wrapped_key_crc32c, or None when the caller sent none."""
    return request.wrapped_key_crc32c if request.HasField("wrapped_key_crc32c") else None


def pseudonyms(value: Pseudonyms, checked: bool) -> pb.PseudonymizeResponse:
    """``checked``: the request carried values_crc32c, so every value that got a token was
    checked against its checksum."""
    response = pb.PseudonymizeResponse(key_id=value.key_id, key_version=value.key_version)
    # results.add builds each item in place; a list of separate messages is copied into the
    # response, three times the cost at 1000 items (scripts/bench/bench_pseudonymize.py).
    add = response.results.add
    for outcome in value.results:
        if isinstance(outcome, KmsError):
            add(error=item_error(outcome))
        else:
            add(token=outcome, token_crc32c=crc32c(outcome.encode("ascii")), verified_value_crc32c=checked)
    return response
