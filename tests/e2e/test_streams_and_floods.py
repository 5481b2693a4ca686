"""From the attacker's side: streams that would starve the server, and refused calls that would
be free. Over mutual TLS, with every window, budget and idle timeout on a hand-moved clock.

Claims attacked (kms.api.streams, kms.api.handlers, kms.service.recording, kms.domain.repeats,
Authorizer.admit and charge_failures):

- a stream takes a slot only once authorized, at most KMS_MAX_STREAMS per server and
  KMS_MAX_STREAMS_PER_IDENTITY per identity; an idle stream is cancelled; unary calls and health
  checks answer while every slot is held; a cancelled stream is CANCELLED and audited so, with
  no error logged;
- an identity without any grant is refused at the door; every refused call or item spends the
  identity's failure budget, after which calls get RESOURCE_EXHAUSTED with retry information; a
  flood of refused items adds a bounded number of records, its summary inside the hash chain.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kms_proto.kms.v1 import kms_pb2 as pb
from tests.support.attack import (
    AUDITOR,
    OTHER,
    RETRY_AFTER_KEY,
    ManualMonotonic,
    Stubs,
    blocked_requests,
    channel,
    log_text,
    reason,
    refused,
    start,
)
from tests.support.fixtures import ADMIN, APP

IDLE = 30.0
CONTEXT = {"tenant": "acme"}


@pytest.fixture
def monotonic():
    return ManualMonotonic()


@pytest.fixture
def release():
    """Set at teardown (before the server stops) so that every held stream's requests end."""
    event = threading.Event()
    yield event
    event.set()


def _server(mtls_settings, monkeypatch, monotonic, **overrides):
    values = {"max_streams": 4, "max_streams_per_identity": 2, "stream_idle_timeout": timedelta(seconds=IDLE)}
    values.update(overrides)
    return start(mtls_settings.model_copy(update=values), monkeypatch, monotonic)


@pytest.fixture
def server(mtls_settings, monkeypatch, monotonic):
    app = _server(mtls_settings, monkeypatch, monotonic, quota_failures="off")
    yield app
    app.stop(grace=1)


@pytest.fixture
def budget_server(mtls_settings, monkeypatch, monotonic):
    """Ten refused calls or items, then one more per (hand-moved) second."""
    app = _server(mtls_settings, monkeypatch, monotonic, quota_failures="1:10")
    yield app
    app.stop(grace=1)


@pytest.fixture
def stubs(dev_certs, release):
    opened = []

    def make(server, name: str, options=()) -> Stubs:
        made = Stubs(channel(server, dev_certs, name, options))
        opened.append(made.channel)
        return made

    yield make
    release.set()
    for made in opened:
        made.close()


def _world(app, stubs):
    """Keys "orders" and "mine"; the application may re-wrap and encrypt on "orders"; the auditor
    identity holds a grant, but neither rewrap nor audit-read; "other" holds nothing yet."""
    admin = stubs(app, "admin")
    for key_id in ("orders", "mine"):
        admin.keys.CreateKey(pb.CreateKeyRequest(key_id=key_id), timeout=10)
    _grant(admin, APP, "orders", ["rewrap", "encrypt"])
    _grant(admin, AUDITOR, "orders", ["encrypt"])
    return admin


def _grant(admin: Stubs, principal: str, resource: str, permissions: list[str]) -> pb.Grant:
    return admin.policy.GrantPermissions(
        pb.GrantPermissionsRequest(principal=principal, resource=resource, permissions=permissions), timeout=10
    )


def _events(admin: Stubs, **filters) -> list[pb.AuditEvent]:
    return list(admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(**filters), timeout=30))


def _no_errors_logged(caplog) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, log_text(bad)


# --- streams -----------------------------------------------------------------------------


