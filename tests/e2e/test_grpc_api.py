"""The service over gRPC: every RPC, its status codes, and inputs a client could send."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import kms_client
from kms.api.proto import SERVICE, SERVICE_NAME
from kms_proto.kms.v1 import kms_pb2 as pb

CONTEXT = {"tenant": "acme"}


def test_key_admin_round_trip(client):
    created = client.create_key("orders", description="rows")
    assert (created.key_id, created.primary_version, created.versions[0].state) == ("orders", 1, "ENABLED")
    assert (created.storage, created.versions[0].storage, created.versions[0].hsm_label) == ("WRAPPED", "WRAPPED", "")
    assert created.versions[0].root_key_id
    as_object = client.create_key("orders-object", storage="HSM_OBJECT")
    assert as_object.versions[0].hsm_label.endswith(":orders-object:v1")
    assert client.rotate_key("orders").primary_version == 2
    assert client.get_key("orders").versions[1].version == 2
    assert [k.key_id for k in client.iter_keys(page_size=1)] == ["orders", "orders-object"]


def test_data_key_rpcs(client):
    client.create_key("orders")
    issued = client.generate_data_key("orders", CONTEXT)
    assert len(issued.plaintext) == 32
    assert client.decrypt_data_key(issued.wrapped_key, CONTEXT).plaintext == issued.plaintext
    bare = client.generate_data_key_without_plaintext("orders", CONTEXT)
    assert bare.plaintext == b"" and len(client.decrypt_data_key(bare.wrapped_key, CONTEXT).plaintext) == 32
    client.rotate_key("orders")
    moved = client.rewrap_data_key(issued.wrapped_key, CONTEXT)
    assert moved.changed and (moved.source_key_version, moved.key_version) == (1, 2)
    assert not client.rewrap_data_key(moved.wrapped_key, CONTEXT).changed


def test_batches_and_stream(client):
    client.create_key("orders")
    batch = client.generate_data_keys([("orders", CONTEXT), ("missing", {}), ("bad id", {})])
    assert isinstance(batch[0], kms_client.DataKey)
    assert isinstance(batch[1], kms_client.KeyNotFound) and isinstance(batch[2], kms_client.InvalidKeyId)
    opened = client.decrypt_data_keys([(batch[0].wrapped_key, CONTEXT), (b"junk", CONTEXT)])
    assert opened[0].plaintext == batch[0].plaintext and isinstance(opened[1], kms_client.InvalidCiphertext)
    client.rotate_key("orders")
    rewrapped = client.rewrap_data_keys([(batch[0].wrapped_key, CONTEXT)])
    assert rewrapped[0].key_version == 2
    streamed = list(client.stream_rewrap([(batch[0].wrapped_key, CONTEXT), (b"junk", {})] * 50))
    assert [type(r).__name__ for r in streamed[:2]] == ["Rewrapped", "InvalidCiphertext"]
    assert len(streamed) == 100


@pytest.mark.parametrize(
    ("action", "error", "reason"),
    [
        (lambda c: c.get_key("missing"), kms_client.KeyNotFound, "KeyNotFound"),
        (lambda c: c.create_key("bad id"), kms_client.InvalidKeyId, "InvalidKeyId"),
        (lambda c: c.create_key("dup"), kms_client.KeyAlreadyExists, "KeyAlreadyExists"),
        (lambda c: c.decrypt_data_key(b"\x01garbage"), kms_client.InvalidCiphertext, "InvalidCiphertext"),
        (
            lambda c: c.generate_data_key("dup", {"k": "v" * 2000}),
            kms_client.InvalidEncryptionContext,
            "InvalidEncryptionContext",
        ),
        (lambda c: c.list_keys(page_token="forged"), kms_client.InvalidArgument, "InvalidPageToken"),
    ],
)
def test_errors_arrive_typed_with_their_reason(client, action, error, reason):
    client.create_key("dup")
    with pytest.raises(error) as raised:
        action(client)
    assert raised.value.reason == reason


def _raw(server, method: str):
    channel = grpc.insecure_channel(server.target)
    return channel, channel.unary_unary(f"/{SERVICE_NAME}/{method}")


def _undecodable():
    for method in SERVICE.methods:
        if method.client_streaming:
            continue
        yield pytest.param(method.name, b"\xff\xff\xff", id=f"{method.name}-junk")
        yield pytest.param(method.name, b"\x0a\x05ab", id=f"{method.name}-truncated")
        first = method.input_type.fields_by_number.get(1)
        if first is not None and first.type == first.TYPE_STRING:
            yield pytest.param(method.name, b"\x0a\x02\xc3\x28", id=f"{method.name}-bad-utf8")


@pytest.mark.parametrize(("method", "payload"), list(_undecodable()))
def test_undecodable_requests_are_invalid_argument_not_internal(server, method, payload):
    channel, call = _raw(server, method)
    with channel, pytest.raises(grpc.RpcError) as raised:
        call(payload, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_malformed_message_in_the_stream_fails_alone(server, client):
    client.create_key("orders")
    good = client.generate_data_key("orders", {}).wrapped_key
    channel = grpc.insecure_channel(server.target)
    stream = channel.stream_stream(
        f"/{SERVICE_NAME}/StreamReWrap", response_deserializer=pb.BatchReWrapResponse.FromString
    )
    batch = pb.BatchReWrapRequest(requests=[pb.ReWrapRequest(wrapped_key=good), pb.ReWrapRequest(wrapped_key=b"x")])
    requests = [batch.SerializeToString(), b"\xff\xff", batch.SerializeToString()]
    with channel:
        responses = list(stream(iter(requests), timeout=10))
    outcomes = [[r.WhichOneof("outcome") for r in response.results] for response in responses]
    assert outcomes == [["rewrapped", "error"], ["error"], ["rewrapped", "error"]]
    assert responses[1].results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_the_stream_carries_any_number_of_items_in_order(client):
    client.create_key("orders")
    issued = client.generate_data_keys([("orders", {"n": str(n)}) for n in range(1000)])
    client.rotate_key("orders")
    items = [(d.wrapped_key, {"n": str(n)}) for n, d in enumerate(issued)] * 3
    results = list(client.stream_rewrap(iter(items), items_per_message=128))
    assert len(results) == 3000 and all(r.key_version == 2 for r in results)
    opened = client.decrypt_data_keys([(r.wrapped_key, {"n": str(n % 1000)}) for n, r in enumerate(results[:1000])])
    assert [o.plaintext for o in opened] == [d.plaintext for d in issued]


def test_health_reports_serving_and_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        [answer] = list(
            reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in answer.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_a_deadline_that_passes_while_a_batch_runs_stops_it_on_the_server(client):
    """The deadline is still ahead when the call arrives, so the batch starts; the server checks
    it before each item and stops once it has passed: DEADLINE_EXCEEDED, reason DeadlineExceeded,
    with only some of the items done. The client's own timer fires at about the same moment and
    may answer the caller first, so the server's verdict is read from its audit log."""
    client.create_key("orders")
    items = [("orders", {"n": str(n)}) for n in range(1000)]
    client.generate_data_keys(items, timeout=300)  # warm caches first: time a batch at its usual pace
    started = time.monotonic()
    assert len(client.generate_data_keys(items, timeout=300)) == 1000
    whole_batch = time.monotonic() - started
    with pytest.raises(kms_client.DeadlineExceeded):
        client.generate_data_keys(items, timeout=whole_batch / 3)
    stopped = _audit_record(client, rpc="BatchGenerateDataKey", item=-1, outcome="DEADLINE_EXCEEDED")
    assert stopped.reason == "DeadlineExceeded"
    events = list(client.audit_events())
    finished = [e for e in events if e.rpc == "BatchGenerateDataKey" and e.item == -1 and e.outcome == "OK"][-1]
    done = [e for e in events if finished.seq < e.seq < stopped.seq and e.rpc == "BatchGenerateDataKey"]
    assert len(done) < 1000 and all(e.outcome == "OK" for e in done)  # stopped between items, not cut off in one


