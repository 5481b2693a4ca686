"""The path every RPC takes: parse, authenticate, call the servicer, map errors, measure.

Handlers are built from the service descriptor instead of the generated ``add_*_to_server``
so that request bytes are parsed here: grpcio answers a request it cannot deserialize with
INTERNAL, while a client that sends garbage deserves INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from kms.api.errors import REASON_KEY, status_code
from kms.api.proto import SERVICE, SERVICE_NAME, pb
from kms.errors import KmsError, MalformedRequest
from kms.service.calls import Call

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
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


class Anonymous:
    def authenticate(self, context: grpc.ServicerContext) -> tuple[str, frozenset[str]]:
        return "anonymous", frozenset()


class InternalError(KmsError):
    """A bug. The details go to the log under the request id, never to the client."""

    code = "INTERNAL"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"internal error (request id {request_id})")


def build_handler(servicer: object, authenticator: Authenticator) -> grpc.GenericRpcHandler:
    pipeline = Pipeline(authenticator)
    handlers = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        behavior = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                pipeline.streaming(method.name, request_type, behavior),
                response_serializer=response_type.SerializeToString,
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                pipeline.unary(method.name, request_type, behavior),
                response_serializer=response_type.SerializeToString,
            )
        else:
            raise TypeError(f"no handler shape for {method.name}")
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


class Pipeline:
    """Wraps a behavior ``(request, call) -> response`` into a grpcio handler function."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def unary(self, name: str, request_type: Any, behavior: Callable[[Any, Call], Any]) -> Callable:
        def handle(raw: bytes, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            if error is None:
                try:
                    return behavior(_parse(request_type, raw), call)
                except KmsError as exc:
                    error = exc
                except Exception:
                    log.exception("unhandled error", extra={"fields": {"method": name, "request_id": call.request_id}})
                    error = InternalError(call.request_id)
                finally:
                    _record(name, error, started)
            else:
                _record(name, error, started)
            _abort(context, call, error)

        return handle

    def streaming(self, name: str, request_type: Any, behavior: Callable[[Any, Call], Iterator[Any]]) -> Callable:
        def handle(raw_requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            call, error = self._begin(context, name)
            if error is None:
                try:
                    yield from behavior(_parse_each(request_type, raw_requests), call)
                except KmsError as exc:
                    error = exc
                except Exception:
                    log.exception("unhandled error", extra={"fields": {"method": name, "request_id": call.request_id}})
                    error = InternalError(call.request_id)
                finally:
                    _record(name, error, started)
            else:
                _record(name, error, started)
            if error is not None:
                _abort(context, call, error)

        return handle

    def _begin(self, context: grpc.ServicerContext, name: str) -> tuple[Call, KmsError | None]:
        request_id = ""
        for key, value in context.invocation_metadata():
            if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
                request_id = value
        request_id = request_id or uuid.uuid4().hex
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        call = Call(request_id=request_id, peer=context.peer(), method=name, deadline=deadline)
        try:
            identity, groups = self._authenticator.authenticate(context)
        except KmsError as error:
            return call, error
        return Call(
            identity=identity, groups=groups, request_id=request_id, peer=call.peer, method=name, deadline=deadline
        ), None


def _parse(request_type: Any, raw: bytes) -> Any:
    try:
        return request_type.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError):
        raise MalformedRequest(f"request is not a valid {request_type.DESCRIPTOR.full_name}") from None


def _parse_each(request_type: Any, raw_requests: Iterator[bytes]) -> Iterator[Any]:
    """Each request parsed; one that does not parse becomes a MalformedRequest item, so the
    stream goes on."""
    for raw in raw_requests:
        try:
            yield _parse(request_type, raw)
        except MalformedRequest as error:
            yield error


def _record(name: str, error: KmsError | None, started: float) -> None:
    code = "OK" if error is None else error.code
    RPCS.labels(name, code).inc()
    RPC_SECONDS.labels(name).observe(time.perf_counter() - started)


def _abort(context: grpc.ServicerContext, call: Call, error: KmsError | None) -> None:
    assert error is not None
    context.set_trailing_metadata(((REASON_KEY, error.reason), (REQUEST_ID_KEY, call.request_id)))
    context.abort(status_code(error), error.message)
