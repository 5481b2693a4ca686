"""The audit log misses nothing, on SQLite and PostgreSQL: every RPC of every service (walked from
the proto's descriptors, so an RPC added without a case here fails this test) and every action the
service takes on its own (scheduled rotation and destruction, reconciliation adopting a leftover)
leaves its record, with the right key, version and identity.

Each call carries its own x-request-id and its record is looked up by it: a record that merely
exists somewhere in the log does not count.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from kms_proto.kms.v1 import kms_pb2 as pb
from tests.support.attack import Stubs, channel
from tests.support.clock import ManualClock
from tests.support.fixtures import ADMIN, APP, make_settings

DAY = timedelta(days=1)
ALL_RPCS = {method.name for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods}


def _duration(value: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


@dataclass
class Walk:
    admin: Stubs
    request_ids: dict[str, str] = field(default_factory=dict)
    wrapped: bytes = b""
    grant_id: str = ""

    def metadata(self, rpc: str) -> tuple[tuple[str, str], ...]:
        self.request_ids[rpc] = f"walk-{rpc}-{uuid.uuid4().hex[:8]}"
        return (("x-request-id", self.request_ids[rpc]),)


def _call(service: str, rpc: str, request, *, streamed: bool = False):
    """A step that sends ``request`` (or ``request(walk)``) to ``rpc`` under its own request id."""

    def step(w: Walk):
        message = request(w) if callable(request) else request
        answer = getattr(getattr(w.admin, service), rpc)(message, metadata=w.metadata(rpc), timeout=30)
        return list(answer) if streamed else answer

    return step


def _keep(step, attribute: str, pick):
    """``step``, remembering part of its answer for the steps after it."""

    def keeping(w: Walk):
        answer = step(w)
        setattr(w, attribute, pick(answer))
        return answer

    return keeping


def _version(rpc: str, message_type, **fields):
    return _call("keys", rpc, message_type(key_id="orders", version=1, **fields))


def _pseudonymize(w: Walk):
    """Pseudonymize on a key of its purpose, made first (CreateKey's own record is walked above)."""
    w.admin.keys.CreateKey(pb.CreateKeyRequest(key_id="emails", purpose="PSEUDONYMIZE"), timeout=30)
    request = pb.PseudonymizeRequest(key_id="emails", values=[b"ada@example.com"])
    return w.admin.keys.Pseudonymize(request, metadata=w.metadata("Pseudonymize"), timeout=30)


def _erase(w: Walk):
    """EraseSubject on a key that keeps a key per data subject, made first."""
    w.admin.keys.CreateKey(pb.CreateKeyRequest(key_id="people", subject_field="user_id"), timeout=30)
    request = pb.EraseSubjectRequest(key_id="people", subject="alice")
    return w.admin.keys.EraseSubject(request, metadata=w.metadata("EraseSubject"), timeout=30)


TWO_DAYS, NO_IDLE = _duration(2 * DAY), _duration(timedelta(0))
ORDERS = pb.GetKeyRequest(key_id="orders")

# In order (each may need what the ones before it did): RPC -> (call, (key id, version) its record names).
STEPS: dict[str, tuple[Callable[[Walk], object], tuple[str, int]]] = {
    "CreateKey": (_call("keys", "CreateKey", pb.CreateKeyRequest(key_id="orders")), ("orders", 1)),
    "GetKey": (_call("keys", "GetKey", ORDERS), ("orders", 0)),
    "ListKeys": (_call("keys", "ListKeys", pb.ListKeysRequest()), ("", 0)),
    "RotateKey": (_call("keys", "RotateKey", pb.RotateKeyRequest(key_id="orders")), ("orders", 2)),
    "UpdateKey": (
        _call(
            "keys",
            "UpdateKey",
            pb.UpdateKeyRequest(
                key_id="orders", description="walked", update_mask=field_mask_pb2.FieldMask(paths=["description"])
            ),
        ),
        ("orders", 0),
    ),
    "DisableKeyVersion": (_version("DisableKeyVersion", pb.DisableKeyVersionRequest), ("orders", 1)),
    "EnableKeyVersion": (_version("EnableKeyVersion", pb.EnableKeyVersionRequest), ("orders", 1)),
    "ScheduleKeyVersionDestruction": (
        _version("ScheduleKeyVersionDestruction", pb.ScheduleKeyVersionDestructionRequest, pending_window=TWO_DAYS),
        ("orders", 1),
    ),
    "CancelKeyVersionDestruction": (
        _version("CancelKeyVersionDestruction", pb.CancelKeyVersionDestructionRequest),
        ("orders", 1),
    ),
    "RetireKeyVersion": (
        _version("RetireKeyVersion", pb.RetireKeyVersionRequest, min_idle=NO_IDLE, pending_window=TWO_DAYS),
        ("orders", 1),
    ),
    "GenerateDataKey": (
        _keep(
            _call("keys", "GenerateDataKey", pb.GenerateDataKeyRequest(key_id="orders")),
            "wrapped",
            lambda answer: answer.wrapped_key,
        ),
        ("orders", 2),
    ),
    "GenerateDataKeyWithoutPlaintext": (
        _call("keys", "GenerateDataKeyWithoutPlaintext", pb.GenerateDataKeyRequest(key_id="orders")),
        ("orders", 2),
    ),
    "Decrypt": (_call("keys", "Decrypt", lambda w: pb.DecryptRequest(wrapped_key=w.wrapped)), ("orders", 2)),
    "ReWrap": (_call("keys", "ReWrap", lambda w: pb.ReWrapRequest(wrapped_key=w.wrapped)), ("orders", 2)),
    # Empty batches and an empty stream still leave the call's record.
    "BatchGenerateDataKey": (_call("keys", "BatchGenerateDataKey", pb.BatchGenerateDataKeyRequest()), ("", 0)),
    "BatchDecrypt": (_call("keys", "BatchDecrypt", pb.BatchDecryptRequest()), ("", 0)),
    "BatchReWrap": (_call("keys", "BatchReWrap", pb.BatchReWrapRequest()), ("", 0)),
    "StreamReWrap": (_call("keys", "StreamReWrap", lambda w: iter(()), streamed=True), ("", 0)),
    "Pseudonymize": (_pseudonymize, ("emails", 1)),
    # The erasure's record names the version after whose destruction it is final.
    "EraseSubject": (_erase, ("people", 1)),
    "ListErasures": (_call("keys", "ListErasures", pb.ListErasuresRequest(key_id="people")), ("people", 0)),
    # A grant on one key is found among that key's records.
    "GrantPermissions": (
        _keep(
            _call(
                "policy",
                "GrantPermissions",
                pb.GrantPermissionsRequest(principal=APP, resource="orders", permissions=["decrypt"]),
            ),
            "grant_id",
            lambda answer: answer.grant_id,
        ),
        ("orders", 0),
    ),
    "ListGrants": (_call("policy", "ListGrants", pb.ListGrantsRequest()), ("", 0)),
    "AddGroupMember": (_call("policy", "AddGroupMember", pb.GroupMemberRequest(group="ops", identity=APP)), ("", 0)),
    "ListGroupMembers": (_call("policy", "ListGroupMembers", pb.ListGroupMembersRequest()), ("", 0)),
    "RemoveGroupMember": (
        _call("policy", "RemoveGroupMember", pb.GroupMemberRequest(group="ops", identity=APP)),
        ("", 0),
    ),
    "RevokeGrant": (
        _call("policy", "RevokeGrant", lambda w: pb.RevokeGrantRequest(grant_id=w.grant_id)),
        ("orders", 0),
    ),
    "ListAuditEvents": (
        _call("audit", "ListAuditEvents", pb.ListAuditEventsRequest(key_id="orders"), streamed=True),
        ("orders", 0),
    ),
    "VerifyAuditLog": (_call("audit", "VerifyAuditLog", pb.VerifyAuditLogRequest()), ("", 0)),
}


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def audited(hsm_token, tmp_path, database_url, label_prefix, dev_certs, clock):
    """A server over mutual TLS on the database under test, its clock moved by hand and its own
    scheduler idle (the test runs the passes)."""
    from kms.app import Application

    settings = make_settings(
        hsm_token,
        tmp_path,
        database_url,
        label_prefix,
        tls_cert=dev_certs / "server.crt",
        tls_key=dev_certs / "server.key",
        client_ca=dev_certs / "ca.crt",
        bootstrap_admin=ADMIN,
        min_destroy_pending_window=DAY,
        scheduler_interval=timedelta(days=3650),
    )
    app = Application(settings, clock=clock)
    app.start()
    opened = channel(app, dev_certs, "admin")
    yield app, Stubs(opened)
    opened.close()
    app.stop(grace=1)


def _records(admin: Stubs) -> list[pb.AuditEvent]:
    return list(admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(), timeout=30))


