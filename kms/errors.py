"""Every condition the service reports, one exception each.

Each class knows the gRPC status code it maps to (by name, so this module needs no grpc) and
its ``reason``, the stable name clients use to rebuild a precise exception. Messages are for
humans and never contain key material, plaintext, PINs or an encryption context's values.
"""

from __future__ import annotations


class KmsError(Exception):
    """Base class. ``code`` is a grpc.StatusCode name."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        return type(self).__name__


# INVALID_ARGUMENT ------------------------------------------------------------------------


class InvalidArgument(KmsError):
    code = "INVALID_ARGUMENT"


class InvalidKeyId(InvalidArgument):
    pass


class InvalidEncryptionContext(InvalidArgument):
    pass


class InvalidPageToken(InvalidArgument):
    pass


class InvalidRotationPeriod(InvalidArgument):
    pass


class MalformedRequest(InvalidArgument):
    pass


class BatchTooLarge(InvalidArgument):
    pass


class ChecksumMismatch(InvalidArgument):
    """A request's CRC32C (``*_crc32c``) does not match the bytes that arrived: they were altered
    in transit. Nothing was done with them (docs/api.md, "Integrity in transit")."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} does not match its CRC32C checksum: the request was altered in transit")


class ValueTooLong(InvalidArgument):
    """A value to pseudonymize is longer than the service takes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a value to pseudonymize is at most {limit} bytes")


class InvalidPrivacySetting(InvalidArgument):
    """A key's subject_field, retention_period or erasure_finality out of its bounds, or set
    where it cannot apply (kms.domain.privacy says which combinations exist and why)."""


class SubjectMissing(InvalidArgument):
    """A key that keeps a key per data subject was used without the encryption-context entry
    that names the subject (its ``subject_field``)."""

    def __init__(self, key_id: str, subject_field: str) -> None:
        super().__init__(
            f"key {key_id!r} protects data per subject: the encryption context must carry the entry "
            f"{subject_field!r} naming the data subject"
        )
        self.key_id = key_id


class InvalidCiphertext(InvalidArgument):
    """A wrapped key that is malformed, altered, foreign or opened with the wrong context.

    Always the same message: which check failed is deliberately not revealed.
    """

    MESSAGE = "wrapped key is invalid or does not match the encryption context"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


# NOT_FOUND / ALREADY_EXISTS --------------------------------------------------------------


class KeyNotFound(KmsError):
    code = "NOT_FOUND"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id!r} not found")
        self.key_id = key_id


class KeyVersionNotFound(KmsError):
    code = "NOT_FOUND"

    def __init__(self, key_id: str, version: int) -> None:
        super().__init__(f"key {key_id!r} has no version {version}")
        self.key_id = key_id
        self.version = version


class KeyAlreadyExists(KmsError):
    code = "ALREADY_EXISTS"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id!r} already exists")
        self.key_id = key_id


# FAILED_PRECONDITION ---------------------------------------------------------------------


class FailedPrecondition(KmsError):
    code = "FAILED_PRECONDITION"


class KeyVersionNotUsable(FailedPrecondition):
    """A version exists but its state or the key's floor forbids the operation."""

    def __init__(self, key_id: str, version: int, why: str) -> None:
        super().__init__(f"key {key_id!r} version {version} {why}")
        self.key_id = key_id
        self.version = version


class KeyVersionDisabled(KeyVersionNotUsable):
    def __init__(self, key_id: str, version: int) -> None:
        super().__init__(key_id, version, "is DISABLED")


class KeyVersionDestroyScheduled(KeyVersionNotUsable):
    def __init__(self, key_id: str, version: int) -> None:
        super().__init__(key_id, version, "is DESTROY_SCHEDULED")


class KeyVersionDestroyed(KeyVersionNotUsable):
    def __init__(self, key_id: str, version: int) -> None:
        super().__init__(key_id, version, "is DESTROYED")


class KeyVersionBelowMinimum(KeyVersionNotUsable):
    def __init__(self, key_id: str, version: int, min_decryption_version: int) -> None:
        super().__init__(key_id, version, f"is below min_decryption_version {min_decryption_version}")
        self.min_decryption_version = min_decryption_version


