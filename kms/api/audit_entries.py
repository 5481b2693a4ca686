"""What the audit log records of each call, read off the request and its outcome.

One entry per call; batches and streams get one entry per item (``item`` = its position), so
every data key issued or opened has its own record. Nothing secret is recorded: for the
encryption context only its SHA-256 digest (kms.domain.audit.context_digest).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc

from kms.crypto import wrapped_key
from kms.crypto.context import encode_context
from kms.domain.audit import AuditEntry, clipped, context_digest
from kms.errors import InvalidCiphertext, KmsError
from kms.service.calls import Call

Fields = dict[str, Any]

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _digest(request: Any) -> str:
    try:
        return context_digest(encode_context(request.encryption_context))
    except KmsError:
        return ""


def _named_by(blob: bytes) -> Fields:
    try:
        header = wrapped_key.parse(blob).header
    except InvalidCiphertext:
        return {}
    return {"key_id": header.key_id, "key_version": header.key_version}


def _data_key(request: Any, response: Any) -> Fields:
    return {"key_id": request.key_id, "key_version": response.key_version if response else 0,
            "context_digest": _digest(request)}


def _decrypt(request: Any, response: Any) -> Fields:
    return {**_named_by(request.wrapped_key), "context_digest": _digest(request)}


def _rewrap(request: Any, response: Any) -> Fields:
    fields = {**_named_by(request.wrapped_key), "context_digest": _digest(request)}
    if response is not None:
        fields["detail"] = f"to {response.key_id} v{response.key_version}"
    elif request.destination_key_id:
        fields["detail"] = f"to {request.destination_key_id}"
    return fields


def _key(request: Any, response: Any) -> Fields:
    return {"key_id": request.key_id, "key_version": response.primary_version if response else 0}


def _version(request: Any, response: Any) -> Fields:
    return {"key_id": request.key_id, "key_version": request.version}


def _update(request: Any, response: Any) -> Fields:
    return {"key_id": request.key_id, "detail": "update " + ",".join(sorted(request.update_mask.paths))}


def _grant(request: Any, response: Any) -> Fields:
    constraint = " when " + ",".join(f"{k}={v}" for k, v in sorted(request.encryption_context_equals.items())) \
        if request.encryption_context_equals else ""
    detail = f"{request.principal} {','.join(request.permissions)} on {request.resource}{constraint}"
    if response is not None:
        detail += f" as {response.grant_id}"
    return {"detail": detail[:512]}


_PER_METHOD: dict[str, Callable[[Any, Any], Fields]] = {
    "GenerateDataKey": _data_key,
    "GenerateDataKeyWithoutPlaintext": _data_key,
    "Decrypt": _decrypt,
    "ReWrap": _rewrap,
    "CreateKey": _key,
    "RotateKey": _key,
    "GetKey": lambda request, response: {"key_id": request.key_id},
    "UpdateKey": _update,
    "DisableKeyVersion": _version,
    "EnableKeyVersion": _version,
    "ScheduleKeyVersionDestruction": _version,
    "CancelKeyVersionDestruction": _version,
    "RetireKeyVersion": _version,
    "GrantPermissions": _grant,
    "RevokeGrant": lambda request, response: {"detail": f"grant {request.grant_id}"},
    "AddGroupMember": lambda request, response: {"detail": f"{request.identity} into group {request.group}"},
    "RemoveGroupMember": lambda request, response: {"detail": f"{request.identity} out of group {request.group}"},
    "ListAuditEvents": lambda request, response: {"key_id": request.key_id},
}

# Batch method -> (the method each item is, the item result's field holding a success)
_BATCHES = {
    "BatchGenerateDataKey": ("GenerateDataKey", "data_key"),
    "BatchDecrypt": ("Decrypt", "data_key"),
    "BatchReWrap": ("ReWrap", "rewrapped"),
    "StreamReWrap": ("ReWrap", "rewrapped"),  # per message, as BatchReWrap
}


class AuditEntries:
    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now

    def for_call(
        self, method: str, call: Call, request: Any, response: Any, error: KmsError | None, first_item: int = 0
    ) -> list[AuditEntry]:
        """The call's records; a batch (or a stream message, whose items are numbered from
        ``first_item``) has one per item."""
        batch = _BATCHES.get(method)
        if batch is not None and error is None and request is not None and response is not None:
            item_method, success = batch
            if len(response.results) != len(request.requests):  # a message refused as a whole
                failed = response.results[0]
                return [self.for_item(method, item_method, call, first_item, None, failed, success)]
            return [
                self.for_item(method, item_method, call, first_item + index, item, result, success)
                for index, (item, result) in enumerate(zip(request.requests, response.results, strict=True))
            ]
        fields = _safe_fields(method, request, response if error is None else None)
        return [self._entry(call, method, error.code if error else "OK", error.reason if error else "", fields)]

    def for_item(
        self, method: str, item_method: str, call: Call, index: int, request: Any, result: Any, success: str
    ) -> AuditEntry:
        """The record of one item of a batch or stream; ``result`` holds ``success`` or an ItemError
        (or is a KmsError for an item that could not even be parsed)."""
        if isinstance(result, KmsError):
            return self._entry(call, method, result.code, result.reason, {}, index)
        failed = result.WhichOneof("outcome") == "error"
        fields = _safe_fields(item_method, request, None if failed else getattr(result, success))
        outcome = _CODE_NAMES.get(result.error.code, "UNKNOWN") if failed else "OK"
        return self._entry(call, method, outcome, result.error.reason if failed else "", fields, index)

    def _entry(self, call: Call, method: str, outcome: str, reason: str, fields: Fields, item: int = -1) -> AuditEntry:
        return clipped(AuditEntry(
            time=self._now(),
            identity=call.identity,
            rpc=method,
            outcome=outcome,
            reason=reason,
            request_id=call.request_id,
            peer=call.peer[:256],
            item=item,
            **fields,
        ))


def _safe_fields(method: str, request: Any, response: Any) -> Fields:
    extract = _PER_METHOD.get(method)
    if extract is None or request is None:
        return {}
    return extract(request, response)