def test_every_rpc_of_every_service_has_a_case_here():
    assert set(STEPS) == ALL_RPCS, "an RPC without an audit case (add it to STEPS), or a case for a removed RPC"


def test_every_rpc_leaves_its_record_with_the_right_key_version_and_identity(audited):
    _, admin = audited
    walk = Walk(admin)
    for rpc, (call, _) in STEPS.items():
        try:
            call(walk)
        except grpc.RpcError as error:
            pytest.fail(f"{rpc} failed: {error.code()} {error.details()}")
    by_request = {(e.request_id, e.item): e for e in _records(admin)}
    found = {}
    for rpc in STEPS:
        record = by_request.get((walk.request_ids[rpc], -1))
        found[rpc] = record and (record.rpc, record.identity, record.outcome, record.key_id, record.key_version)
    assert found == {rpc: (rpc, ADMIN, "OK", *expected) for rpc, (_, expected) in STEPS.items()}


def test_what_the_service_does_on_its_own_is_recorded_under_its_own_identities(audited, clock):
    app, admin = audited
    hourly = pb.CreateKeyRequest(key_id="hourly", rotation_period=_duration(timedelta(hours=1)))
    admin.keys.CreateKey(hourly, timeout=10)
    admin.keys.CreateKey(pb.CreateKeyRequest(key_id="orders"), timeout=10)
    admin.keys.RotateKey(pb.RotateKeyRequest(key_id="orders"), timeout=10)
    request = pb.RetireKeyVersionRequest(
        key_id="orders", version=1, min_idle=_duration(timedelta(0)), pending_window=_duration(2 * DAY)
    )
    admin.keys.RetireKeyVersion(request, timeout=10)

    clock.advance(2 * DAY + timedelta(seconds=1))
    done = app.services.scheduler.run_once()
    assert (done.rotated, done.destroyed, done.failed) == ([("hourly", 2)], [("orders", 1)], [])
    leftover = app.services.master_keys.create("orders", 3)  # as a rotation that died before committing
    report = app.services.reconciler.reconcile()
    assert [(v.key_id, v.version, v.master_key_id) for v in report.adopted] == [("orders", 3, leftover.master_key_id)]

    system = [
        (e.rpc, e.identity, e.outcome, e.key_id, e.key_version)
        for e in _records(admin)
        if e.identity.startswith("kms:") and e.rpc.startswith(("Scheduled", "Reconciliation"))
    ]
    assert sorted(system) == sorted(
        [
            ("ScheduledRotation", "kms:scheduler", "OK", "hourly", 2),
            ("ScheduledDestruction", "kms:scheduler", "OK", "orders", 1),
            ("ReconciliationAdopt", "kms:reconciler", "OK", "orders", 3),
        ]
    )
    assert admin.audit.VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=30).intact
