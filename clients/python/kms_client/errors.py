"""Typed exceptions rebuilt from the service's gRPC status.

The service names the exact condition in the trailing metadata entry ``kms-error-reason`` (the
name of its exception class, kms/errors.py); when it is absent (a proxy answered, say), unknown,
or names a class whose status code disagrees with the status, the status code picks the class.
Code that only cares about the broad kind catches the per-code classes: ``InvalidArgument``,
``NotFound``, ``FailedPrecondition``, ``ResourceExhausted``, ``Unavailable`` and so on, or
``KmsError`` for everything.

One registry, filled by the classes themselves, in the manner of google-api-core's exceptions:
defining a subclass in this SDK registers it under its name as a reason (``__init_subclass__``),
and a class that sets ``code`` itself is also the class of that status code. Adding a condition
is one class statement; no table is kept by hand. (Subclasses an application defines are not
registered: they never change which class the SDK raises.) Every class of the service has a class here of the
same name, status code and place in the hierarchy (tests/unit/test_error_parity.py).

Messages are the service's own (which never carry key material, plaintext or context values)
or fixed strings of this SDK.
"""

from __future__ import annotations

import contextlib
from typing import TypeVar, cast

import grpc

REASON_KEY = "kms-error-reason"
RETRY_AFTER_KEY = "retry-after-ms"

_Name = TypeVar("_Name")
_BY_REASON: dict[str, type[KmsError]] = {}
_BY_CODE: dict[grpc.StatusCode, type[KmsError]] = {}


def _register(table: dict[_Name, type[KmsError]], name: _Name, cls: type[KmsError]) -> None:
    existing = table.setdefault(name, cls)
    if existing is not cls:
        raise TypeError(f"{name} is registered twice ({existing.__qualname__}, {cls.__qualname__})")


class KmsError(Exception):
    """Base of every error this SDK raises. ``code`` is the gRPC status code; ``reason`` the
    service's name for the condition (this class's name when raised by the SDK itself)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__module__.startswith("kms_client"):
            return  # an application's own subclass changes nothing the SDK raises
        if "code" in vars(cls):
            _register(_BY_CODE, cls.code, cls)
        _register(_BY_REASON, cls.__name__, cls)

    def __init__(self, message: str, *, reason: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or type(self).__name__
        self.retry_after = retry_after


# -- one class per status code ------------------------------------------------------------------


class InvalidArgument(KmsError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(KmsError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(KmsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(KmsError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(KmsError):
    """Says which permission was missing on which key id, never whether that key exists."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(KmsError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(KmsError):
    """``retry_after`` is how long the service asked to wait, when it said (rate limits)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(KmsError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(KmsError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(KmsError):
    """The call was cancelled before it finished (by this client, or by the service)."""

    code = grpc.StatusCode.CANCELLED


class Internal(KmsError):
    """A bug in the service; its message carries the request id to find it in the service's log."""

    code = grpc.StatusCode.INTERNAL


# -- one class per condition (the service's reasons, kms/errors.py) -----------------------------

# INVALID_ARGUMENT


class InvalidKeyId(InvalidArgument):
    pass


class InvalidEncryptionContext(InvalidArgument):
    pass


class InvalidPageToken(InvalidArgument):
    pass


class InvalidRotationPeriod(InvalidArgument):
    pass


class MalformedRequest(InvalidArgument):
    """The request's bytes are not the message the RPC takes."""


class BatchTooLarge(InvalidArgument):
    pass


class ChecksumMismatch(InvalidArgument):
    """Bytes were altered between this client and the service: the service found a request's
    CRC32C wrong (and did nothing with it), or this SDK found a response's wrong
    (ResponseChecksumMismatch). The SDK has already retried once."""


class ResponseChecksumMismatch(ChecksumMismatch):
    """A response's byte field does not match its CRC32C, or a response lacks the checksum or
    the verification this SDK asked for. Raised by this SDK only (docs/api.md)."""


class ValueTooLong(InvalidArgument):
    """A value to pseudonymize is longer than the service takes (4096 bytes)."""


class InvalidPrivacySetting(InvalidArgument):
    """A key's subject_field, retention_period or erasure_finality is out of bounds, or set where
    it cannot apply (docs/privacy.md)."""


class SubjectMissing(InvalidArgument):
    """A key with a subject_field was used without the encryption-context entry naming the subject."""


class InvalidCiphertext(InvalidArgument):
    """A ciphertext or wrapped key that is malformed, altered, truncated, or opened with the
    wrong encryption context. Deliberately does not say which. An altered wrapped key can also
    produce an error about the key version it names instead (PermissionDenied,
    KeyVersionNotUsable, ...): the absence of this error is no proof of integrity."""


class TruncatedCiphertext(InvalidCiphertext):
    """The ciphertext ended before its final frame: inside the header, on a frame boundary, or
    inside a frame's tag. Plaintext already written by ``decrypt_stream`` is incomplete.
    Raised by this SDK only (the service never sees a whole ciphertext)."""


class EncryptionContextMismatch(InvalidCiphertext):
    """The caller's encryption context is not the one recorded in the ciphertext's header.
    Raised by this SDK before the service is asked for the data key (the header's context is
    public)."""


