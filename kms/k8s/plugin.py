"""The Kubernetes KMS v2 plugin: the API server's secret, envelope-encrypted through this KMS.

kube-apiserver hands its KMS v2 plugin a small secret (a 32-byte DEK seed from which it derives
a key per object) and stores what the plugin returns in etcd, in the clear, beside the data.
This plugin seals that secret with the SDK's envelope encryption (``KmsClient.encrypt``,
docs/envelope-format.md) under a fresh data key of one KMS key, and opens it again
(``KmsClient.decrypt``). The cryptography is the SDK's; this module holds the API server's
contract (k8s.io/kms/apis/v2, proto/k8s/kms/apis/v2/api.proto):

Encrypt(plaintext, uid) -> (ciphertext, key_id, no annotations)
    ``ciphertext`` is an envelope ciphertext of ``plaintext`` under key KEY, bound to the
    plugin's encryption context, at most 1024 bytes (the API server's limit), so a plaintext
    is 1 to ``PluginConfig.max_plaintext`` bytes (about 700 with a short context and key id;
    the API server sends 32). Every call uses a fresh data key, so equal plaintexts give
    different ciphertexts. ``key_id`` is "KEY:vN" where N is the version that wrapped this
    data key, read from the wrapped key itself: after a rotation it changes, and the API
    server then takes a new seed and re-encrypts its data as it is written.
Decrypt(ciphertext, uid, key_id, annotations) -> plaintext
    The ciphertext alone decides: it names its key and version, and it opens only with this
    plugin's encryption context, through the KMS (which checks the plugin may decrypt with
    that key). ``key_id`` and ``annotations`` are informational and ignored. Any alteration,
    truncation, or a ciphertext made under another context (another cluster, or another
    application using the same key) is INVALID_ARGUMENT: never a wrong plaintext.
Status() -> ("v2", "ok" or a reason, key_id)
    "ok" only while the KMS issues a data key of KEY to this plugin under its context
    (``KmsPlugin._probe``; kms.k8s.status caches the answer for ``status_max_age``).

The encryption context is ``{"purpose": "kubernetes-kms-v2"}`` plus the operator's fixed
entries (``--context cluster=prod-eu-1``). The purpose entry keeps the plugin's ciphertexts
apart from every other use of the same key; the operator's entries keep clusters apart; a
grant's ``encryption_context_equals`` confines the plugin's identity to exactly this context.
The request ``uid`` is a trace id that differs between the Encrypt and the Decrypt of the same
secret: it is logged, never bound. The context is fixed for the life of the data: a ciphertext
opens only with the context it was made under.

Errors: the SDK's exceptions (``kms_client.KmsError``) carry their gRPC status code; the
servicer returns it, with one fixed message for every integrity failure, and INTERNAL without
details for anything unexpected. Nothing here logs, formats or repr()s a plaintext.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import NoReturn

import grpc

from kms.crypto import wrapped_key
from kms.crypto.context import encode_context
from kms.domain.keys import validate_key_id
from kms.errors import InvalidCiphertext as MalformedWrappedKey
from kms.errors import InvalidEncryptionContext
from kms.k8s.status import KeyStatus, StatusReport, key_id_for
from kms_client import (
    DEFAULT_FRAME_SIZE,
    InvalidArgument,
    InvalidCiphertext,
    KmsClient,
    KmsError,
    parse_header_bytes,
)
from kms_client.envelope import FRAME_TAG_BYTES, Header
from kms_client.errors import Internal
from kms_proto.k8s.kms.apis.v2 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

API_VERSION = "v2"
# The API server's limits on what a plugin returns (k8s.io/apiserver kmsv2 validation).
MAX_CIPHERTEXT_BYTES = 1024
# What the API server encrypts: a 32-byte DEK seed (or, for old data, a 32-byte AES key).
API_SERVER_SECRET_BYTES = 32
PURPOSE_KEY = "purpose"
PURPOSE = "kubernetes-kms-v2"
CIPHERTEXT_REFUSED = "ciphertext is invalid, altered, or not made under this plugin's key and encryption context"
_MAX_ECHOED = 200  # characters of a KMS error message passed on to the API server
_MAX_UID = 64  # characters of a request uid written to the log


@dataclass(frozen=True)
class PluginConfig:
    """What the plugin encrypts under, validated on construction.

    ``key_id``: the KMS key (1-64 of [A-Za-z0-9_-]). ``context``: the operator's fixed
    encryption context entries, without the reserved "purpose". ``kms_timeout``: seconds for
    each call to the KMS, retries included (keep it below the API server's timeout, 3 s by
    default). ``status_max_age``: seconds a Status probe is reused.

    Raises InvalidKeyId or InvalidEncryptionContext (kms.errors), naming the broken rule: a
    bad key id, a context over the KMS's limits or using "purpose", or a key id and context
    so long that the API server's 32 bytes no longer fit in a 1024-byte ciphertext; ValueError
    for a timeout that is not positive or a negative max age.
    """

    key_id: str
    context: Mapping[str, str] = field(default_factory=dict)
    kms_timeout: float = 2.0
    status_max_age: float = 5.0

    def __post_init__(self) -> None:
        validate_key_id(self.key_id)
        if PURPOSE_KEY in self.context:
            raise InvalidEncryptionContext(f"the context entry {PURPOSE_KEY!r} is reserved for the plugin")
        object.__setattr__(self, "context", MappingProxyType(dict(self.context)))
        encode_context(self.encryption_context)  # the KMS's limits
        if self.max_plaintext < API_SERVER_SECRET_BYTES:
            raise InvalidEncryptionContext(
                f"with this key id and encryption context a ciphertext of {API_SERVER_SECRET_BYTES} bytes of "
                f"plaintext would exceed the API server's {MAX_CIPHERTEXT_BYTES} bytes: shorten the context"
            )
        if self.kms_timeout <= 0 or self.status_max_age < 0:
            raise ValueError("kms_timeout must be positive and status_max_age not negative")

    @cached_property
    def encryption_context(self) -> Mapping[str, str]:
        """The context every ciphertext is bound to: the operator's entries and the purpose."""
        return MappingProxyType({**self.context, PURPOSE_KEY: PURPOSE})

    @cached_property
    def max_plaintext(self) -> int:
        """The longest plaintext whose ciphertext stays within MAX_CIPHERTEXT_BYTES."""
        return MAX_CIPHERTEXT_BYTES - _ciphertext_length(self.key_id, encode_context(self.encryption_context), 0)


