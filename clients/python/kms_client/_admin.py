"""Administration methods of KmsClient: key settings and version lifecycle, grants and groups,
the audit log. Mixed into KmsClient (see client.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from kms_client._retry import NO_RETRY
from kms_client.errors import from_rpc_error
from kms_client.types import Key, key_from_pb
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc

_UNSET: Any = object()


@dataclass(frozen=True)
class Grant:
    grant_id: str
    principal: str
    resource: str
    permissions: tuple[str, ...]
    encryption_context_equals: Mapping[str, str] = field(default_factory=dict)
    created_by: str = ""


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    time: datetime | None
    identity: str
    rpc: str
    key_id: str
    key_version: int
    outcome: str
    reason: str
    request_id: str
    peer: str
    context_digest: str
    item: int
    detail: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditVerification:
    intact: bool
    records_checked: int
    checkpoints_checked: int
    problem_seq: int = 0
    problem: str = ""


class AdminMixin:
    """Needs from the class it is mixed into: ``_channel``, ``_stub`` and ``_call``."""

    _channel: grpc.Channel
    _stub: kms_pb2_grpc.KeyManagementServiceStub

    def _call(self, method: Any, request: Any, timeout: float | None, retry: Any = None) -> Any: ...

    # -- key settings and version lifecycle --------------------------------------------

    def update_key(
        self,
        key_id: str,
        *,
        description: str = _UNSET,
        rotation_period: timedelta | None = _UNSET,
        min_decryption_version: int = _UNSET,
        storage: str = _UNSET,
        retention_period: timedelta | None = _UNSET,
        erasure_finality: timedelta | None = _UNSET,
        timeout: float | None = None,
    ) -> Key:
        """Changes only the settings given; ``rotation_period=None`` stops scheduled rotation;
        ``storage`` ("WRAPPED" or "HSM_OBJECT") applies to versions made from now on."""
        request = pb.UpdateKeyRequest(key_id=key_id)
        paths = []
        if description is not _UNSET:
            request.description = description
            paths.append("description")
        if rotation_period is not _UNSET:
            if rotation_period is not None:
                request.rotation_period.CopyFrom(_duration(rotation_period))
            paths.append("rotation_period")
        if min_decryption_version is not _UNSET:
            request.min_decryption_version = min_decryption_version
            paths.append("min_decryption_version")
        if storage is not _UNSET:
            request.MergeFrom(pb.UpdateKeyRequest(storage=storage))  # the enum by its name
            paths.append("storage")
        for name, value in (("retention_period", retention_period), ("erasure_finality", erasure_finality)):
            if value is not _UNSET:  # None clears it
                if value is not None:
                    getattr(request, name).CopyFrom(_duration(value))
                paths.append(name)
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
        return key_from_pb(self._call(self._stub.UpdateKey, request, timeout))

    def disable_key_version(self, key_id: str, version: int, *, timeout: float | None = None) -> Key:
        request = pb.DisableKeyVersionRequest(key_id=key_id, version=version)
        return key_from_pb(self._call(self._stub.DisableKeyVersion, request, timeout))

    def enable_key_version(self, key_id: str, version: int, *, timeout: float | None = None) -> Key:
        request = pb.EnableKeyVersionRequest(key_id=key_id, version=version)
        return key_from_pb(self._call(self._stub.EnableKeyVersion, request, timeout))

    def schedule_key_version_destruction(
        self, key_id: str, version: int, *, pending_window: timedelta | None = None, timeout: float | None = None
    ) -> Key:
        request = pb.ScheduleKeyVersionDestructionRequest(key_id=key_id, version=version)
        if pending_window is not None:
            request.pending_window.CopyFrom(_duration(pending_window))
        return key_from_pb(self._call(self._stub.ScheduleKeyVersionDestruction, request, timeout))

    def cancel_key_version_destruction(self, key_id: str, version: int, *, timeout: float | None = None) -> Key:
        request = pb.CancelKeyVersionDestructionRequest(key_id=key_id, version=version)
        return key_from_pb(self._call(self._stub.CancelKeyVersionDestruction, request, timeout))

    def retire_key_version(
        self,
        key_id: str,
        version: int,
        *,
        min_idle: timedelta | None = None,
        pending_window: timedelta | None = None,
        timeout: float | None = None,
    ) -> Key:
        """Disables the version and schedules its destruction, unless usage tracking shows it used
        within ``min_idle`` (default 7 days): then KeyVersionStillInUse (FAILED_PRECONDITION)."""
        request = pb.RetireKeyVersionRequest(key_id=key_id, version=version)
        if min_idle is not None:
            request.min_idle.CopyFrom(_duration(min_idle))
        if pending_window is not None:
            request.pending_window.CopyFrom(_duration(pending_window))
        return key_from_pb(self._call(self._stub.RetireKeyVersion, request, timeout))

    # -- grants and groups ---------------------------------------------------------------

    def grant_permissions(
        self,
        principal: str,
        resource: str,
        permissions: Iterable[str],
        *,
        encryption_context_equals: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Grant:
        """Lets ``principal`` (an identity or "group:NAME") use ``permissions`` (admin, encrypt,
        decrypt, rewrap, rotate, audit-read, erase, pseudonymize) on ``resource`` (a key id,
        "prefix*" or "*")."""
        request = pb.GrantPermissionsRequest(
            principal=principal,
            resource=resource,
            permissions=list(permissions),
            encryption_context_equals=dict(encryption_context_equals or {}),
        )
        return _grant(self._call(self._policy.GrantPermissions, request, timeout, NO_RETRY))

    def revoke_grant(self, grant_id: str, *, timeout: float | None = None) -> Grant:
        return _grant(self._call(self._policy.RevokeGrant, pb.RevokeGrantRequest(grant_id=grant_id), timeout))

    def list_grants(self, *, principal: str = "", resource: str = "", timeout: float | None = None) -> list[Grant]:
        response = self._call(
            self._policy.ListGrants, pb.ListGrantsRequest(principal=principal, resource=resource), timeout
        )
        return [_grant(g) for g in response.grants]

    def add_group_member(self, group: str, identity: str, *, timeout: float | None = None) -> bool:
        request = pb.GroupMemberRequest(group=group, identity=identity)
        changed: bool = self._call(self._policy.AddGroupMember, request, timeout).changed
        return changed

    def remove_group_member(self, group: str, identity: str, *, timeout: float | None = None) -> bool:
        request = pb.GroupMemberRequest(group=group, identity=identity)
        changed: bool = self._call(self._policy.RemoveGroupMember, request, timeout).changed
        return changed

    def list_group_members(self, group: str = "", *, timeout: float | None = None) -> list[tuple[str, str]]:
        response = self._call(self._policy.ListGroupMembers, pb.ListGroupMembersRequest(group=group), timeout)
        return [(m.group, m.identity) for m in response.members]

    # -- audit ---------------------------------------------------------------------------

    def audit_events(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        key_id: str = "",
        identity: str = "",
        after_seq: int = 0,
        context: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[AuditEvent]:
        """Audit records in sequence order, streamed (any number in bounded memory). ``context``
        selects the calls made with exactly that encryption context (the log keeps only a keyed
        digest of it, which the service computes)."""
        request = pb.ListAuditEventsRequest(
            key_id=key_id, identity=identity, after_seq=after_seq, encryption_context=context or {}
        )
        if start_time is not None:
            request.start_time.CopyFrom(_timestamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(_timestamp(end_time))
        try:
            for event in self._audit.ListAuditEvents(request, timeout=timeout):
                yield _event(event)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def verify_audit_log(self, *, timeout: float | None = None) -> AuditVerification:
        response = self._call(self._audit.VerifyAuditLog, pb.VerifyAuditLogRequest(), timeout)
        return AuditVerification(
            response.intact,
            response.records_checked,
            response.checkpoints_checked,
            response.problem_seq,
            response.problem,
        )

    @property
    def _policy(self) -> kms_pb2_grpc.PolicyServiceStub:
        return kms_pb2_grpc.PolicyServiceStub(self._channel)

    @property
    def _audit(self) -> kms_pb2_grpc.AuditServiceStub:
        return kms_pb2_grpc.AuditServiceStub(self._channel)


def _duration(value: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def _grant(message: pb.Grant) -> Grant:
    return Grant(
        message.grant_id,
        message.principal,
        message.resource,
        tuple(message.permissions),
        dict(message.encryption_context_equals),
        message.created_by,
    )


def _event(message: pb.AuditEvent) -> AuditEvent:
    return AuditEvent(
        seq=message.seq,
        time=message.time.ToDatetime(tzinfo=UTC) if message.HasField("time") else None,
        identity=message.identity,
        rpc=message.rpc,
        key_id=message.key_id,
        key_version=message.key_version,
        outcome=message.outcome,
        reason=message.reason,
        request_id=message.request_id,
        peer=message.peer,
        context_digest=message.context_digest,
        item=message.item,
        detail=message.detail,
        prev_hash=message.prev_hash,
        hash=message.hash,
    )