# NOT_FOUND


class KeyNotFound(NotFound):
    pass


class KeyVersionNotFound(NotFound):
    pass


class GrantNotFound(NotFound):
    pass


# ALREADY_EXISTS


class KeyAlreadyExists(AlreadyExists):
    pass


# FAILED_PRECONDITION


class KeyVersionNotUsable(FailedPrecondition):
    """A key version exists but its state, or the key's minimum decryption version, forbids the use."""


class KeyVersionDisabled(KeyVersionNotUsable):
    pass


class KeyVersionDestroyScheduled(KeyVersionNotUsable):
    pass


class KeyVersionDestroyed(KeyVersionNotUsable):
    pass


class KeyVersionBelowMinimum(KeyVersionNotUsable):
    pass


class WrongKeyPurpose(FailedPrecondition):
    """The key's purpose is not the operation's: data keys need an ENCRYPT_DECRYPT key,
    pseudonymize a PSEUDONYMIZE key."""


class SubjectErased(FailedPrecondition):
    """The data subject was erased: its data keys no longer open and none is issued. The message
    names the erasure by the subject's keyed digest (kms erase status lists it)."""


class RewrapDefeatsRetention(FailedPrecondition):
    """The key has a retention_period: its data keys are never re-wrapped onto newer versions,
    which would keep the data readable beyond the retention."""


class KeyMaterialMissing(FailedPrecondition):
    """The service records a usable version but its HSM has no master key object for it."""


class InvalidStateTransition(FailedPrecondition):
    """The version's state does not allow the change asked for (enabling a destroyed version, ...)."""


class KeyMetadataUnverified(FailedPrecondition):
    """The key's stored metadata does not verify against the service's integrity ledger: the key
    is not used until an operator has looked."""


class KeyMaterialCorrupt(FailedPrecondition):
    """A version's stored wrapped key does not verify (swapped, altered, or its root key gone):
    the service refuses to use it; an operator looks with kms db verify."""


class VersionStillInUse(FailedPrecondition):
    """Retirement refused: the version was used too recently."""


class WrapLimitReached(FailedPrecondition):
    """A version has wrapped as many data keys as one AES-GCM key may; rotate the key."""


# RESOURCE_EXHAUSTED


class RateLimited(ResourceExhausted):
    """A per-identity rate limit; ``retry_after`` says when a token is back."""


class TooManyStreams(ResourceExhausted):
    """The service (or this identity) has as many streams open as it allows."""


# UNAVAILABLE


class HsmUnavailable(Unavailable):
    pass


class HsmOperationFailed(Unavailable):
    pass


class DatabaseUnavailable(Unavailable):
    pass


class AuditUnavailable(Unavailable):
    """The call's audit record could not be written, so its result was withheld."""


class AuditTampered(Unavailable):
    """The service found its audit log changed outside it and appends nothing until an operator
    has looked."""


class LedgerTampered(Unavailable):
    """The service's metadata ledger does not verify; nothing is believed from it."""


class MetadataIntegrityLost(Unavailable):
    """No key or grant can be believed until an operator has looked (kms db verify)."""


class MasterKeyUntrusted(Unavailable):
    """The HSM object a key version names does not prove it is a master key the service
    generated; the service does not use it until an operator has looked (kms hsm check)."""


class RootKeyUntrusted(Unavailable):
    """No HSM object labelled as the root key proves it is a sound wrap-only key (kms hsm check)."""


class SealKeyUntrusted(Unavailable):
    """The service's audit seal key is in doubt: nothing is sealed or checked until an operator
    has looked (kms hsm check)."""


class ConcurrentCreation(Unavailable):
    """Another replica is creating the same key right now; retrying later is safe."""


# CANCELLED


class StreamIdle(Cancelled):
    """The service cancelled a stream that made no progress for too long."""


# -- from a status to an exception --------------------------------------------------------------


def reason_class(reason: str) -> type[KmsError] | None:
    """The class registered for a service reason, or None."""
    return _BY_REASON.get(reason)


def code_class(code: grpc.StatusCode) -> type[KmsError] | None:
    """The class of a status code, or None for a code without one (UNKNOWN, ABORTED, ...)."""
    return _BY_CODE.get(code)


def error_for(code: grpc.StatusCode, message: str, reason: str | None = None) -> KmsError:
    """The exception for a status: the reason's class when it agrees with the code, else the code's."""
    cls = _BY_REASON.get(reason or "")
    if cls is None or cls.code != code:
        cls = _BY_CODE.get(code, KmsError)
    return cls(message, reason=reason)


def from_rpc_error(error: grpc.RpcError) -> KmsError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    reason = None
    retry_after = None
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    # grpc-stubs type the items as objects with .key and .value; they are (key, value) tuples,
    # and the values of keys without the -bin suffix are text.
    for key, value in cast("tuple[tuple[str, str], ...]", metadata or ()):
        if key == REASON_KEY:
            reason = value
        elif key == RETRY_AFTER_KEY:
            with contextlib.suppress(ValueError):
                retry_after = int(value) / 1000
    exc = error_for(code, message or code.name, reason)
    exc.retry_after = retry_after
    return exc