class WrongKeyPurpose(FailedPrecondition):
    """The key exists, but its purpose is not the operation's: data keys need an ENCRYPT_DECRYPT
    key, Pseudonymize a PSEUDONYMIZE key."""

    def __init__(self, key_id: str, purpose: str, needed: str) -> None:
        super().__init__(f"key {key_id!r} is a {purpose} key; this operation needs a {needed} key")
        self.key_id = key_id


class KeyMaterialMissing(FailedPrecondition):
    """The database records a usable version but the HSM has no object for it."""

    def __init__(self, key_id: str, version: int) -> None:
        super().__init__(f"key {key_id!r} version {version} has no master key object in the HSM")
        self.key_id = key_id
        self.version = version


class InvalidStateTransition(FailedPrecondition):
    pass


class KeyMaterialCorrupt(FailedPrecondition):
    """A wrapped version's stored key does not verify: not bound to its key and version (two
    blobs swapped), not unwrapping under its root key (altered), or its root key gone."""

    def __init__(self, key_id: str, version: int, why: str) -> None:
        super().__init__(f"key {key_id!r} version {version}: {why}; see kms db verify")
        self.key_id = key_id
        self.version = version


class KeyMetadataUnverified(FailedPrecondition):
    """The key's stored metadata is not what the HSM-sealed ledger vouches for (changed, inserted
    or restored outside the service): the key is not used until an operator has looked."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id!r}: its stored metadata does not verify against the ledger; see kms db verify")
        self.key_id = key_id


class VersionStillInUse(FailedPrecondition):
    """Retirement refused: usage shows the version was used too recently."""

    def __init__(self, key_id: str, version: int, detail: str) -> None:
        super().__init__(f"key {key_id!r} version {version} is still in use: {detail}")
        self.key_id = key_id
        self.version = version


class WrapLimitReached(FailedPrecondition):
    """A version has wrapped as many data keys as one AES-GCM key may with random IVs (with a
    margin); it wraps no more, whatever happens to rotation."""

    def __init__(self, key_id: str, version: int, wraps: int, limit: int) -> None:
        super().__init__(
            f"key {key_id!r} version {version} has wrapped {wraps} data keys, the most one version may "
            f"({limit}, KMS_HARD_MAX_WRAPS_PER_VERSION); rotate the key"
        )
        self.key_id = key_id
        self.version = version


class SubjectErased(FailedPrecondition):
    """The data subject was erased (EraseSubject): its key is gone, so none of its data keys
    opens and none is issued. Names the erasure by its time and the subject's keyed digest, never
    the subject; distinct from a tampered input, which is InvalidCiphertext."""

    def __init__(self, key_id: str, subject_digest: str, erase_time: str) -> None:
        when = f" at {erase_time}" if erase_time else ""
        super().__init__(
            f"key {key_id!r}: the data subject with digest {subject_digest} was erased{when}; "
            "its data keys no longer open (kms erase status lists the erasure)"
        )
        self.key_id = key_id
        self.subject_digest = subject_digest


class RewrapDefeatsRetention(FailedPrecondition):
    """ReWrap of a data key under a key with a retention_period: moving it onto a newer version
    would keep it readable after its version is destroyed by retention, so it is refused."""

    def __init__(self, key_id: str, retention: str) -> None:
        super().__init__(
            f"key {key_id!r} has a retention_period of {retention}: its data keys are not re-wrapped, because "
            "moving them onto a newer version would keep the data readable beyond its retention (it becomes "
            "unreadable when the version that wraps it is destroyed)"
        )
        self.key_id = key_id


# PERMISSION_DENIED / UNAUTHENTICATED / RESOURCE_EXHAUSTED ----------------------------------


class GrantNotFound(KmsError):
    code = "NOT_FOUND"

    def __init__(self, grant_id: str) -> None:
        super().__init__(f"grant {grant_id[:64]!r} not found")


class PermissionDenied(KmsError):
    """Says which permission was missing on which key id (the caller's own words), never
    whether that key exists."""

    code = "PERMISSION_DENIED"


class Unauthenticated(KmsError):
    code = "UNAUTHENTICATED"


class RateLimited(KmsError):
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, permission: str, retry_after: float) -> None:
        super().__init__(f"rate limit for {permission} exceeded; retry in {retry_after:.3f}s")
        self.retry_after = retry_after


class TooManyStreams(KmsError):
    """Streams hold a server thread while open; a few are allowed at once, and a few per
    identity, so that idle ones can never take every thread from unary calls and health checks."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, limit: int, *, per_identity: bool = False) -> None:
        if per_identity:
            message = f"this identity has {limit} streams open already; close one or use the batch calls"
        else:
            message = f"this server has {limit} streams open already; retry later or use the batch calls"
        super().__init__(message)


# UNAVAILABLE / DEADLINE_EXCEEDED ---------------------------------------------------------


class Unavailable(KmsError):
    code = "UNAVAILABLE"


class HsmUnavailable(Unavailable):
    def __init__(self, detail: str = "HSM is unavailable") -> None:
        super().__init__(detail)


class HsmOperationFailed(Unavailable):
    """The HSM refused an operation for a reason other than bad input (a PKCS#11 error code)."""

    def __init__(self, pkcs11_error: str) -> None:
        super().__init__(f"HSM operation failed ({pkcs11_error})")


class DatabaseUnavailable(Unavailable):
    def __init__(self, detail: str = "database is unavailable") -> None:
        super().__init__(detail)


class AuditUnavailable(Unavailable):
    """The audit record of a call could not be written, so its result is withheld."""

    def __init__(self) -> None:
        super().__init__("audit log cannot be written; the call's result is withheld")


class AuditTampered(Unavailable):
    """The audit chain's head is not the one its last checkpoint sealed: records were written
    outside the service. Nothing more is appended until an operator has looked."""

    def __init__(self, head_seq: int) -> None:
        super().__init__(f"audit log head (record {head_seq}) is not sealed by its checkpoint; run kms audit verify")


class LedgerTampered(Unavailable):
    """The metadata ledger does not verify: a broken link, a head the HSM did not seal, or a
    database behind the HSM anchor (rolled back). Nothing is appended to it or believed from it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class MetadataIntegrityLost(Unavailable):
    """No key or grant can be believed until an operator has looked (kms db verify)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"metadata integrity check failed ({detail}); see kms db verify")


