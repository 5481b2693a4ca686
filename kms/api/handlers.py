"""The path every RPC takes: authenticate, admit, parse, call the servicer, record, map errors.

Handlers are built from the service descriptors instead of the generated ``add_*_to_server`` so
that request bytes are parsed here: grpcio answers a request it cannot deserialize with INTERNAL,
while a client that sends garbage deserves INVALID_ARGUMENT.

What the audit log records of a call is decided by the use cases (they note it on the call's
trail, kms.service.calls); this module only guarantees the order: the call's records are
journaled (kms.service.recording.CallRecorder.finish) before its result is released, and when
they cannot be, the caller gets UNAVAILABLE instead of the result. A client that cancels gets
CANCELLED, recorded as such, and no error is logged.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from kms.api.errors import REASON_KEY, status_code
from kms.api.streams import StreamLimits, StreamSlot
from kms.errors import Cancelled, Internal, KmsError, MalformedRequest, RateLimited, StreamIdle
from kms.service.calls import Call
from kms.service.recording import CallRecorder

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after-ms"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

RPCS = Counter("kms_rpcs", "RPCs handled, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "kms_rpc_duration_seconds",
    "Time spent handling RPCs",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)


class Authenticator(Protocol):
    """Who is calling. The seam where transport security plugs in."""

    def authenticate(self, context: grpc.ServicerContext) -> tuple[str, frozenset[str]]:
        """The caller's identity and groups; raises Unauthenticated."""
        ...


# Reading and verifying the audit log releases no key material, and must keep working when the
# log itself is damaged: its own records are logged rather than withheld if they cannot be written.
_AUDIT_FAIL_OPEN = frozenset({"ListAuditEvents", "VerifyAuditLog"})


def build_handlers(
    services: Sequence[tuple[Any, object]],
    authenticator: Authenticator,
    recorder: CallRecorder,
    streams: StreamLimits,
) -> list[grpc.GenericRpcHandler]:
    """One generic handler per (service descriptor, servicer)."""
    pipeline = Pipeline(authenticator, recorder, streams)
    handlers = []
    for descriptor, servicer in services:
        methods = {}
        for method in descriptor.methods:
            request_type = message_factory.GetMessageClass(method.input_type)
            serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
            behavior = getattr(servicer, method.name, None)
            if behavior is None:
                # Only while a newly declared RPC is being built: gRPC answers UNIMPLEMENTED.
                # tests/unit/test_every_rpc_is_served.py fails for as long as any is missing.
                continue
            if method.client_streaming and method.server_streaming:
                methods[method.name] = grpc.stream_stream_rpc_method_handler(
                    pipeline.bidirectional(method.name, request_type, behavior), response_serializer=serializer
                )
            elif method.server_streaming:
                methods[method.name] = grpc.unary_stream_rpc_method_handler(
                    pipeline.server_streaming(method.name, request_type, behavior), response_serializer=serializer
                )
            elif not method.client_streaming:
                methods[method.name] = grpc.unary_unary_rpc_method_handler(
                    pipeline.unary(method.name, request_type, behavior), response_serializer=serializer
                )
            else:
                raise TypeError(f"no handler shape for {method.name}")
        handlers.append(grpc.method_handlers_generic_handler(descriptor.full_name, methods))
    return handlers


