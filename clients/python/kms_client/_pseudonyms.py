"""Pseudonymization methods of KmsClient (docs/pseudonymization.md). Mixed into KmsClient.

A token is made by the service, in its HSM, under a PSEUDONYMIZE key: the same value gives the
same token for the same key version and context, and an unrelated one under another context.
A token names its version ("kps1.<version>.<MAC>"): to keep joining tokens made before a
rotation, pin that version (``key_version=``, or ``token_version(token)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc

from kms_client import _checksums as checks
from kms_client.errors import ChecksumMismatch, KmsError, ResponseChecksumMismatch, error_for
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc

MAX_VALUES_PER_CALL = 1000
_TOKEN = re.compile(r"kps1\.([1-9][0-9]{0,9})\.[A-Za-z0-9_-]{43}")


def token_version(token: str) -> int:
    """The key version that made ``token``; ValueError for text that is not a v1 token."""
    found = _TOKEN.fullmatch(token)
    if found is None:
        raise ValueError("not a kps1 token")
    return int(found.group(1))


class PseudonymizeMixin:
    """Needs from the class it is mixed into: ``_stub``, ``_call`` and ``_verify_checksums``."""

    _stub: kms_pb2_grpc.KeyManagementServiceStub
    _verify_checksums: bool

    def _call(self, method: Any, request: Any, timeout: float | None, retry: Any = None, check: Any = None) -> Any: ...

    def pseudonymize(
        self,
        values: Iterable[str | bytes],
        *,
        key_id: str,
        context: Mapping[str, str] | None = None,
        key_version: int | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """One token per value, in order. ``str`` values are taken as their UTF-8 bytes; each
        value is at most 4096 bytes. Any number of values: they go in calls of 1000, all under
        the version the first call used (the key's primary, or ``key_version``).

        Raises the first failing value's error (ValueTooLong, ChecksumMismatch after one
        retry...), or the call's: WrongKeyPurpose (not a PSEUDONYMIZE key), PermissionDenied
        (no ``pseudonymize`` permission under ``context``), KeyVersionNotUsable, and as any call.
        ``pseudonymize_results`` gives per-value outcomes instead."""
        results = self.pseudonymize_results(
            values, key_id=key_id, context=context, key_version=key_version, timeout=timeout
        )
        for result in results:
            if isinstance(result, KmsError):
                raise result
        return results  # type: ignore[return-value]  # no error among them

    def pseudonymize_results(
        self,
        values: Iterable[str | bytes],
        *,
        key_id: str,
        context: Mapping[str, str] | None = None,
        key_version: int | None = None,
        timeout: float | None = None,
    ) -> list[str | KmsError]:
        """As ``pseudonymize``, but each value's outcome is its token or its own error; errors
        of a call as a whole are raised."""
        encoded = [value.encode("utf-8") if isinstance(value, str) else bytes(value) for value in values]
        results: list[str | KmsError] = []
        version = key_version or 0
        for start in range(0, len(encoded), MAX_VALUES_PER_CALL):
            used, outcomes = self._pseudonymize_call(
                encoded[start : start + MAX_VALUES_PER_CALL], key_id, context, version, timeout
            )
            version = version or used
            results += outcomes
        return results

    def _pseudonymize_call(
        self,
        values: Sequence[bytes],
        key_id: str,
        context: Mapping[str, str] | None,
        version: int,
        timeout: float | None,
    ) -> tuple[int, list[str | KmsError]]:
        """(version used, outcomes). Values altered in transit, either way, are sent once more
        (under the version the call used, so that all tokens are of one version)."""
        used, outcomes = self._send(values, key_id, context, version, timeout)
        again = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, ChecksumMismatch)]
        if again:
            _, retried = self._send([values[i] for i in again], key_id, context, used, timeout)
            for index, outcome in zip(again, retried, strict=True):
                outcomes[index] = outcome
        return used, outcomes

    def _send(
        self,
        values: Sequence[bytes],
        key_id: str,
        context: Mapping[str, str] | None,
        version: int,
        timeout: float | None,
    ) -> tuple[int, list[str | KmsError]]:
        request = pb.PseudonymizeRequest(
            key_id=key_id,
            values=values,
            context=context or {},
            key_version=version,
            values_crc32c=[checks.crc32c(v) for v in values] if self._verify_checksums else [],
        )
        response = self._call(self._stub.Pseudonymize, request, timeout)
        if len(response.results) != len(values):
            raise ResponseChecksumMismatch("the response does not hold one result per value")
        return response.key_version, [self._token_outcome(result) for result in response.results]

    def _token_outcome(self, result: pb.PseudonymizeResult) -> str | KmsError:
        if result.HasField("error"):
            return _item_error(result.error)
        if self._verify_checksums:
            try:
                checks.check_token(result)
            except ResponseChecksumMismatch as error:
                return error
        return result.token


def _item_error(error: pb.ItemError) -> KmsError:
    code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
    return error_for(code, error.message, error.reason)