def _audit_record(client, timeout: float = 60, **fields):
    """The first audit record with ``fields``, once the server has written it."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in client.audit_events() if all(getattr(e, k) == v for k, v in fields.items())]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            pytest.fail(f"no audit record with {fields} after {timeout}s")
        time.sleep(0.1)


def test_many_threads_thousands_of_calls_zero_errors(server, client):
    client.create_key("busy")
    errors, counts = [], []

    def worker(n: int) -> None:
        ok = 0
        try:
            for _ in range(60):
                issued = client.generate_data_key("busy", {"worker": str(n)})
                assert client.decrypt_data_key(issued.wrapped_key, {"worker": str(n)}).plaintext == issued.plaintext
                ok += 2
        except Exception as error:  # noqa: BLE001
            errors.append(repr(error))
        counts.append(ok)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # every call has the client's 30 s deadline: a hung call is an error below
    assert errors == []
    assert sum(counts) == 32 * 60 * 2


def test_idle_streams_cannot_take_every_worker(server, client):
    """Each open stream holds a server thread: past a few, new ones are refused at once with
    RESOURCE_EXHAUSTED, and unary calls go on being served."""
    import threading

    quiet = threading.Event()

    def nothing_yet():
        quiet.wait(30)
        return
        yield  # a generator that sends no message until released

    channel = grpc.insecure_channel(server.target)
    stream = channel.stream_stream(
        f"/{SERVICE_NAME}/StreamReWrap", response_deserializer=pb.BatchReWrapResponse.FromString
    )
    opened = [stream(nothing_yet(), timeout=30) for _ in range(server.settings.max_workers)]
    try:
        client.create_key("still-served")  # a unary call gets a worker
        assert client.get_key("still-served").primary_version == 1
        codes = set()
        quiet.set()
        for call in opened:
            try:
                list(call)
                codes.add("OK")
            except grpc.RpcError as error:
                codes.add(error.code().name)
        assert codes == {"OK", "RESOURCE_EXHAUSTED"}
    finally:
        quiet.set()
        for call in opened:
            call.cancel()
        channel.close()
    assert list(client.stream_rewrap([])) == []  # slots are given back


def test_durations_out_of_range_or_below_the_minimum_are_invalid_not_internal(client):
    from datetime import timedelta

    client.create_key("orders")
    client.rotate_key("orders")
    client.generate_data_key("orders", {})
    with pytest.raises(kms_client.InvalidArgument, match="pending window must be at least"):
        client.schedule_key_version_destruction("orders", 1, pending_window=timedelta(0))  # not the 30-day default
    with pytest.raises(kms_client.InvalidArgument, match="min_idle must be a duration from 0 to 100 years"):
        client.retire_key_version("orders", 1, min_idle=timedelta(days=1_000_000))
    assert client.get_key("orders").versions[0].state == "ENABLED"
