"""Data keys of keys with a ``subject_field``: wrapped by their data subject's key, in software
(the wrapped key format 2, kms.crypto.subject_key), not by the master key in the HSM.

The subject is the encryption-context entry the key names; a call without it is SubjectMissing
(INVALID_ARGUMENT), one for an erased subject SubjectErased (FAILED_PRECONDITION). Each call's
audit record carries the subject's keyed digest in its detail, so that an officer can find every
use of a subject's data, and the erasure receipt, without the log ever holding the subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kms.crypto import checksums, subject_key
from kms.crypto.context import encode_context
from kms.domain.keys import Key
from kms.domain.policy import Permission
from kms.errors import ChecksumMismatch, InvalidCiphertext, KeyNotFound, SubjectMissing
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.subjects import SubjectKeys

MAX_WRAPPED_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Opened:
    """A format 2 wrapped key opened: its key, the version that wraps its subject's key now, and
    the data key."""

    key: Key
    version: int
    encoded_context: bytes = field(repr=False)
    plaintext: bytes = field(repr=False)


class SubjectDataKeys:
    def __init__(self, cache: KeyCache, subjects: SubjectKeys, authorizer: Authorizer) -> None:
        self._cache = cache
        self._subjects = subjects
        self._authorizer = authorizer

    @staticmethod
    def is_format(wrapped: bytes) -> bool:
        return subject_key.format_of(wrapped) == subject_key.FORMAT_VERSION

    def wrap(
        self, call: Call, key: Key, context: Mapping[str, str], encoded_context: bytes, data_key: bytes
    ) -> tuple[int, bytes]:
        """(version wrapping the subject's key, format 2 wrapped key) of ``data_key`` for the
        subject ``context`` names. The key's primary version must be usable (checked by the
        caller); a new subject's key is wrapped by it."""
        digest = self._digest(call, key, context)
        use = self._subjects.for_encrypt(key, digest)
        return use.version, subject_key.wrap_data_key(use.secret, key.key_id, data_key, encoded_context)

    def open(
        self,
        call: Call,
        permission: Permission,
        wrapped: bytes,
        context: Mapping[str, str],
        wrapped_key_crc32c: int | None = None,
    ) -> Opened:
        """Opens a format 2 wrapped key, checking ``permission`` on the key it names first (as
        for format 1: a denial never says whether the key exists, and a wrapped key naming an
        unknown key, or a key without subjects, is InvalidCiphertext)."""
        if wrapped_key_crc32c is not None and not checksums.matches(wrapped, wrapped_key_crc32c):
            raise ChecksumMismatch("wrapped_key")
        if len(wrapped) > MAX_WRAPPED_KEY_BYTES:
            raise InvalidCiphertext()
        parsed = subject_key.parse(wrapped)
        call.trail.note(key_id=parsed.key_id)
        encoded_context = encode_context(context)
        call.trail.note(context=encoded_context)
        self._authorizer.require(call, permission, parsed.key_id, context)
        try:
            key = self._cache.get(parsed.key_id)
        except KeyNotFound:
            raise InvalidCiphertext() from None
        if not key.subject_field:
            raise InvalidCiphertext()
        use = self._subjects.for_decrypt(key, self._digest(call, key, context))
        call.trail.note(key_version=use.version)
        plaintext = subject_key.open_data_key(use.secret, parsed, encoded_context)
        return Opened(key, use.version, encoded_context, plaintext)

    def _digest(self, call: Call, key: Key, context: Mapping[str, str]) -> str:
        subject = context.get(key.subject_field)
        if not subject:
            raise SubjectMissing(key.key_id, key.subject_field)
        digest = self._subjects.digest(key.key_id, subject)
        call.trail.note(detail=f"subject {digest}")
        return digest
