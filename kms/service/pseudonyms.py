"""Pseudonymization: deterministic tokens of values, made in the HSM under a PSEUDONYMIZE key.

A token is HMAC-SHA256, inside the HSM, under one version of the key, of the value bound to the
key id, the version and the caller's context (kms.crypto.pseudonym; docs/pseudonymization.md).
So the same value gives the same token for the same version and context, unrelated tokens under
another context, and a token names the version that made it: callers that join on tokens across
a rotation pin that version with ``key_version``.

Who may: the ``pseudonymize`` permission on the key, under the request's context. It grants
nothing else, and nothing else grants it: a token never gives back its value, and no permission
of an ENCRYPT_DECRYPT key reaches a PSEUDONYMIZE key (or the other way round, WrongKeyPurpose).

Cost: one quota token per value; one HSM key lookup per call, then C_SignInit and C_Sign per
value on one session. Each value succeeds or fails on its own (too long, or its checksum does
not match); the audit log gets one record per call, with the count, never a value or a token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kms.crypto import checksums, pseudonym
from kms.crypto.context import encode_context
from kms.domain.keys import validate_key_id
from kms.domain.policy import Permission
from kms.errors import BatchTooLarge, ChecksumMismatch, InvalidArgument, KmsError, ValueTooLong
from kms.ports import MasterKeyCipher
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.usage import UsageRecorder

MAX_VALUES = 1000
MAX_VALUE_BYTES = pseudonym.MAX_VALUE_BYTES


@dataclass(frozen=True, slots=True)
class Pseudonyms:
    """The outcome of one call: the version that made the tokens, and per value (in order) its
    token or the error that value alone met."""

    key_id: str
    key_version: int
    results: list[str | KmsError]


class PseudonymService:
    def __init__(
        self, cache: KeyCache, master_keys: MasterKeyCipher, usage: UsageRecorder, authorizer: Authorizer
    ) -> None:
        self._cache = cache
        self._master_keys = master_keys
        self._usage = usage
        self._authorizer = authorizer

    def pseudonymize(
        self,
        call: Call,
        key_id: str,
        values: Sequence[bytes],
        context: Mapping[str, str],
        *,
        key_version: int | None = None,
        values_crc32c: Sequence[int] = (),
    ) -> Pseudonyms:
        """Tokens of ``values`` (at most 1000, each at most 4096 bytes) under ``key_id``'s primary
        version, or ``key_version`` (which must be ENABLED and not below the key's floor).
        ``values_crc32c`` is empty or holds the caller's CRC32C of each value: a value whose
        checksum does not match fails alone with ChecksumMismatch and is never used.

        Raises, for the call as a whole: InvalidKeyId, InvalidEncryptionContext, BatchTooLarge,
        InvalidArgument (checksums not one per value), PermissionDenied, RateLimited, KeyNotFound,
        WrongKeyPurpose, KeyVersionNotFound, KeyVersionNotUsable and the HSM's errors.
        """
        call.trail.note(key_id=key_id, detail=f"{len(values)} values")
        validate_key_id(key_id)
        encoded_context = encode_context(context)
        call.trail.note(context=encoded_context)
        if len(values) > MAX_VALUES:
            raise BatchTooLarge(f"a Pseudonymize call takes at most {MAX_VALUES} values")
        if values_crc32c and len(values_crc32c) != len(values):
            raise InvalidArgument("values_crc32c must be empty or hold one checksum per value")
        self._authorizer.require(call, Permission.PSEUDONYMIZE, key_id, context, uses=max(1, len(values)))
        version = self._cache.get(key_id).version_for_pseudonymize(key_version or None)
        call.trail.note(key_version=version.version)
        refusals = _refusals(values, values_crc32c)
        prefix = pseudonym.message_prefix(key_id, version.version, encoded_context)
        accepted = [value for index, value in enumerate(values) if index not in refusals] if refusals else values
        call.check_deadline()
        macs = self._master_keys.hmac_many(version, [pseudonym.message(prefix, value) for value in accepted])
        self._usage.used(version)
        results: list[str | KmsError] = list(pseudonym.tokens(version.version, macs))
        if refusals:
            tokens = iter(results)
            results = [refusals.get(index) or next(tokens) for index in range(len(values))]
            call.trail.note(detail=f"{len(values)} values, {len(refusals)} refused")
        return Pseudonyms(key_id, version.version, results)


def _refusals(values: Sequence[bytes], checksums_given: Sequence[int]) -> dict[int, KmsError]:
    """The values that fail on their own, by position: too long, or altered in transit."""
    refused: dict[int, KmsError] = {}
    for index, value in enumerate(values):
        if len(value) > MAX_VALUE_BYTES:
            refused[index] = ValueTooLong(MAX_VALUE_BYTES)
        elif checksums_given and not checksums.matches(value, checksums_given[index]):
            refused[index] = ChecksumMismatch(f"values[{index}]")
    return refused