class MasterKeyUntrusted(Unavailable):
    """The HSM object a key version names does not prove it is the key this service generated
    (imported, extractable, able to do more than encrypt and decrypt, or its CKA_ID names several
    objects). It is never used; ``kms hsm check`` lists it."""

    def __init__(self, key_id: str, version: int) -> None:
        super().__init__(
            f"key {key_id!r} version {version}: its HSM object does not prove in-HSM generation as a master key "
            "and is not used; see kms hsm check"
        )
        self.key_id = key_id
        self.version = version


class SealKeyUntrusted(Unavailable):
    """The audit seal key is in doubt (a second object under its label, attributes that do not
    prove in-HSM generation, or the pinned object gone or replaced): nothing is sealed or checked
    until an operator has looked (``kms hsm check``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"audit seal key untrusted: {detail}; see kms hsm check")
        self.detail = detail


class RootKeyUntrusted(Unavailable):
    """Objects labelled as root keys exist but none proves it was generated in the HSM as a
    wrap-only, never-extractable key: none is used, and no other is created over them."""

    def __init__(self, label: str) -> None:
        super().__init__(f"no object labelled {label!r} is a sound root key; see kms hsm check")


class ConcurrentCreation(Unavailable):
    """Another replica is creating the same key right now; retrying later is safe."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id!r} is being created by another request; retry shortly")
        self.key_id = key_id


class Cancelled(KmsError):
    """The caller cancelled the call (or went away) before it finished."""

    code = "CANCELLED"

    def __init__(self) -> None:
        super().__init__("the call was cancelled by the client")


class StreamIdle(Cancelled):
    """The server cancelled a stream that made no progress for too long (KMS_STREAM_IDLE_TIMEOUT)."""

    def __init__(self) -> None:
        KmsError.__init__(self, "the stream made no progress for too long and was cancelled")


class Internal(KmsError):
    """A bug. The details go to the log under the request id, never to the client."""

    code = "INTERNAL"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"internal error (request id {request_id})")


class DeadlineExceeded(KmsError):
    code = "DEADLINE_EXCEEDED"

    def __init__(self) -> None:
        super().__init__("deadline exceeded before the operation could run")