def test_streams_beyond_the_server_limit_get_too_many_streams_while_unary_calls_and_health_checks_answer(
    server, stubs, release
):
    admin = _world(server, stubs)
    application, other = stubs(server, "app"), stubs(server, "other")
    _grant(admin, OTHER, "*", ["rewrap", "audit-read"])
    held = [s.keys.StreamReWrap(blocked_requests(release)) for s in (admin, admin, application, application)]
    server.streams.wait_for(lambda: server.streams.held == 4)

    for attempt in (
        lambda: other.keys.StreamReWrap(iter([]), timeout=10),
        lambda: other.audit.ListAuditEvents(pb.ListAuditEventsRequest(), timeout=10),
    ):
        error = refused(attempt)
        assert (error.code(), reason(error)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TooManyStreams")
        assert "this server has 4 streams open" in error.details()

    health = health_pb2_grpc.HealthStub(other.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert admin.keys.CreateKey(pb.CreateKeyRequest(key_id="during"), timeout=10).key_id == "during"
    assert application.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).key_version == 1

    release.set()
    for call in held:
        assert list(call) == [] and call.code() == grpc.StatusCode.OK
    server.streams.wait_for(lambda: server.streams.held == 0)
    assert list(other.keys.StreamReWrap(iter([]), timeout=10)) == []  # a freed slot is taken again
    refusals = [e for e in _events(admin, identity=OTHER) if e.outcome == "RESOURCE_EXHAUSTED"]
    assert {(e.rpc, e.reason) for e in refusals} == {
        ("StreamReWrap", "TooManyStreams"),
        ("ListAuditEvents", "TooManyStreams"),
    }


def test_one_identity_gets_at_most_its_share_of_stream_slots(server, stubs, release):
    admin = _world(server, stubs)
    application = stubs(server, "app")
    _grant(admin, OTHER, "orders", ["rewrap"])
    held = [application.keys.StreamReWrap(blocked_requests(release)) for _ in range(2)]
    server.streams.wait_for(lambda: server.streams.held == 2)

    error = refused(lambda: application.keys.StreamReWrap(iter([]), timeout=10))
    assert (error.code(), reason(error)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TooManyStreams")
    assert "this identity has 2 streams open" in error.details()
    assert list(stubs(server, "other").keys.StreamReWrap(iter([]), timeout=10)) == []  # the server has room

    release.set()
    for call in held:
        list(call)
    server.streams.wait_for(lambda: server.streams.held == 0)
    assert list(application.keys.StreamReWrap(iter([]), timeout=10)) == []


def test_an_identity_without_the_permission_never_holds_a_stream_slot(server, stubs, release):
    """Even with every slot taken, the refusal is PERMISSION_DENIED (authorization comes first),
    and no slot was ever opened for it."""
    admin = _world(server, stubs)
    application = stubs(server, "app")
    held = [s.keys.StreamReWrap(blocked_requests(release)) for s in (admin, admin, application, application)]
    server.streams.wait_for(lambda: server.streams.held == 4)

    auditor, other = stubs(server, "auditor"), stubs(server, "other")
    for _ in range(3):
        for caller, expected in ((auditor, "lacks"), (other, "holds no grant")):
            for attempt in (
                lambda caller=caller: caller.keys.StreamReWrap(iter([pb.BatchReWrapRequest()]), timeout=10),
                lambda caller=caller: caller.audit.ListAuditEvents(pb.ListAuditEventsRequest(), timeout=10),
            ):
                error = refused(attempt)
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED and expected in error.details()
    assert AUDITOR not in server.streams.opened and OTHER not in server.streams.opened
    release.set()
    for call in held:
        list(call)


def test_an_idle_stream_is_cancelled_and_gives_its_slot_back(server, stubs, release, monotonic, caplog):
    caplog.set_level(logging.INFO)
    admin = _world(server, stubs)
    call = stubs(server, "app").keys.StreamReWrap(blocked_requests(release))
    server.streams.wait_for(lambda: server.streams.held == 1)

    monotonic.advance(IDLE - 1)
    server.streams.cancel_idle()
    assert server.streams.held == 1  # not idle for long enough yet
    monotonic.advance(2)
    server.streams.cancel_idle()
    server.streams.wait_for(lambda: server.streams.held == 0)

    assert refused(lambda: list(call)).code() == grpc.StatusCode.CANCELLED
    assert [e.item for e in _events(admin, identity=APP) if e.rpc == "StreamReWrap"] == [-1]
    _no_errors_logged(caplog)


def test_streams_cancelled_while_waiting_for_requests_all_end_cancelled_and_leave_one_record_each(
    server, stubs, release, monotonic, caplog
):
    """Forty streams, each waiting for its next request: half cancelled by the client, half by
    the idle watchdog. (How each is recorded is pinned by the test after this one.)"""
    caplog.set_level(logging.INFO)
    admin = _world(server, stubs)
    wrapped = admin.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).wrapped_key
    first = pb.BatchReWrapRequest(requests=[pb.ReWrapRequest(wrapped_key=wrapped)])
    application = stubs(server, "app")
    for attempt in range(40):
        call = application.keys.StreamReWrap(blocked_requests(release, [first]))
        assert next(call).results[0].rewrapped.key_id == "orders"
        if attempt % 2:
            call.cancel()
        else:
            monotonic.advance(IDLE + 1)
            server.streams.cancel_idle()
        server.streams.wait_for(lambda attempt=attempt: server.streams.released == attempt + 1)
        assert refused(lambda call=call: list(call)).code() == grpc.StatusCode.CANCELLED

    ended = [e.outcome for e in _events(admin, identity=APP) if e.rpc == "StreamReWrap" and e.item == -1]
    assert len(ended) == 40 and set(ended) <= {"CANCELLED", "OK"}
    _no_errors_logged(caplog)


class _Caller:
    """What grpc hands a stream handler, as far as the pipeline uses it."""

    def __init__(self) -> None:
        self.active = True

    def invocation_metadata(self):
        return ()

    def time_remaining(self) -> None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def is_active(self) -> bool:
        return self.active

    def cancel(self) -> None:
        self.active = False

    def set_trailing_metadata(self, metadata) -> None:
        pass

    def abort(self, code, details):
        raise AssertionError(f"aborted with {code}: {details}")


class _Recorder:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []

    def admit(self, call, **options) -> None:
        pass

    def record_items(self, call) -> None:
        pass

    def finish(self, call, error, *, action=None, fail_open=False):
        self.finished.append((error.code, error.reason) if error is not None else ("OK", ""))
        return error


class _App:
    def authenticate(self, context):
        return APP, frozenset()


@pytest.mark.parametrize("by", ["client", "idle watchdog"])
def test_a_stream_whose_requests_end_because_it_was_cancelled_is_recorded_cancelled(by):
    from kms.api.handlers import Pipeline
    from kms.api.streams import StreamLimits

    monotonic = ManualMonotonic()
    streams = StreamLimits(4, 2, IDLE, monotonic=monotonic)
    recorder = _Recorder()
    caller = _Caller()

    def requests():
        yield pb.BatchReWrapRequest().SerializeToString()
        if by == "client":
            caller.cancel()
        else:
            monotonic.advance(IDLE + 1)
            streams.cancel_idle()
        # grpc's _RequestIterator: the last receive completed empty before the cancellation was
        # seen, so iteration simply stops.

    def behavior(parsed, call):
        return (pb.BatchReWrapResponse() for _ in parsed)

    handle = Pipeline(_App(), recorder, streams).bidirectional("StreamReWrap", pb.BatchReWrapRequest, behavior)
    try:
        assert len(list(handle(requests(), caller))) == 1
    finally:
        streams.stop()
    assert recorder.finished == [("CANCELLED", "Cancelled" if by == "client" else "StreamIdle")]


def _fill_the_audit_log(admin: Stubs, batches: int = 3) -> None:
    """Thousands of records (unknown keys are NOT_FOUND per item, recorded one by one): more
    than HTTP/2 flow control lets a server send to a client that does not read."""
    for batch in range(batches):
        requests = [pb.GenerateDataKeyRequest(key_id=f"missing-{batch}-{n}-" + "x" * 40) for n in range(1000)]
        admin.keys.BatchGenerateDataKey(pb.BatchGenerateDataKeyRequest(requests=requests), timeout=60)


# A client that does not read: its window never grows past the initial 64 KiB.
_NO_READ_AHEAD = [("grpc.http2.bdp_probe", 0)]


def test_a_reader_that_stops_taking_audit_events_is_cancelled_as_idle(server, stubs, monotonic, caplog):
    caplog.set_level(logging.INFO)
    admin = _world(server, stubs)
    _fill_the_audit_log(admin)
    reader = stubs(server, "admin", _NO_READ_AHEAD)
    call = reader.audit.ListAuditEvents(pb.ListAuditEventsRequest(), timeout=120)
    assert next(call).seq == 1
    # The server sends until flow control stops it; from then on it makes no progress.
    for _ in range(600):
        monotonic.advance(IDLE + 1)
        server.streams.cancel_idle()
        with server.streams.changed:
            if server.streams.changed.wait_for(lambda: server.streams.held == 0, timeout=0.05):
                break
    assert server.streams.held == 0

    assert refused(lambda: list(call)).code() == grpc.StatusCode.CANCELLED
    mine = [(e.outcome, e.reason) for e in _events(admin, identity=ADMIN) if e.rpc == "ListAuditEvents"]
    assert ("CANCELLED", "StreamIdle") in mine
    _no_errors_logged(caplog)


def test_a_client_that_cancels_a_bidirectional_stream_gets_cancelled_and_its_items_stay_recorded(
    server, stubs, release, caplog
):
    caplog.set_level(logging.INFO)
    admin = _world(server, stubs)
    wrapped = admin.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).wrapped_key
    first = pb.BatchReWrapRequest(requests=[pb.ReWrapRequest(wrapped_key=wrapped)])
    call = stubs(server, "app").keys.StreamReWrap(blocked_requests(release, [first]))
    assert next(call).results[0].rewrapped.key_id == "orders"
    call.cancel()
    server.streams.wait_for(lambda: server.streams.held == 0)

    assert call.code() == grpc.StatusCode.CANCELLED
    streamed = [(e.item, e.outcome, e.key_id) for e in _events(admin, identity=APP) if e.rpc == "StreamReWrap"]
    assert streamed[0] == (0, "OK", "orders") and [item for item, _, _ in streamed] == [0, -1]
    _no_errors_logged(caplog)


