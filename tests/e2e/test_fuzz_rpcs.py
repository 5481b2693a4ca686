"""Arbitrary well-formed and malformed requests to every RPC: no response is UNKNOWN or
INTERNAL, and the server stays healthy."""

from __future__ import annotations

import grpc
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms.api.proto import SERVICES, pb

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
METHODS = [(service.full_name, method) for service in SERVICES for method in service.methods]

_key_ids = st.one_of(
    st.sampled_from(["orders", "", "x" * 65, "a b", "orders-b", "*", "tenant-*"]), st.text(max_size=70)
)
_scalars = {
    FieldDescriptor.TYPE_STRING: _key_ids,
    FieldDescriptor.TYPE_BYTES: st.one_of(st.binary(max_size=200), st.sampled_from([b"\x01\x06orders" + bytes(60)])),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(0, 5),
}


@st.composite
def messages(draw, descriptor, depth: int = 0):
    """A message of ``descriptor`` with some fields set to arbitrary (often invalid) values."""
    message = getattr(pb, descriptor.name)() if descriptor.file.package == "kms.v1" else None
    if message is None:
        from google.protobuf import message_factory

        message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = draw(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4))
            getattr(message, field.name).update(entries)
        elif field.message_type is not None:
            if depth > 1:
                continue
            if field.message_type.full_name == "google.protobuf.Duration":
                getattr(message, field.name).seconds = draw(st.integers(-(10**12), 10**12))
            elif field.message_type.full_name == "google.protobuf.Timestamp":
                getattr(message, field.name).seconds = draw(st.integers(-(10**11), 10**11))
            elif field.message_type.full_name == "google.protobuf.FieldMask":
                getattr(message, field.name).paths.extend(
                    draw(
                        st.lists(
                            st.sampled_from(["description", "rotation_period", "min_decryption_version", "key_id", ""]),
                            max_size=3,
                        )
                    )
                )
            elif field.is_repeated:
                for item in draw(st.lists(messages(field.message_type, depth + 1), max_size=3)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(messages(field.message_type, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalars[field.type], max_size=3)))
        else:
            setattr(message, field.name, draw(_scalars[field.type]))
    return message


def _payloads(method):
    return st.one_of(messages(method.input_type).map(lambda m: m.SerializeToString()), st.binary(max_size=64))


def _call(channel, service: str, method, payload: bytes) -> grpc.StatusCode:
    path = f"/{service}/{method.name}"
    try:
        if method.client_streaming:
            list(channel.stream_stream(path)(iter([payload, payload]), timeout=20))
        elif method.server_streaming:
            list(channel.unary_stream(path)(payload, timeout=20))
        else:
            channel.unary_unary(path)(payload, timeout=20)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _probe(channel, service: str, method, seen: dict):
    @settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(payload=_payloads(method))
    def probe(payload: bytes) -> None:
        code = _call(channel, service, method, payload)
        seen.setdefault(method.name, set()).add(code.name)
        assert code not in FORBIDDEN, (method.name, payload)

    return probe


def test_no_input_makes_any_rpc_answer_unknown_or_internal(server, client):
    client.create_key("orders")
    client.create_key("orders-b")
    seen: dict[str, set] = {}
    with grpc.insecure_channel(server.target) as channel:
        for service, method in METHODS:
            _probe(channel, service, method, seen)()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(seen) == len(METHODS)
    assert any("OK" in codes for codes in seen.values()) and any("INVALID_ARGUMENT" in codes for codes in seen.values())
