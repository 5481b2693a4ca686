import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Key(_message.Message):
    __slots__ = ("key_id", "description", "primary_version", "versions", "rotation_period", "next_rotation_time", "create_time", "update_time", "min_decryption_version", "storage", "purpose", "subject_field", "retention_period", "erasure_finality")
    class Storage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STORAGE_UNSPECIFIED: _ClassVar[Key.Storage]
        WRAPPED: _ClassVar[Key.Storage]
        HSM_OBJECT: _ClassVar[Key.Storage]
    STORAGE_UNSPECIFIED: Key.Storage
    WRAPPED: Key.Storage
    HSM_OBJECT: Key.Storage
    class Purpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PURPOSE_UNSPECIFIED: _ClassVar[Key.Purpose]
        ENCRYPT_DECRYPT: _ClassVar[Key.Purpose]
        PSEUDONYMIZE: _ClassVar[Key.Purpose]
    PURPOSE_UNSPECIFIED: Key.Purpose
    ENCRYPT_DECRYPT: Key.Purpose
    PSEUDONYMIZE: Key.Purpose
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_FIELD_NUMBER: _ClassVar[int]
    RETENTION_PERIOD_FIELD_NUMBER: _ClassVar[int]
    ERASURE_FINALITY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    description: str
    primary_version: int
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    rotation_period: _duration_pb2.Duration
    next_rotation_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    min_decryption_version: int
    storage: Key.Storage
    purpose: Key.Purpose
    subject_field: str
    retention_period: _duration_pb2.Duration
    erasure_finality: _duration_pb2.Duration
    def __init__(self, key_id: _Optional[str] = ..., description: _Optional[str] = ..., primary_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ..., rotation_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., next_rotation_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_decryption_version: _Optional[int] = ..., storage: _Optional[_Union[Key.Storage, str]] = ..., purpose: _Optional[_Union[Key.Purpose, str]] = ..., subject_field: _Optional[str] = ..., retention_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., erasure_finality: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KeyVersion(_message.Message):
    __slots__ = ("version", "state", "create_time", "destroy_time", "hsm_label", "hsm_object_id", "data_keys_issued", "decrypts", "last_used_time", "storage", "root_key_id")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[KeyVersion.State]
        ENABLED: _ClassVar[KeyVersion.State]
        DISABLED: _ClassVar[KeyVersion.State]
        DESTROY_SCHEDULED: _ClassVar[KeyVersion.State]
        DESTROYED: _ClassVar[KeyVersion.State]
    STATE_UNSPECIFIED: KeyVersion.State
    ENABLED: KeyVersion.State
    DISABLED: KeyVersion.State
    DESTROY_SCHEDULED: KeyVersion.State
    DESTROYED: KeyVersion.State
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DESTROY_TIME_FIELD_NUMBER: _ClassVar[int]
    HSM_LABEL_FIELD_NUMBER: _ClassVar[int]
    HSM_OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_KEYS_ISSUED_FIELD_NUMBER: _ClassVar[int]
    DECRYPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIME_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    ROOT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: KeyVersion.State
    create_time: _timestamp_pb2.Timestamp
    destroy_time: _timestamp_pb2.Timestamp
    hsm_label: str
    hsm_object_id: str
    data_keys_issued: int
    decrypts: int
    last_used_time: _timestamp_pb2.Timestamp
    storage: Key.Storage
    root_key_id: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[KeyVersion.State, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., destroy_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hsm_label: _Optional[str] = ..., hsm_object_id: _Optional[str] = ..., data_keys_issued: _Optional[int] = ..., decrypts: _Optional[int] = ..., last_used_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., storage: _Optional[_Union[Key.Storage, str]] = ..., root_key_id: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("key_id", "description", "rotation_period", "storage", "purpose", "subject_field", "retention_period", "erasure_finality")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_FIELD_NUMBER: _ClassVar[int]
    RETENTION_PERIOD_FIELD_NUMBER: _ClassVar[int]
    ERASURE_FINALITY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    description: str
    rotation_period: _duration_pb2.Duration
    storage: Key.Storage
    purpose: Key.Purpose
    subject_field: str
    retention_period: _duration_pb2.Duration
    erasure_finality: _duration_pb2.Duration
    def __init__(self, key_id: _Optional[str] = ..., description: _Optional[str] = ..., rotation_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., storage: _Optional[_Union[Key.Storage, str]] = ..., purpose: _Optional[_Union[Key.Purpose, str]] = ..., subject_field: _Optional[str] = ..., retention_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., erasure_finality: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("key_id", "description", "rotation_period", "min_decryption_version", "update_mask", "storage", "retention_period", "erasure_finality")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    RETENTION_PERIOD_FIELD_NUMBER: _ClassVar[int]
    ERASURE_FINALITY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    description: str
    rotation_period: _duration_pb2.Duration
    min_decryption_version: int
    update_mask: _field_mask_pb2.FieldMask
    storage: Key.Storage
    retention_period: _duration_pb2.Duration
    erasure_finality: _duration_pb2.Duration
    def __init__(self, key_id: _Optional[str] = ..., description: _Optional[str] = ..., rotation_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_decryption_version: _Optional[int] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., storage: _Optional[_Union[Key.Storage, str]] = ..., retention_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., erasure_finality: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DisableKeyVersionRequest(_message.Message):
    __slots__ = ("key_id", "version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class EnableKeyVersionRequest(_message.Message):
    __slots__ = ("key_id", "version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ScheduleKeyVersionDestructionRequest(_message.Message):
    __slots__ = ("key_id", "version", "pending_window")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    pending_window: _duration_pb2.Duration
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ..., pending_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CancelKeyVersionDestructionRequest(_message.Message):
    __slots__ = ("key_id", "version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RetireKeyVersionRequest(_message.Message):
    __slots__ = ("key_id", "version", "min_idle", "pending_window")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_IDLE_FIELD_NUMBER: _ClassVar[int]
    PENDING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    min_idle: _duration_pb2.Duration
    pending_window: _duration_pb2.Duration
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ..., min_idle: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pending_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GenerateDataKeyRequest(_message.Message):
    __slots__ = ("key_id", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, key_id: _Optional[str] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerateDataKeyResponse(_message.Message):
    __slots__ = ("key_id", "key_version", "plaintext", "wrapped_key", "plaintext_crc32c", "wrapped_key_crc32c")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_CRC32C_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_CRC32C_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_version: int
    plaintext: bytes
    wrapped_key: bytes
    plaintext_crc32c: int
    wrapped_key_crc32c: int
    def __init__(self, key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., plaintext: _Optional[bytes] = ..., wrapped_key: _Optional[bytes] = ..., plaintext_crc32c: _Optional[int] = ..., wrapped_key_crc32c: _Optional[int] = ...) -> None: ...

class GenerateDataKeyWithoutPlaintextResponse(_message.Message):
    __slots__ = ("key_id", "key_version", "wrapped_key", "wrapped_key_crc32c")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_CRC32C_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_version: int
    wrapped_key: bytes
    wrapped_key_crc32c: int
    def __init__(self, key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., wrapped_key: _Optional[bytes] = ..., wrapped_key_crc32c: _Optional[int] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("wrapped_key", "encryption_context", "wrapped_key_crc32c")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_CRC32C_FIELD_NUMBER: _ClassVar[int]
    wrapped_key: bytes
    encryption_context: _containers.ScalarMap[str, str]
    wrapped_key_crc32c: int
    def __init__(self, wrapped_key: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., wrapped_key_crc32c: _Optional[int] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("key_id", "key_version", "plaintext", "plaintext_crc32c", "verified_wrapped_key_crc32c")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_CRC32C_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_WRAPPED_KEY_CRC32C_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_version: int
    plaintext: bytes
    plaintext_crc32c: int
    verified_wrapped_key_crc32c: bool
    def __init__(self, key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., plaintext: _Optional[bytes] = ..., plaintext_crc32c: _Optional[int] = ..., verified_wrapped_key_crc32c: _Optional[bool] = ...) -> None: ...

class ReWrapRequest(_message.Message):
    __slots__ = ("wrapped_key", "encryption_context", "destination_key_id", "wrapped_key_crc32c")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_CRC32C_FIELD_NUMBER: _ClassVar[int]
    wrapped_key: bytes
    encryption_context: _containers.ScalarMap[str, str]
    destination_key_id: str
    wrapped_key_crc32c: int
    def __init__(self, wrapped_key: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., destination_key_id: _Optional[str] = ..., wrapped_key_crc32c: _Optional[int] = ...) -> None: ...

class ReWrapResponse(_message.Message):
    __slots__ = ("key_id", "key_version", "source_key_version", "wrapped_key", "source_key_id", "wrapped_key_crc32c", "verified_wrapped_key_crc32c")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_CRC32C_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_WRAPPED_KEY_CRC32C_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_version: int
    source_key_version: int
    wrapped_key: bytes
    source_key_id: str
    wrapped_key_crc32c: int
    verified_wrapped_key_crc32c: bool
    def __init__(self, key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., source_key_version: _Optional[int] = ..., wrapped_key: _Optional[bytes] = ..., source_key_id: _Optional[str] = ..., wrapped_key_crc32c: _Optional[int] = ..., verified_wrapped_key_crc32c: _Optional[bool] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class BatchGenerateDataKeyRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GenerateDataKeyRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[GenerateDataKeyRequest, _Mapping]]] = ...) -> None: ...

class GenerateDataKeyResult(_message.Message):
    __slots__ = ("data_key", "error")
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    data_key: GenerateDataKeyResponse
    error: ItemError
    def __init__(self, data_key: _Optional[_Union[GenerateDataKeyResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchGenerateDataKeyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GenerateDataKeyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[GenerateDataKeyResult, _Mapping]]] = ...) -> None: ...

class BatchDecryptRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DecryptRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DecryptRequest, _Mapping]]] = ...) -> None: ...

class DecryptResult(_message.Message):
    __slots__ = ("data_key", "error")
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    data_key: DecryptResponse
    error: ItemError
    def __init__(self, data_key: _Optional[_Union[DecryptResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchDecryptResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DecryptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DecryptResult, _Mapping]]] = ...) -> None: ...

class BatchReWrapRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ReWrapRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ReWrapRequest, _Mapping]]] = ...) -> None: ...

