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


class KeyMaterialMissing(FailedPrecondition):
    """The database records a usable version but the HSM has no object for it."""

    def __init__(self, key_id: str, version: int) -> None:
        super().__init__(f"key {key_id!r} version {version} has no master key object in the HSM")
        self.key_id = key_id
        self.version = version


class InvalidStateTransition(FailedPrecondition):
    pass


# PERMISSION_DENIED / UNAUTHENTICATED / RESOURCE_EXHAUSTED ----------------------------------


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
    """Streams hold a server thread while open; a few are allowed at once, so that idle ones
    can never take every thread from unary calls and health checks."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, limit: int) -> None:
        super().__init__(f"this server has {limit} streams open already; retry later or use the batch calls")


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


class ConcurrentCreation(Unavailable):
    """Another replica is creating the same key right now; retrying later is safe."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id!r} is being created by another request; retry shortly")
        self.key_id = key_id


class DeadlineExceeded(KmsError):
    code = "DEADLINE_EXCEEDED"

    def __init__(self) -> None:
        super().__init__("deadline exceeded before the operation could run")
