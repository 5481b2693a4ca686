"""The path every RPC takes: parse, authenticate, call the servicer, audit, map errors, measure.

Handlers are built from the service descriptors instead of the generated ``add_*_to_server`` so
that request bytes are parsed here: grpcio answers a request it cannot deserialize with INTERNAL,
while a client that sends garbage deserves INVALID_ARGUMENT.

No result leaves before its audit record is written down (kms.service.audit): when the record
cannot be, the caller gets UNAVAILABLE instead of the result.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from kms.api.audit_entries import AuditEntries
from kms.api.errors import REASON_KEY, status_code
from kms.errors import AuditUnavailable, KmsError, MalformedRequest, RateLimited, TooManyStreams
from kms.service.calls import Call

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


class Auditor(Protocol):
    def record(self, entries: Sequence[Any], *, fail_open: bool = False) -> None:
        """Returns once ``entries`` are written down; raises AuditUnavailable otherwise."""
        ...


class InternalError(KmsError):
    """A bug. The details go to the log under the request id, never to the client."""

    code = "INTERNAL"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"internal error (request id {request_id})")


# Reading and verifying the audit log releases no key material, and must keep working when the
# log itself is damaged: its own records are logged rather than withheld if they cannot be written.
_AUDIT_FAIL_OPEN = frozenset({"ListAuditEvents", "VerifyAuditLog"})


def build_handlers(
    services: Sequence[tuple[Any, object]],
    authenticator: Authenticator,
    audit: Auditor,
    entries: AuditEntries,
    max_streams: int = 8,
) -> list[grpc.GenericRpcHandler]:
    """One generic handler per (service descriptor, servicer); at most ``max_streams`` client
    streams open at once."""
    pipeline = Pipeline(authenticator, audit, entries, max_streams)
    handlers = []
    for descriptor, servicer in services:
        methods = {}
        for method in descriptor.methods:
            request_type = message_factory.GetMessageClass(method.input_type)
            serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
            behavior = getattr(servicer, method.name)
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

    def __init__(self, authenticator: Authenticator, audit: Auditor, entries: AuditEntries, max_streams: int = 8) -> None:
        self._authenticator = authenticator
        self._audit = audit
        self._entries = entries
        self._max_streams = max_streams
        self._stream_slots = threading.BoundedSemaphore(max_streams)

    def unary(self, name: str, request_type: Any, behavior: Callable[[Any, Call], Any]) -> Callable:
        def handle(raw: bytes, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            request = response = None
            if error is None:
                try:
                    request = _parse(request_type, raw)
                    response = behavior(request, call)
                except KmsError as exc:
                    error = exc
                except Exception:
                    error = _internal(name, call)
            error = self._audited(name, call, request, response, error)
            _record(name, error, started)
            if error is None:
                return response
            _abort(context, call, error)

        return handle

    def server_streaming(self, name: str, request_type: Any, behavior: Callable[[Any, Call], Iterator[Any]]) -> Callable:
        """The call is audited once it has started (permission checked, first result ready)."""

        def handle(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            request, results, first = None, iter(()), _END
            if error is None:
                try:
                    request = _parse(request_type, raw)
                    results = iter(behavior(request, call))
                    first = next(results, _END)
                except KmsError as exc:
                    error = exc
                except Exception:
                    error = _internal(name, call)
            error = self._audited(name, call, request, None, error)
            if error is None:
                try:
                    if first is not _END:
                        yield first
                    yield from results
                except KmsError as exc:
                    error = exc
                except Exception:
                    error = _internal(name, call)
            _record(name, error, started)
            if error is not None:
                _abort(context, call, error)

        return handle

    def bidirectional(self, name: str, request_type: Any, behavior: Callable[[Any, Call], Iterator[Any]]) -> Callable:
        """For streams whose response messages answer the request messages one for one and in
        order (StreamReWrap): each response is released once its items' audit records are
        written down. The call itself gets a record too when it carried no item or ended in
        an error (refused, deadline exceeded, audit unavailable), so every call leaves a trace."""

        def handle(raw_requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            seen: deque[Any] = deque()
            items = 0
            slot = error is None and self._stream_slots.acquire(blocking=False)
            if error is None and not slot:
                error = TooManyStreams(self._max_streams)
            if error is None:
                try:
                    for response in behavior(_parse_each(request_type, raw_requests, seen), call):
                        request = seen.popleft()
                        self._audit.record(self._entries.for_call(name, call, request, response, None, items))
                        items += len(response.results)
                        call.check_deadline()
                        yield response
                except KmsError as exc:
                    error = exc
                except Exception:
                    error = _internal(name, call)
                finally:
                    self._stream_slots.release()
            if error is not None or not items:
                error = self._audited(name, call, None, None, error)
            _record(name, error, started)
            if error is not None:
                _abort(context, call, error)

        return handle

    def _audited(self, name: str, call: Call, request: Any, response: Any, error: KmsError | None) -> KmsError | None:
        """Writes the call's records; their failure replaces the outcome with AuditUnavailable."""
        try:
            self._audit.record(self._entries.for_call(name, call, request, response, error),
                               fail_open=name in _AUDIT_FAIL_OPEN)
        except AuditUnavailable as unavailable:
            return unavailable
        return error

    def _begin(self, context: grpc.ServicerContext, name: str) -> tuple[Call, KmsError | None]:
        request_id = ""
        for key, value in context.invocation_metadata():
            if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
                request_id = value
        request_id = request_id or f"{_ID_PREFIX}-{next(_ids):x}"
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        call = Call(identity="", request_id=request_id, peer=context.peer(), method=name, deadline=deadline)
        try:
            identity, groups = self._authenticator.authenticate(context)
        except KmsError as error:
            return call, error
        return Call(
            identity=identity, groups=groups, request_id=request_id, peer=call.peer, method=name, deadline=deadline
        ), None


_END = object()
# Request ids for callers that send none: unique per process start, without a system call.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count(1)


def _internal(name: str, call: Call) -> InternalError:
    log.exception("unhandled error", extra={"fields": {"method": name, "request_id": call.request_id}})
    return InternalError(call.request_id)


def _parse(request_type: Any, raw: bytes) -> Any:
    try:
        return request_type.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError):
        raise MalformedRequest(f"request is not a valid {request_type.DESCRIPTOR.full_name}") from None


def _parse_each(request_type: Any, raw_requests: Iterator[bytes], seen: deque) -> Iterator[Any]:
    """Each request parsed (and remembered in ``seen`` for its audit record); one that does not
    parse becomes a MalformedRequest item, so the stream goes on."""
    for raw in raw_requests:
        try:
            request = _parse(request_type, raw)
        except MalformedRequest as error:
            request = error
        seen.append(request_type() if isinstance(request, KmsError) else request)
        yield request


def _record(name: str, error: KmsError | None, started: float) -> None:
    code = "OK" if error is None else error.code
    RPCS.labels(name, code).inc()
    RPC_SECONDS.labels(name).observe(time.perf_counter() - started)


def _abort(context: grpc.ServicerContext, call: Call, error: KmsError | None) -> None:
    assert error is not None
    metadata = [(REASON_KEY, error.reason), (REQUEST_ID_KEY, call.request_id)]
    if isinstance(error, RateLimited):
        metadata.append((RETRY_AFTER_KEY, str(max(1, int(error.retry_after * 1000)))))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(status_code(error), error.message)
