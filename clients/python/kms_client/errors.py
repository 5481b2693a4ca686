"""Typed exceptions rebuilt from the service's gRPC status.

The service names the exact condition in the trailing metadata entry ``kms-error-reason``;
when it is absent (a proxy answered, say) the status code picks the class. Code that only
cares about the broad kind catches the base classes: ``InvalidArgument``, ``NotFound``,
``FailedPrecondition``, ``Unavailable`` and so on, or ``KmsError`` for everything.
"""

from __future__ import annotations

import grpc

REASON_KEY = "kms-error-reason"


class KmsError(Exception):
    """Base of every error this SDK raises. ``code`` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, reason: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or type(self).__name__
        self.retry_after = retry_after


class InvalidArgument(KmsError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidKeyId(InvalidArgument):
    pass


class InvalidEncryptionContext(InvalidArgument):
    pass


class InvalidCiphertext(InvalidArgument):
    """A ciphertext or wrapped key that is malformed, altered, truncated, or opened with the
    wrong encryption context. Deliberately does not say which. An altered wrapped key can also
    produce an error about the key version it names instead (PermissionDenied,
    KeyVersionNotUsable, ...): the absence of this error is no proof of integrity."""


class TruncatedCiphertext(InvalidCiphertext):
    """The ciphertext ended before its final frame: inside the header, on a frame boundary, or
    inside a frame's tag. Plaintext already written by ``decrypt_stream`` is incomplete."""


class EncryptionContextMismatch(InvalidCiphertext):
    """The caller's encryption context is not the one recorded in the ciphertext's header.
    Raised before the service is asked for the data key (the header's context is public)."""


class NotFound(KmsError):
    code = grpc.StatusCode.NOT_FOUND


class KeyNotFound(NotFound):
    pass


class KeyVersionNotFound(NotFound):
    pass


class AlreadyExists(KmsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class KeyAlreadyExists(AlreadyExists):
    pass


class FailedPrecondition(KmsError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class KeyVersionNotUsable(FailedPrecondition):
    pass


class KeyVersionDisabled(KeyVersionNotUsable):
    pass


class KeyVersionDestroyScheduled(KeyVersionNotUsable):
    pass


class KeyVersionDestroyed(KeyVersionNotUsable):
    pass


class KeyVersionBelowMinimum(KeyVersionNotUsable):
    pass


class KeyMaterialMissing(FailedPrecondition):
    pass


class PermissionDenied(KmsError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(KmsError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(KmsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(KmsError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(KmsError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(KmsError):
    code = grpc.StatusCode.CANCELLED


class InternalError(KmsError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[KmsError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        InternalError,
    )
}


def _subclasses(cls: type[KmsError]) -> list[type[KmsError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


_BY_REASON: dict[str, type[KmsError]] = {cls.__name__: cls for cls in _subclasses(KmsError)}


def error_for(code: grpc.StatusCode, message: str, reason: str | None = None) -> KmsError:
    """The exception for a status: the reason's class when it agrees with the code."""
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
    for key, value in metadata or ():
        if key == REASON_KEY:
            reason = value
        elif key == "retry-after-ms":
            try:
                retry_after = int(value) / 1000
            except ValueError:
                pass
    exc = error_for(code, message or code.name, reason)
    exc.retry_after = retry_after
    return exc
