"""Hostile text in every string field of every request, on SQLite and PostgreSQL.

The fields are found by walking the request descriptors (nested messages, repeated fields and
both sides of every map included), so a field added later is attacked too. Each request is
otherwise valid, sent by the superuser, so that the bad text is what the service meets at every
depth. What must hold:

- no answer is UNKNOWN or INTERNAL, and the server stays healthy with an intact audit log (a
  record the log could not store would fail every later call closed);
- a refused call leaves nothing behind: no HSM object, no key, no grant, no membership;
- text that would be stored or used as a name (key ids, descriptions, principals, resources,
  groups, identities) is refused with INVALID_ARGUMENT when it holds NUL or control characters
  or is too long;
- an error message never echoes control characters and stays short ("messages name the field
  and the rule, never the value").

Lone surrogates cannot be sent: protobuf refuses to serialize them (and the server would refuse
to parse them), so they are not generated.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms.api.proto import SERVICES, pb
from kms_proto.kms.v1 import kms_pb2_grpc

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
MAX_MESSAGE = 1024

BAD_TEXTS = {
    "nul": "orders\x00evil",
    "newline": "orders\nkms serving: forged line",
    "escape": "\x1b[2J\x1b[31morders",
    "c1 control and del": "ord\x7fers\x85\x9b",
    "long": "é" * 200_000,
    "non-ascii": "ördérs-ключ-鍵-🔑",
    "unicode oddities": "orders\u202egpj.exe\ufeff\ufffe\uffff",
    "empty": "",
}
# Where the text names something stored or shown: bad text there is refused as such.
NAMES = {
    ("CreateKey", ("key_id",)),
    ("CreateKey", ("description",)),
    ("UpdateKey", ("key_id",)),
    ("UpdateKey", ("description",)),
    ("GrantPermissions", ("principal",)),
    ("GrantPermissions", ("resource",)),
    ("AddGroupMember", ("group",)),
    ("AddGroupMember", ("identity",)),
    ("RemoveGroupMember", ("group",)),
    ("RemoveGroupMember", ("identity",)),
    ("GetKey", ("key_id",)),
    ("RotateKey", ("key_id",)),
    ("ListAuditEvents", ("identity",)),
    ("ListAuditEvents", ("key_id",)),
}
REFUSED_AS_NAMES = ("nul", "newline", "escape", "c1 control and del", "long")


def _string_paths(descriptor, prefix: tuple[str, ...] = (), depth: int = 0) -> Iterator[tuple[str, ...]]:
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for side in ("key", "value"):
                if field.message_type.fields_by_name[side].type == FieldDescriptor.TYPE_STRING:
                    yield (*prefix, field.name, f"<{side}>")
        elif field.message_type is not None:
            if depth < 3:
                yield from _string_paths(field.message_type, (*prefix, field.name), depth + 1)
        elif field.type == FieldDescriptor.TYPE_STRING:
            yield (*prefix, field.name)


METHODS = {method.name: (service, method) for service in SERVICES for method in service.methods}
TARGETS = sorted((name, path) for name, (_, method) in METHODS.items() for path in _string_paths(method.input_type))


def test_every_rpc_with_text_in_its_request_is_attacked():
    with_text = {name for name, _ in TARGETS}
    assert with_text == set(METHODS) - {"VerifyAuditLog"}
    assert ("UpdateKey", ("update_mask", "paths")) in TARGETS  # inside well-known types too
    assert ("BatchReWrap", ("requests", "encryption_context", "<key>")) in TARGETS


def _base(name: str, wrapped: bytes):
    """A request that would succeed (or fail for a dull reason) but for the text put into it."""
    requests = {
        "CreateKey": lambda: pb.CreateKeyRequest(key_id="fresh"),
        "UpdateKey": lambda: pb.UpdateKeyRequest(
            key_id="orders", description="ok", update_mask={"paths": ["description"]}
        ),
        "GenerateDataKey": lambda: pb.GenerateDataKeyRequest(key_id="orders"),
        "GenerateDataKeyWithoutPlaintext": lambda: pb.GenerateDataKeyRequest(key_id="orders"),
        "Decrypt": lambda: pb.DecryptRequest(wrapped_key=wrapped),
        "ReWrap": lambda: pb.ReWrapRequest(wrapped_key=wrapped),
        "BatchGenerateDataKey": lambda: pb.BatchGenerateDataKeyRequest(requests=[{"key_id": "orders"}]),
        "BatchDecrypt": lambda: pb.BatchDecryptRequest(requests=[{"wrapped_key": wrapped}]),
        "BatchReWrap": lambda: pb.BatchReWrapRequest(requests=[{"wrapped_key": wrapped}]),
        "StreamReWrap": lambda: pb.BatchReWrapRequest(requests=[{"wrapped_key": wrapped}]),
        "GrantPermissions": lambda: pb.GrantPermissionsRequest(
            principal="spiffe://kms.dev/app", resource="orders", permissions=["decrypt"]
        ),
        "AddGroupMember": lambda: pb.GroupMemberRequest(group="ops", identity="spiffe://kms.dev/app"),
        "RemoveGroupMember": lambda: pb.GroupMemberRequest(group="ops", identity="spiffe://kms.dev/app"),
        "ListAuditEvents": lambda: pb.ListAuditEventsRequest(after_seq=2**62),  # nothing to stream back
    }
    if name in requests:
        return requests[name]()
    _, method = METHODS[name]
    request = getattr(pb, method.input_type.name)()
    for field in ("key_id",):
        if field in method.input_type.fields_by_name:
            setattr(request, field, "orders")
    if "version" in method.input_type.fields_by_name:
        request.version = 99
    return request


def _put(message, path: tuple[str, ...], text: str) -> None:
    name, rest = path[0], path[1:]
    field = message.DESCRIPTOR.fields_by_name[name]
    if rest and rest[0] in ("<key>", "<value>"):
        entries = getattr(message, name)
        if rest[0] == "<key>":
            entries[text] = "value"
        else:
            entries["name"] = text
    elif rest:
        target = getattr(message, name)
        if field.is_repeated:
            target = target[0] if len(target) else target.add()
        _put(target, rest, text)
    elif field.is_repeated:
        getattr(message, name).append(text)
    else:
        setattr(message, name, text)


def _send(channel: grpc.Channel, name: str, request) -> grpc.RpcError | None:
    service, method = METHODS[name]
    path = f"/{service.full_name}/{name}"
    serialize = type(request).SerializeToString
    try:
        if method.client_streaming:
            list(channel.stream_stream(path, request_serializer=serialize)(iter([request]), timeout=60))
        elif method.server_streaming:
            list(channel.unary_stream(path, request_serializer=serialize)(request, timeout=60))
        else:
            channel.unary_unary(path, request_serializer=serialize)(request, timeout=60)
    except grpc.RpcError as error:
        return error
    return None


class Target:
    """The server under attack and what a refused call must not have changed."""

    def __init__(self, app) -> None:
        self.app = app
        self.channel = grpc.insecure_channel(app.target, options=[("grpc.max_receive_message_length", 16 << 20)])
        keys = kms_pb2_grpc.KeyManagementServiceStub(self.channel)
        keys.CreateKey(pb.CreateKeyRequest(key_id="orders"), timeout=10)
        self.wrapped = keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).wrapped_key
        kms_pb2_grpc.PolicyServiceStub(self.channel).AddGroupMember(
            pb.GroupMemberRequest(group="ops", identity="spiffe://kms.dev/app"), timeout=10
        )
        self.known = self.state()  # as of the last call that was answered

    def state(self) -> tuple:
        services = self.app.services
        return (
            sorted(o.label for o in services.master_keys.list_objects()),
            sorted(k.key_id for k in services.repository.list_keys(1000, None)),
            sorted(g.grant_id for g in services.policy_cache.all_grants()),
            services.policy_cache.members(),
        )

    def attack(self, name: str, path: tuple[str, ...], text: str) -> grpc.RpcError | None:
        request = _base(name, self.wrapped)
        _put(request, path, text)
        error = _send(self.channel, name, request)
        where = f"{name} {'.'.join(path)} = {text[:40]!r}"
        assert error is None or error.code() not in FORBIDDEN, f"{where}: {error.code()} {error.details()}"
        if error is None:
            self.known = self.state()
        else:
            assert self.state() == self.known, f"{where} was refused ({error.code()}) but left something behind"
            details = error.details() or ""
            assert not _CONTROL.search(details), f"{where}: the error message echoes control characters: {details!r}"
            assert len(details) <= MAX_MESSAGE, f"{where}: a {len(details)}-character error message"
        return error

    def still_healthy(self) -> None:
        health = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        keys = kms_pb2_grpc.KeyManagementServiceStub(self.channel)
        assert keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).key_id == "orders"
        verified = kms_pb2_grpc.AuditServiceStub(self.channel).VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=60)
        assert verified.intact, verified.problem


@pytest.fixture
def target(server_on_each_database):
    attacked = Target(server_on_each_database)
    yield attacked
    attacked.channel.close()


def test_every_kind_of_bad_text_in_every_string_field_is_refused_cleanly_and_leaves_nothing_behind(target):
    for name, path in TARGETS:
        for kind, text in BAD_TEXTS.items():
            error = target.attack(name, path, text)
            multiline = path == ("description",) and kind == "newline"  # a description may have line breaks
            if (name, path) in NAMES and kind in REFUSED_AS_NAMES and not multiline:
                assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                    f"{name} {'.'.join(path)} accepted {kind} text: {error and error.code()}"
                )
    target.still_healthy()


_texts = st.one_of(
    st.text(max_size=300),
    st.text(st.characters(codec="utf-8", max_codepoint=0x9F), max_size=80),
    st.builds(lambda base, n: base * n, st.text(min_size=1, max_size=3), st.integers(1000, 200_000)),
)


def test_arbitrary_text_in_any_string_field_never_gets_unknown_or_internal(target):
    @settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(TARGETS), _texts)
    def attack(where: tuple[str, tuple[str, ...]], text: str) -> None:
        target.attack(*where, text)

    attack()
    target.still_healthy()


def test_a_create_key_refused_for_its_text_leaves_no_object_in_the_hsm(target, hsm_token):
    """Counted the way an operator would, with pkcs11-tool over the whole token."""
    from tests.support.hsm import pkcs11_tool_secret_keys

    before = len(pkcs11_tool_secret_keys(hsm_token))
    for request in (
        pb.CreateKeyRequest(key_id="fresh", description="a\x00b"),
        pb.CreateKeyRequest(key_id="fresh", description="\x1b[31m"),
        pb.CreateKeyRequest(key_id="fresh", description="d" * 1025),
        pb.CreateKeyRequest(key_id="fresh\x00"),
        pb.CreateKeyRequest(key_id="frésh"),
        pb.CreateKeyRequest(key_id="f" * 65),
    ):
        error = _send(target.channel, "CreateKey", request)
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(pkcs11_tool_secret_keys(hsm_token)) == before
    error = _send(target.channel, "GetKey", pb.GetKeyRequest(key_id="fresh"))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND
