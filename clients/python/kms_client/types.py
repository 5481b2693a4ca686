"""Plain data returned by the client. Plaintext keys never appear in a repr."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kms_proto.kms.v1 import kms_pb2 as pb


@dataclass(frozen=True)
class KeyVersion:
    version: int
    state: str  # ENABLED, DISABLED, DESTROY_SCHEDULED or DESTROYED
    create_time: datetime | None
    destroy_time: datetime | None = None
    hsm_label: str = ""
    hsm_object_id: str = ""
    # Usage counted by the service (lower bounds: written in batches every few seconds).
    data_keys_issued: int = 0
    decrypts: int = 0
    last_used_time: datetime | None = None
    # WRAPPED (stored wrapped under an HSM root key, root_key_id) or HSM_OBJECT.
    storage: str = "HSM_OBJECT"
    root_key_id: str = ""


@dataclass(frozen=True)
class Key:
    key_id: str
    description: str
    primary_version: int
    versions: tuple[KeyVersion, ...]
    rotation_period: timedelta | None
    next_rotation_time: datetime | None
    create_time: datetime | None
    update_time: datetime | None
    min_decryption_version: int = 1
    storage: str = "WRAPPED"  # where new versions live: WRAPPED or HSM_OBJECT
    # Privacy settings (docs/privacy.md): the context entry naming the data subject ("" for none),
    # how long a version is kept once superseded, the bound on erasures being final in backups.
    subject_field: str = ""
    retention_period: timedelta | None = None
    erasure_finality: timedelta | None = None
    purpose: str = "ENCRYPT_DECRYPT"  # or PSEUDONYMIZE: its versions make tokens (pseudonymize)


@dataclass(frozen=True)
class DataKey:
    key_id: str
    key_version: int
    wrapped_key: bytes
    plaintext: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Rewrapped:
    key_id: str
    key_version: int
    source_key_id: str
    source_key_version: int
    wrapped_key: bytes

    @property
    def changed(self) -> bool:
        """False when the wrapped key was already under the primary version (returned as is)."""
        return (self.key_id, self.key_version) != (self.source_key_id, self.source_key_version)


def _time(message: object, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None  # type: ignore[attr-defined]


def key_from_pb(message: pb.Key) -> Key:
    return Key(
        key_id=message.key_id,
        description=message.description,
        primary_version=message.primary_version,
        versions=tuple(
            KeyVersion(
                version=v.version,
                state=pb.KeyVersion.State.Name(v.state),
                create_time=_time(v, "create_time"),
                destroy_time=_time(v, "destroy_time"),
                hsm_label=v.hsm_label,
                hsm_object_id=v.hsm_object_id,
                data_keys_issued=v.data_keys_issued,
                decrypts=v.decrypts,
                last_used_time=_time(v, "last_used_time"),
                storage=pb.Key.Storage.Name(v.storage),
                root_key_id=v.root_key_id,
            )
            for v in message.versions
        ),
        rotation_period=message.rotation_period.ToTimedelta() if message.HasField("rotation_period") else None,
        next_rotation_time=_time(message, "next_rotation_time"),
        create_time=_time(message, "create_time"),
        update_time=_time(message, "update_time"),
        min_decryption_version=message.min_decryption_version,
        storage=pb.Key.Storage.Name(message.storage),
        purpose=pb.Key.Purpose.Name(message.purpose),
        subject_field=message.subject_field,
        retention_period=message.retention_period.ToTimedelta() if message.HasField("retention_period") else None,
        erasure_finality=message.erasure_finality.ToTimedelta() if message.HasField("erasure_finality") else None,
    )


def rewrapped_from_pb(message: pb.ReWrapResponse) -> Rewrapped:
    return Rewrapped(
        key_id=message.key_id,
        key_version=message.key_version,
        source_key_id=message.source_key_id,
        source_key_version=message.source_key_version,
        wrapped_key=message.wrapped_key,
    )