class Pipeline:
    """Wraps a behavior ``(request, call) -> response`` into a grpcio handler function."""

    def __init__(self, authenticator: Authenticator, recorder: CallRecorder, streams: StreamLimits) -> None:
        self._authenticator = authenticator
        self._recorder = recorder
        self._streams = streams

    def unary(self, name: str, request_type: Any, behavior: Callable[[Any, Call], Any]) -> Callable:
        fail_open = name in _AUDIT_FAIL_OPEN
        # Bound once: looking a labelled child up costs a lock and a dict probe per call.
        seconds, succeeded = RPC_SECONDS.labels(name), RPCS.labels(name, "OK")

        def handle(raw: bytes, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            response = None
            if error is None:
                try:
                    response = behavior(_parse(request_type, raw), call)
                except KmsError as exc:
                    error = exc
                except Exception:  # noqa: BLE001 - anything else is a bug: logged, answered INTERNAL without details
                    error = _internal(name, call)
            error = self._recorder.finish(call, error, fail_open=fail_open)
            seconds.observe(time.perf_counter() - started)
            if error is None:
                succeeded.inc()
                return response
            RPCS.labels(name, error.code).inc()
            _abort(context, call, error)

        return handle

    def server_streaming(
        self, name: str, request_type: Any, behavior: Callable[[Any, Call], Iterator[Any]]
    ) -> Callable:
        """The behavior authorizes when called and returns the messages to send. The call is
        recorded before the first message is released; a stream that then ends in an error, is
        cancelled or goes idle gets a second record saying how it ended."""
        fail_open = name in _AUDIT_FAIL_OPEN

        def handle(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            slot: StreamSlot | None = None
            results: Iterator[Any] = iter(())
            first: Any = _END
            ended = False
            try:
                if error is None:
                    try:
                        results = iter(behavior(_parse(request_type, raw), call))
                        slot = self._streams.open(call.identity, context)
                        first = next(results, _END)
                    except KmsError as exc:
                        error = exc
                    except Exception:  # noqa: BLE001 - anything else is a bug: logged, answered INTERNAL without details
                        error = _internal(name, call)
                error = self._recorder.finish(call, error, fail_open=fail_open)
                if error is None:
                    try:
                        if first is not _END:
                            yield first
                            _progress(slot)
                        for message in results:
                            yield message
                            _progress(slot)
                    except KmsError as exc:
                        error = self._recorder.finish(call, exc, fail_open=fail_open)
                    except Exception:  # noqa: BLE001 - anything else is a bug: logged, answered INTERNAL without details
                        error = self._recorder.finish(call, _internal(name, call), fail_open=fail_open)
                ended = True
            finally:
                if not ended:  # the client went away (or the idle watchdog cancelled): GeneratorExit
                    error = _cancelled(slot)
                    self._recorder.finish(call, error, fail_open=True)
                if slot is not None:
                    slot.close()
                _measure(name, error, started)
            if error is not None:
                _abort(context, call, error)

        return handle

    def bidirectional(self, name: str, request_type: Any, behavior: Callable[[Any, Call], Iterator[Any]]) -> Callable:
        """For streams whose response messages answer the request messages one for one and in
        order (StreamReWrap). The behavior authorizes when called, before the stream takes a
        slot; each response is released once its items' records are journaled, and the call
        itself always gets a record, however it ends."""

        def handle(raw_requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            slot: list[StreamSlot] = []  # set once authorized; read by the request reader
            ended = False
            try:
                if error is None:
                    try:
                        responses = iter(behavior(_parse_each(request_type, raw_requests, slot), call))
                        slot.append(self._streams.open(call.identity, context))
                        for response in responses:
                            self._recorder.record_items(call)
                            call.check_deadline()
                            yield response
                            _progress(slot[0])
                            # A stream is admitted again after every message: one whose caller
                            # has since spent its failure budget (or lost every grant) ends.
                            self._recorder.admit(call)
                        if not context.is_active():  # the requests ended because the call was cancelled
                            raise _cancelled(slot[0] if slot else None)
                    except KmsError as exc:
                        error = exc
                    except grpc.RpcError:  # raised by the request iterator when the client cancels
                        error = (
                            _cancelled(slot[0] if slot else None) if not context.is_active() else _internal(name, call)
                        )
                    except Exception:  # noqa: BLE001 - anything else is a bug: logged, answered INTERNAL without details
                        error = _internal(name, call)
                error = self._recorder.finish(call, error)
                ended = True
            finally:
                if not ended:
                    error = _cancelled(slot[0] if slot else None)
                    self._recorder.finish(call, error, fail_open=True)
                if slot:
                    slot[0].close()
                _measure(name, error, started)
            if error is not None:
                _abort(context, call, error)

        return handle

    def _begin(self, context: grpc.ServicerContext, name: str) -> tuple[Call, KmsError | None]:
        request_id = ""
        for key, value in context.invocation_metadata():
            if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
                request_id = value
        request_id = request_id or f"{_ID_PREFIX}-{next(_ids):x}"
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        peer = context.peer()
        try:
            identity, groups = self._authenticator.authenticate(context)
        except KmsError as error:
            return Call(identity="", request_id=request_id, peer=peer, method=name, deadline=deadline), error
        call = Call(identity=identity, groups=groups, request_id=request_id, peer=peer, method=name, deadline=deadline)
        try:
            self._recorder.admit(call, audited=name not in _AUDIT_FAIL_OPEN)
        except KmsError as error:
            return call, error
        return call, None


_END = object()
# Request ids for callers that send none: unique per process start, without a system call.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count(1)


def _internal(name: str, call: Call) -> Internal:
    log.exception("unhandled error", extra={"fields": {"method": name, "request_id": call.request_id}})
    return Internal(call.request_id)


def _cancelled(slot: StreamSlot | None) -> Cancelled:
    return StreamIdle() if slot is not None and slot.idle else Cancelled()


def _progress(slot: StreamSlot | None) -> None:
    if slot is not None:
        slot.progress()


def _parse(request_type: Any, raw: bytes) -> Any:
    try:
        return request_type.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError):
        raise MalformedRequest(f"request is not a valid {request_type.DESCRIPTOR.full_name}") from None


def _parse_each(request_type: Any, raw_requests: Iterator[bytes], slot: list[StreamSlot]) -> Iterator[Any]:
    """Each request parsed; one that does not parse becomes a MalformedRequest item, so the
    stream goes on. Reading a request is progress."""
    for raw in raw_requests:
        if slot:
            slot[0].progress()
        try:
            yield _parse(request_type, raw)
        except MalformedRequest as error:
            yield error


def _measure(name: str, error: KmsError | None, started: float) -> None:
    code = "OK" if error is None else error.code
    RPCS.labels(name, code).inc()
    RPC_SECONDS.labels(name).observe(time.perf_counter() - started)


def _abort(context: grpc.ServicerContext, call: Call, error: KmsError) -> None:
    metadata = [(REASON_KEY, error.reason), (REQUEST_ID_KEY, call.request_id)]
    if isinstance(error, RateLimited):
        metadata.append((RETRY_AFTER_KEY, str(max(1, int(error.retry_after * 1000)))))
    if isinstance(error, Cancelled) and not context.is_active():
        return  # nobody to tell
    context.set_trailing_metadata(tuple(metadata))
    context.abort(status_code(error), error.message)