class ReWrapResult(_message.Message):
    __slots__ = ("rewrapped", "error")
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    rewrapped: ReWrapResponse
    error: ItemError
    def __init__(self, rewrapped: _Optional[_Union[ReWrapResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchReWrapResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReWrapResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ReWrapResult, _Mapping]]] = ...) -> None: ...

class EraseSubjectRequest(_message.Message):
    __slots__ = ("key_id", "subject")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    subject: str
    def __init__(self, key_id: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class Erasure(_message.Message):
    __slots__ = ("key_id", "subject_digest", "erase_time", "erased_by", "subject_known", "final_after_version", "final", "final_time", "audit_seq")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ERASE_TIME_FIELD_NUMBER: _ClassVar[int]
    ERASED_BY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_KNOWN_FIELD_NUMBER: _ClassVar[int]
    FINAL_AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    FINAL_TIME_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    subject_digest: str
    erase_time: _timestamp_pb2.Timestamp
    erased_by: str
    subject_known: bool
    final_after_version: int
    final: bool
    final_time: _timestamp_pb2.Timestamp
    audit_seq: int
    def __init__(self, key_id: _Optional[str] = ..., subject_digest: _Optional[str] = ..., erase_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., erased_by: _Optional[str] = ..., subject_known: _Optional[bool] = ..., final_after_version: _Optional[int] = ..., final: _Optional[bool] = ..., final_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., audit_seq: _Optional[int] = ...) -> None: ...

class ListErasuresRequest(_message.Message):
    __slots__ = ("key_id", "page_size", "page_token")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    page_size: int
    page_token: str
    def __init__(self, key_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListErasuresResponse(_message.Message):
    __slots__ = ("erasures", "next_page_token")
    ERASURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    erasures: _containers.RepeatedCompositeFieldContainer[Erasure]
    next_page_token: str
    def __init__(self, erasures: _Optional[_Iterable[_Union[Erasure, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PseudonymizeRequest(_message.Message):
    __slots__ = ("key_id", "values", "context", "key_version", "values_crc32c")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUES_CRC32C_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    values: _containers.RepeatedScalarFieldContainer[bytes]
    context: _containers.ScalarMap[str, str]
    key_version: int
    values_crc32c: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key_id: _Optional[str] = ..., values: _Optional[_Iterable[bytes]] = ..., context: _Optional[_Mapping[str, str]] = ..., key_version: _Optional[int] = ..., values_crc32c: _Optional[_Iterable[int]] = ...) -> None: ...

class PseudonymizeResult(_message.Message):
    __slots__ = ("token", "error", "token_crc32c", "verified_value_crc32c")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_CRC32C_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_VALUE_CRC32C_FIELD_NUMBER: _ClassVar[int]
    token: str
    error: ItemError
    token_crc32c: int
    verified_value_crc32c: bool
    def __init__(self, token: _Optional[str] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., token_crc32c: _Optional[int] = ..., verified_value_crc32c: _Optional[bool] = ...) -> None: ...

class PseudonymizeResponse(_message.Message):
    __slots__ = ("key_id", "key_version", "results")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_version: int
    results: _containers.RepeatedCompositeFieldContainer[PseudonymizeResult]
    def __init__(self, key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[PseudonymizeResult, _Mapping]]] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("grant_id", "principal", "resource", "permissions", "encryption_context_equals", "created_by")
    class EncryptionContextEqualsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_EQUALS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    principal: str
    resource: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    encryption_context_equals: _containers.ScalarMap[str, str]
    created_by: str
    def __init__(self, grant_id: _Optional[str] = ..., principal: _Optional[str] = ..., resource: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., encryption_context_equals: _Optional[_Mapping[str, str]] = ..., created_by: _Optional[str] = ...) -> None: ...

class GrantPermissionsRequest(_message.Message):
    __slots__ = ("principal", "resource", "permissions", "encryption_context_equals")
    class EncryptionContextEqualsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_EQUALS_FIELD_NUMBER: _ClassVar[int]
    principal: str
    resource: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    encryption_context_equals: _containers.ScalarMap[str, str]
    def __init__(self, principal: _Optional[str] = ..., resource: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., encryption_context_equals: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RevokeGrantRequest(_message.Message):
    __slots__ = ("grant_id",)
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    def __init__(self, grant_id: _Optional[str] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("principal", "resource")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    resource: str
    def __init__(self, principal: _Optional[str] = ..., resource: _Optional[str] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class GroupMemberRequest(_message.Message):
    __slots__ = ("group", "identity")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    group: str
    identity: str
    def __init__(self, group: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class GroupMembership(_message.Message):
    __slots__ = ("group", "identity", "changed")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    group: str
    identity: str
    changed: bool
    def __init__(self, group: _Optional[str] = ..., identity: _Optional[str] = ..., changed: _Optional[bool] = ...) -> None: ...

class ListGroupMembersRequest(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: str
    def __init__(self, group: _Optional[str] = ...) -> None: ...

class ListGroupMembersResponse(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[GroupMembership]
    def __init__(self, members: _Optional[_Iterable[_Union[GroupMembership, _Mapping]]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "time", "identity", "rpc", "key_id", "key_version", "outcome", "reason", "request_id", "peer", "context_digest", "item", "detail", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    identity: str
    rpc: str
    key_id: str
    key_version: int
    outcome: str
    reason: str
    request_id: str
    peer: str
    context_digest: str
    item: int
    detail: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., identity: _Optional[str] = ..., rpc: _Optional[str] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., peer: _Optional[str] = ..., context_digest: _Optional[str] = ..., item: _Optional[int] = ..., detail: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "key_id", "identity", "after_seq", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    key_id: str
    identity: str
    after_seq: int
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., identity: _Optional[str] = ..., after_seq: _Optional[int] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class VerifyAuditLogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditLogResponse(_message.Message):
    __slots__ = ("intact", "records_checked", "checkpoints_checked", "problem_seq", "problem")
    INTACT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    intact: bool
    records_checked: int
    checkpoints_checked: int
    problem_seq: int
    problem: str
    def __init__(self, intact: _Optional[bool] = ..., records_checked: _Optional[int] = ..., checkpoints_checked: _Optional[int] = ..., problem_seq: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...