def test_a_client_that_cancels_an_audit_stream_gets_cancelled_and_is_audited_so(server, stubs, caplog):
    caplog.set_level(logging.INFO)
    admin = _world(server, stubs)
    _fill_the_audit_log(admin, batches=1)
    reader = stubs(server, "admin", _NO_READ_AHEAD)
    call = reader.audit.ListAuditEvents(pb.ListAuditEventsRequest(), timeout=60)
    assert next(call).seq == 1
    call.cancel()
    server.streams.wait_for(lambda: server.streams.held == 0)

    assert call.code() == grpc.StatusCode.CANCELLED
    reads = [(e.outcome, e.reason) for e in _events(admin, identity=ADMIN) if e.rpc == "ListAuditEvents"]
    assert reads[:2] == [("OK", ""), ("CANCELLED", "Cancelled")]
    _no_errors_logged(caplog)


# --- refused calls are not free ---------------------------------------------------------------


def test_an_identity_without_any_grant_is_refused_at_the_door_before_its_request_is_read(server, stubs):
    _world(server, stubs)
    other = stubs(server, "other")
    error = refused(lambda: other.keys.GetKey(pb.GetKeyRequest(key_id="orders"), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"{OTHER} holds no grant"
    garbage = other.channel.unary_unary("/kms.v1.KeyManagementService/GetKey")
    error = refused(lambda: garbage(b"\xff\xff\xff", timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED  # not INVALID_ARGUMENT: never parsed


def _retry_after_ms(error: grpc.RpcError) -> int:
    return int(dict(error.trailing_metadata())[RETRY_AFTER_KEY])


def test_refused_calls_spend_the_failure_budget_then_calls_get_resource_exhausted_with_retry_information(
    budget_server, stubs, monotonic
):
    admin = _world(budget_server, stubs)
    other = stubs(budget_server, "other")
    get = lambda: other.keys.GetKey(pb.GetKeyRequest(key_id="orders"), timeout=10)  # noqa: E731
    for _ in range(10):
        assert refused(get).code() == grpc.StatusCode.PERMISSION_DENIED
    for _ in range(5):  # turned away at the door; that costs nothing more
        error = refused(get)
        assert (error.code(), reason(error)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RateLimited")
        assert "rate limit for failed calls exceeded" in error.details() and _retry_after_ms(error) == 1000
    monotonic.advance(1.0)
    assert refused(get).code() == grpc.StatusCode.PERMISSION_DENIED  # one refused call per second
    assert refused(get).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The budget is the identity's own: the admin is not slowed down.
    assert admin.keys.GetKey(pb.GetKeyRequest(key_id="orders"), timeout=10).key_id == "orders"


def test_every_refused_batch_item_is_charged_to_the_failure_budget(budget_server, stubs):
    admin = _world(budget_server, stubs)
    _grant(admin, AUDITOR, "mine", ["decrypt"])
    foreign = admin.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).wrapped_key
    own = admin.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="mine"), timeout=10).wrapped_key
    auditor = stubs(budget_server, "auditor")
    batch = pb.BatchDecryptRequest(requests=[pb.DecryptRequest(wrapped_key=foreign)] * 1000)
    results = auditor.keys.BatchDecrypt(batch, timeout=30).results
    assert {r.error.reason for r in results} == {"PermissionDenied"}
    # A thousand refusals put the identity 10 calls (its burst) into debt: 11 s to the next one.
    error = refused(lambda: auditor.keys.Decrypt(pb.DecryptRequest(wrapped_key=own), timeout=10))
    assert (error.code(), _retry_after_ms(error)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 11_000)


def test_a_flood_of_refused_batch_items_adds_a_bounded_number_of_records_summarized_inside_the_chain(
    server, stubs, monotonic
):
    admin = _world(server, stubs)
    _grant(admin, AUDITOR, "mine", ["decrypt"])
    foreign = admin.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).wrapped_key
    auditor = stubs(server, "auditor")
    batch = pb.BatchDecryptRequest(requests=[pb.DecryptRequest(wrapped_key=foreign)] * 1000)
    for _ in range(5):
        results = auditor.keys.BatchDecrypt(batch, timeout=30).results
        assert len(results) == 1000 and {r.error.reason for r in results} == {"PermissionDenied"}
    monotonic.advance(10)  # KMS_AUDIT_REPEAT_WINDOW
    server.services.recorder.flush_repeats()

    flood = [(e.rpc, e.item, e.outcome, e.key_id) for e in _events(admin, identity=AUDITOR)]
    assert flood == [("BatchDecrypt", 0, "PERMISSION_DENIED", "orders")] + [("BatchDecrypt", -1, "OK", "")] * 5 + [
        ("BatchDecrypt", -1, "PERMISSION_DENIED", "")
    ]
    summary = _events(admin, identity=AUDITOR)[-1]
    assert summary.detail.startswith("4999 more like this from ") and summary.detail.endswith("; key ids orders")
    verified = admin.audit.VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=30)
    assert verified.intact and verified.records_checked >= summary.seq


