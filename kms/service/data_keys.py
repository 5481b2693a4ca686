"""Data keys: generating, unwrapping and re-wrapping them under master keys in the HSM.

Data keys come from the operating system's CSPRNG by default (getrandom(2), buffered per thread
by kms.crypto.random): the plaintext is handed to the caller anyway, so the HSM boundary would
not protect it, and skipping the HSM's RNG saves a round trip per call. ``data_key_source="hsm"``
draws them from the HSM's RNG for deployments whose compliance regime requires it.

Who may move a data key where (ReWrap):

- onto the primary version of its own key: ``rewrap`` on that key;
- onto another key: ``rewrap`` and ``decrypt`` on the source key, and ``encrypt`` on the
  destination. Moving a data key is decrypting it from the source and encrypting it under the
  destination (whoever may decrypt under the destination can then read it), so it needs what
  both of those need; ``rewrap`` alone would let an identity that may decrypt only under its
  own key pull any other key's data keys over to it. Every check uses the request's context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from kms.crypto import wrapped_key
from kms.crypto.context import encode_context
from kms.crypto.random import random_bytes
from kms.crypto.wrapped_key import DATA_KEY_LENGTH, WrappedKey, WrappedKeyHeader
from kms.domain.keys import Key, KeyVersion, validate_key_id
from kms.domain.policy import Permission
from kms.errors import (
    BatchTooLarge,
    InvalidCiphertext,
    KeyNotFound,
    KeyVersionNotFound,
    KmsError,
    PermissionDenied,
    WrapLimitReached,
)
from kms.ports import MasterKeyStore
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.usage import UsageRecorder

MAX_BATCH = 1000
MAX_WRAPPED_KEY_BYTES = 1024
# Random 96-bit GCM IVs allow 2^32 encryptions under one key (NIST SP 800-38D). The scheduler
# rotates long before (KMS_MAX_WRAPS_PER_VERSION); this is the floor that holds if rotation
# keeps failing, with a margin for the counts other replicas have not written yet.
DEFAULT_HARD_MAX_WRAPS = 3 * 2**30

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class DataKey:
    key_id: str
    key_version: int
    wrapped_key: bytes
    plaintext: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Rewrapped:
    key_id: str
    key_version: int
    source_key_id: str
    source_key_version: int
    wrapped_key: bytes


@dataclass(frozen=True, slots=True)
class DataKeyRequest:
    key_id: str
    context: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class UnwrapRequest:
    wrapped_key: bytes = field(repr=False)
    context: Mapping[str, str] = field(repr=False)
    destination_key_id: str = ""


class DataKeyService:
    def __init__(
        self,
        cache: KeyCache,
        master_keys: MasterKeyStore,
        usage: UsageRecorder,
        authorizer: Authorizer,
        data_key_source: str = "os",
        *,
        hard_max_wraps: int = DEFAULT_HARD_MAX_WRAPS,
    ) -> None:
        self._authorizer = authorizer
        self._cache = cache
        self._master_keys = master_keys
        self._usage = usage
        self._hard_max_wraps = hard_max_wraps
        self._random: Callable[[int], bytes] = master_keys.random_bytes if data_key_source == "hsm" else random_bytes

    def generate_data_key(
        self, call: Call, key_id: str, context: Mapping[str, str], *, include_plaintext: bool = True
    ) -> DataKey:
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        encoded_context = encode_context(context)
        call.trail.note(context=encoded_context)
        self._authorizer.require(call, Permission.ENCRYPT, key_id, context)
        version = self._cache.get(key_id).primary_for_encrypt()
        call.trail.note(key_version=version.version)
        plaintext = self._random(DATA_KEY_LENGTH)
        wrapped = self._wrap(version, plaintext, encoded_context)
        return DataKey(key_id, version.version, wrapped, plaintext if include_plaintext else b"")

    def decrypt(self, call: Call, wrapped: bytes, context: Mapping[str, str]) -> DataKey:
        parsed, version, encoded_context = self._resolve(call, Permission.DECRYPT, wrapped, context)
        return self._open(parsed, version, encoded_context, wrapped)

    def rewrap(self, call: Call, wrapped: bytes, context: Mapping[str, str], destination_key_id: str = "") -> Rewrapped:
        """Moves the data key to the primary version of its key (or of ``destination_key_id``).

        The input is returned unchanged when it is already there, after it has been checked to
        open with ``context``: re-wrapping never vouches for a wrapped key it did not open. The
        data key is unwrapped and wrapped again inside the HSM adapter and never reaches this
        layer. Permissions: see the module docstring.
        """
        if destination_key_id:
            validate_key_id(destination_key_id)
        parsed, version, encoded_context = self._resolve(call, Permission.REWRAP, wrapped, context)
        moving = bool(destination_key_id) and destination_key_id != version.key_id
        if moving:
            call.trail.note(detail=f"to {destination_key_id}")
            self._authorizer.require(call, Permission.DECRYPT, version.key_id, context)
            self._authorizer.require(call, Permission.ENCRYPT, destination_key_id, context)
        destination = self._cache.get(destination_key_id or version.key_id).primary_for_encrypt()
        call.trail.note(detail=f"to {destination.key_id} v{destination.version}")
        if (destination.key_id, destination.version) == (version.key_id, version.version):
            self._open(parsed, version, encoded_context, wrapped)  # must still open
            result = wrapped
        else:
            self._check_wrap_budget(destination)
            header = WrappedKeyHeader(destination.key_id, destination.version)
            iv, sealed = self._master_keys.rewrap(
                version,
                parsed.iv,
                parsed.sealed,
                parsed.header.associated_data(encoded_context),
                destination,
                header.associated_data(encoded_context),
            )
            self._usage.unwrapped(version)
            self._usage.wrapped(destination)
            result = WrappedKey(header, iv, sealed).encode()
        return Rewrapped(destination.key_id, destination.version, version.key_id, version.version, result)

    def may_rewrap_somewhere(self, call: Call) -> None:
        """Raises PermissionDenied unless the caller holds ``rewrap`` on some key: a stream
        holds a server thread while open, so only identities that could use one may open one."""
        if not self._authorizer.holds_anywhere(call, Permission.REWRAP):
            raise PermissionDenied(f"{call.identity} lacks the rewrap permission on every key")

    # -- batches -----------------------------------------------------------------------

    def generate_data_keys(
        self, call: Call, requests: Sequence[DataKeyRequest], *, include_plaintext: bool = True
    ) -> list[DataKey | KmsError]:
        return _each(
            call,
            requests,
            lambda item_call, r: self.generate_data_key(
                item_call, r.key_id, r.context, include_plaintext=include_plaintext
            ),
        )

    def decrypt_many(self, call: Call, requests: Sequence[UnwrapRequest]) -> list[DataKey | KmsError]:
        return _each(call, requests, lambda item_call, r: self.decrypt(item_call, r.wrapped_key, r.context))

    def rewrap_many(self, call: Call, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
        return _each(
            call, requests, lambda item_call, r: self.rewrap(item_call, r.wrapped_key, r.context, r.destination_key_id)
        )

    # -- internals ---------------------------------------------------------------------

    def _open(self, parsed: WrappedKey, version: KeyVersion, encoded_context: bytes, wrapped: bytes) -> DataKey:
        plaintext = self._master_keys.decrypt(
            version, parsed.iv, parsed.sealed, parsed.header.associated_data(encoded_context)
        )
        if len(plaintext) != DATA_KEY_LENGTH:
            raise InvalidCiphertext()
        self._usage.unwrapped(version)
        return DataKey(version.key_id, version.version, wrapped, plaintext)

    def _wrap(self, version: KeyVersion, plaintext: bytes, encoded_context: bytes) -> bytes:
        self._check_wrap_budget(version)
        header = WrappedKeyHeader(version.key_id, version.version)
        iv, sealed = self._master_keys.encrypt(version, plaintext, header.associated_data(encoded_context))
        self._usage.wrapped(version)
        return WrappedKey(header, iv, sealed).encode()

    def _check_wrap_budget(self, version: KeyVersion) -> None:
        """Reserves the wrap before it happens (so concurrent calls cannot all pass one check)."""
        refused_at = self._usage.reserve_wrap(version, self._hard_max_wraps)
        if refused_at is not None:
            raise WrapLimitReached(version.key_id, version.version, refused_at, self._hard_max_wraps)

    def _resolve(
        self, call: Call, permission: Permission, wrapped: bytes, context: Mapping[str, str]
    ) -> tuple[WrappedKey, KeyVersion, bytes]:
        """The parsed wrapped key and the version that must open it.

        The permission is checked on the key the wrapped key names before that key is looked
        up, so a denial never says whether it exists. A wrapped key naming a key or version
        that does not exist is reported exactly like a corrupted one, so flipping bits in the
        header learns nothing.
        """
        if len(wrapped) > MAX_WRAPPED_KEY_BYTES:
            raise InvalidCiphertext()
        parsed = wrapped_key.parse(wrapped)
        call.trail.note(key_id=parsed.header.key_id, key_version=parsed.header.key_version)
        encoded_context = encode_context(context)
        call.trail.note(context=encoded_context)
        self._authorizer.require(call, permission, parsed.header.key_id, context)
        try:
            key: Key = self._cache.get(parsed.header.key_id)
            version = key.version_for_decrypt(parsed.header.key_version)
        except (KeyNotFound, KeyVersionNotFound):
            raise InvalidCiphertext() from None
        return parsed, version, encoded_context


def _each(call: Call, items: Sequence[Item], operation: Callable[[Call, Item], Result]) -> list[Result | KmsError]:
    """Runs ``operation`` per item, each with a trail of its own that becomes the item's audit
    record; an item's failure becomes its result, never the batch's."""
    if len(items) > MAX_BATCH:
        raise BatchTooLarge(f"a batch holds at most {MAX_BATCH} items")
    results: list[Result | KmsError] = []
    for item in items:
        call.check_deadline()
        item_call = call.for_item()
        try:
            results.append(operation(item_call, item))
        except KmsError as error:
            results.append(error)
            call.trail.add_item(item_call.trail, error)
        else:
            call.trail.add_item(item_call.trail, None)
    return results