def _ciphertext_length(key_id: str, encoded_context: bytes, plaintext_length: int) -> int:
    """The envelope's length for a plaintext of one frame, from the two formats' own modules:
    the envelope header around a version-1 wrapped key, then one final frame."""
    wrapped_length = (
        len(wrapped_key.WrappedKeyHeader(key_id, 1).encode()) + wrapped_key.IV_LENGTH + wrapped_key.SEALED_LENGTH
    )
    header = Header(
        key_id=key_id,
        context={},
        encoded_context=encoded_context,
        frame_size=DEFAULT_FRAME_SIZE,
        salt=b"",
        commitment=b"",
        header_tag=b"",
        wrapped_key=bytes(wrapped_length),
    )
    return header.length + plaintext_length + FRAME_TAG_BYTES


@dataclass(frozen=True)
class Sealed:
    """An Encrypt result: the ciphertext, and the key_id naming the version that wrapped it."""

    ciphertext: bytes = field(repr=False)
    key_id: str


def open_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to the KMS (TLS with ``credentials``, else plaintext, for loopback only).

    Reconnection backs off to at most 5 s (gRPC's default is 120 s), so that Status turns
    "ok" again within seconds of the KMS coming back after a long outage.
    """
    options = [("grpc.max_reconnect_backoff_ms", 5000), ("grpc.initial_reconnect_backoff_ms", 500)]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


class KmsPlugin:
    """The plugin's three operations over a channel to the KMS (which the caller owns)."""

    def __init__(self, config: PluginConfig, channel: grpc.Channel) -> None:
        self.config = config
        self._context = config.encryption_context
        self._client = KmsClient(channel=channel, timeout=config.kms_timeout)
        self.status = KeyStatus(config.key_id, self._probe, max_age=config.status_max_age)

    def encrypt(self, plaintext: bytes) -> Sealed:
        """Seals ``plaintext`` under a fresh data key of the configured key.

        Raises InvalidArgument for an empty or too long plaintext, else what
        ``KmsClient.encrypt`` raises (KeyNotFound, PermissionDenied, Unavailable, ...).
        """
        if not 1 <= len(plaintext) <= self.config.max_plaintext:
            raise InvalidArgument(
                f"plaintext must be 1 to {self.config.max_plaintext} bytes (the API server's "
                f"{MAX_CIPHERTEXT_BYTES}-byte ciphertext limit), not {len(plaintext)}"
            )
        ciphertext = self._client.encrypt(plaintext, key_id=self.config.key_id, context=self._context)
        version = self._wrapping_version(ciphertext)
        if len(ciphertext) > MAX_CIPHERTEXT_BYTES:  # only if a format outgrew _ciphertext_length
            raise Internal(f"the ciphertext would exceed the API server's {MAX_CIPHERTEXT_BYTES} bytes")
        self.status.observe(version)
        return Sealed(ciphertext, key_id_for(self.config.key_id, version))

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext ``encrypt`` sealed in ``ciphertext``.

        Raises InvalidCiphertext (or a subclass) for anything that is not an unaltered
        ciphertext of this plugin's encryption context, else what ``KmsClient.decrypt`` raises
        about the key version it names (PermissionDenied, KeyVersionNotUsable, ...).
        """
        if not 1 <= len(ciphertext) <= MAX_CIPHERTEXT_BYTES:
            raise InvalidCiphertext(CIPHERTEXT_REFUSED)
        return self._client.decrypt(ciphertext, context=self._context)

    def report(self) -> StatusReport:
        return self.status.report()

    def _wrapping_version(self, ciphertext: bytes) -> int:
        """The key version named by the wrapped key in the header of a ciphertext just made."""
        try:
            wrapped = wrapped_key.parse(parse_header_bytes(ciphertext).wrapped_key)
        except (KmsError, MalformedWrappedKey):
            raise Internal("the KMS returned a wrapped key in a format this plugin does not read") from None
        if wrapped.header.key_id != self.config.key_id:
            raise Internal("the KMS wrapped the data key under another key")
        return wrapped.header.key_version

    def _probe(self) -> int:
        """The key's primary version, learnt from the smallest call that exercises Encrypt's
        whole path: GenerateDataKeyWithoutPlaintext under this plugin's context reaches the KMS
        over its TLS with the plugin's identity, passes its encrypt grant for exactly this
        context, and has the HSM wrap under the primary version. The wrapped key is discarded;
        no plaintext key is issued. Raises KmsError when any of it fails."""
        issued = self._client.generate_data_key_without_plaintext(
            self.config.key_id, self._context, timeout=self.config.kms_timeout
        )
        if issued.key_id != self.config.key_id:
            raise Internal("the KMS answered for another key")
        return issued.key_version


class KeyManagementServicer(api_pb2_grpc.KeyManagementServiceServicer):
    """The upstream service over a KmsPlugin: convert, call, convert, map errors."""

    def __init__(self, plugin: KmsPlugin) -> None:
        self._plugin = plugin

    def Status(self, request: api_pb2.StatusRequest, context: grpc.ServicerContext) -> api_pb2.StatusResponse:
        try:
            report = self._plugin.report()
        except Exception:  # noqa: BLE001 - a bug: gRPC would send the exception's text to the caller
            _fail(context, "Status", "")
        return api_pb2.StatusResponse(version=API_VERSION, healthz=report.healthz, key_id=report.key_id)

    def Encrypt(self, request: api_pb2.EncryptRequest, context: grpc.ServicerContext) -> api_pb2.EncryptResponse:
        try:
            sealed = self._plugin.encrypt(request.plaintext)
        except KmsError as error:
            _refuse(context, "Encrypt", request.uid, error)
        except Exception:  # noqa: BLE001 - as in Status
            _fail(context, "Encrypt", request.uid)
        log.debug(
            "k8s encrypt",
            extra={
                "fields": {
                    "uid": request.uid[:_MAX_UID],
                    "key_id": sealed.key_id,
                    "ciphertext_bytes": len(sealed.ciphertext),
                }
            },
        )
        return api_pb2.EncryptResponse(ciphertext=sealed.ciphertext, key_id=sealed.key_id)

    def Decrypt(self, request: api_pb2.DecryptRequest, context: grpc.ServicerContext) -> api_pb2.DecryptResponse:
        try:
            plaintext = self._plugin.decrypt(request.ciphertext)
        except KmsError as error:
            _refuse(context, "Decrypt", request.uid, error)
        except Exception:  # noqa: BLE001 - as in Status
            _fail(context, "Decrypt", request.uid)
        log.debug("k8s decrypt", extra={"fields": {"uid": request.uid[:_MAX_UID], "key_id": request.key_id[:_MAX_UID]}})
        return api_pb2.DecryptResponse(plaintext=plaintext)


# Codes passed on as the KMS or the SDK gave them; any other becomes INTERNAL.
_PASSED_ON = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def status_for(error: KmsError) -> tuple[grpc.StatusCode, str]:
    """The status the API server gets for ``error``: every integrity failure is one
    INVALID_ARGUMENT with one message; otherwise the error's own code and reason."""
    if isinstance(error, InvalidCiphertext):
        return grpc.StatusCode.INVALID_ARGUMENT, CIPHERTEXT_REFUSED
    code = error.code if error.code in _PASSED_ON else grpc.StatusCode.INTERNAL
    return code, f"{error.reason}: {error.message[:_MAX_ECHOED]}"


def _refuse(context: grpc.ServicerContext, method: str, uid: str, error: KmsError) -> NoReturn:
    code, message = status_for(error)
    log.warning(
        f"k8s {method.lower()} failed",
        extra={"fields": {"uid": uid[:_MAX_UID], "code": code.name, "reason": error.reason}},
    )
    context.abort(code, message)
    raise AssertionError("abort returned")


def _fail(context: grpc.ServicerContext, method: str, uid: str) -> NoReturn:
    # Only the exception's type and where it was raised: its text could quote a value.
    error = sys.exc_info()[1]
    frames = traceback.extract_tb(error.__traceback__) if error is not None else []
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    log.error(
        f"k8s {method.lower()} failed unexpectedly",
        extra={"fields": {"uid": uid[:_MAX_UID], "error": type(error).__name__, "at": where}},
    )
    context.abort(grpc.StatusCode.INTERNAL, "internal error in the KMS plugin")
    raise AssertionError("abort returned")


__all__ = [
    "API_VERSION",
    "CIPHERTEXT_REFUSED",
    "MAX_CIPHERTEXT_BYTES",
    "KeyManagementServicer",
    "KmsPlugin",
    "PluginConfig",
    "Sealed",
    "open_channel",
    "status_for",
]