def test_with_a_budget_a_repeated_flood_is_turned_away_at_the_door_and_still_bounded(budget_server, stubs, monotonic):
    admin = _world(budget_server, stubs)
    _grant(admin, AUDITOR, "mine", ["decrypt"])
    foreign = admin.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders"), timeout=10).wrapped_key
    auditor = stubs(budget_server, "auditor")
    batch = pb.BatchDecryptRequest(requests=[pb.DecryptRequest(wrapped_key=foreign)] * 1000)
    auditor.keys.BatchDecrypt(batch, timeout=30)
    for _ in range(20):
        assert refused(lambda: auditor.keys.BatchDecrypt(batch, timeout=30)).code() == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    monotonic.advance(10)
    budget_server.services.recorder.flush_repeats()
    flood = [(e.item, e.outcome, e.detail.split(" from ")[0]) for e in _events(admin, identity=AUDITOR)]
    assert sorted(flood) == sorted(
        [
            (0, "PERMISSION_DENIED", ""),
            (-1, "OK", "1000 items"),
            (-1, "RESOURCE_EXHAUSTED", ""),
            (-1, "PERMISSION_DENIED", "999 more like this"),
            (-1, "RESOURCE_EXHAUSTED", "19 more like this"),
        ]
    )
    assert admin.audit.VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=30).intact


def test_a_stream_cannot_go_on_being_refused_after_the_failure_budget_is_spent(budget_server, stubs):
    admin = _world(budget_server, stubs)
    foreign = admin.keys.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="mine"), timeout=10).wrapped_key
    outgoing: queue.Queue = queue.Queue()

    def requests():
        while (message := outgoing.get(timeout=60)) is not None:
            yield message

    batch = pb.BatchReWrapRequest(requests=[pb.ReWrapRequest(wrapped_key=foreign)] * 20)
    call = stubs(budget_server, "app").keys.StreamReWrap(requests(), timeout=60)
    try:
        outgoing.put(batch)
        assert {r.error.reason for r in next(call).results} == {"PermissionDenied"}  # 20 refusals: spent
        outgoing.put(batch)
        try:
            later = {r.error.reason for r in next(call).results}
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            assert later == {"RateLimited"}, f"refused items still evaluated after the budget was spent: {later}"
    finally:
        outgoing.put(None)
        call.cancel()


# --- streams outside the pipeline -------------------------------------------------------------


def test_a_misconfigured_stream_limit_still_leaves_half_the_workers_to_unary_calls_and_health_checks(
    mtls_settings, monkeypatch, monotonic, stubs, release
):
    app = _server(mtls_settings, monkeypatch, monotonic, max_workers=4, max_streams=64, max_streams_per_identity=64)
    try:
        admin = stubs(app, "admin")
        admin.keys.CreateKey(pb.CreateKeyRequest(key_id="orders"), timeout=10)
        held = [admin.keys.StreamReWrap(blocked_requests(release)) for _ in range(2)]
        app.streams.wait_for(lambda: app.streams.held == 2)
        error = refused(lambda: admin.keys.StreamReWrap(iter([]), timeout=10))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == "this server has 2 streams open already; retry later or use the batch calls"
        health = health_pb2_grpc.HealthStub(admin.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert admin.keys.GetKey(pb.GetKeyRequest(key_id="orders"), timeout=10).key_id == "orders"
        release.set()
        for call in held:
            list(call)
    finally:
        release.set()
        app.stop(grace=1)


def test_streams_outside_the_pipeline_cannot_take_every_worker(mtls_settings, monkeypatch, monotonic, stubs, release):
    """Server reflection is grpcio's own service: it is rationed like the pipeline's streams. A
    caller with no grant gets none; one with grants gets its per-identity share, and health
    checks and unary calls still answer while every reflection stream it may hold is open."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    app = _server(mtls_settings, monkeypatch, monotonic, max_workers=4)
    try:
        admin, other = stubs(app, "admin"), stubs(app, "other")  # "other" holds no grant at all
        admin.keys.CreateKey(pb.CreateKeyRequest(key_id="orders"), timeout=10)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        stranger = reflection_pb2_grpc.ServerReflectionStub(other.channel).ServerReflectionInfo(
            blocked_requests(release, [ask]), timeout=10
        )
        with pytest.raises(grpc.RpcError) as refused_stranger:
            next(stranger)
        assert refused_stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reflection = reflection_pb2_grpc.ServerReflectionStub(admin.channel)
        held = []
        for _ in range(2):  # KMS_MAX_STREAMS_PER_IDENTITY
            call = reflection.ServerReflectionInfo(blocked_requests(release, [ask]))
            assert next(call).list_services_response.service  # answered: a worker now waits on it
            held.append(call)
        beyond = reflection.ServerReflectionInfo(blocked_requests(release, [ask]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused_beyond:
            next(beyond)
        assert refused_beyond.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        answers = [
            health_pb2_grpc.HealthStub(admin.channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status,
            admin.keys.GetKey(pb.GetKeyRequest(key_id="orders"), timeout=3).key_id,
        ]
        assert answers == [health_pb2.HealthCheckResponse.SERVING, "orders"]
    finally:
        release.set()
        app.stop(grace=1)
