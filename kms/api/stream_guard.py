"""Streams the request pipeline does not serve (server reflection, health Watch) rationed like
its own: a caller must authenticate, and reflection needs an identity the service admits; each
such stream takes a slot of the same StreamLimits (per server, per identity, idle timeout), so
that no client, with or without grants, can hold every worker thread with them.

A server interceptor, because these services are grpcio's own implementations: their handlers
are wrapped, not rewritten. Unary calls (health Check) are left alone: they always get a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from kms.api.errors import REASON_KEY, status_code
from kms.api.handlers import Authenticator
from kms.api.streams import StreamLimits
from kms.errors import KmsError
from kms.service.calls import Call


class StreamGuard(grpc.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        admit: Callable[[Call], None],
        streams: StreamLimits,
        *,
        ours: tuple[str, ...],
        admitted: tuple[str, ...] = ("/grpc.reflection.",),
    ) -> None:
        """``ours``: method prefixes the pipeline serves (left alone). ``admitted``: prefixes of
        methods whose callers must also pass ``admit`` (hold some grant)."""
        self._authenticator = authenticator
        self._admit = admit
        self._streams = streams
        self._ours = ours
        self._admitted = admitted

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(self._ours):
            return handler
        if not (handler.request_streaming or handler.response_streaming):
            return handler
        admitted = method.startswith(self._admitted)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._guarded(handler.stream_stream, method, admitted),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._guarded(handler.unary_stream, method, admitted),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_unary_rpc_method_handler(
            self._guarded_unary(handler.stream_unary, method, admitted),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _enter(self, context: grpc.ServicerContext, method: str, admitted: bool) -> Any:
        """A stream slot for the caller, or aborts the call."""
        try:
            identity, groups = self._authenticator.authenticate(context)
            if admitted:
                self._admit(Call(identity=identity, groups=groups, method=method))
            return self._streams.open(identity, context)
        except KmsError as error:
            context.set_trailing_metadata(((REASON_KEY, error.reason),))
            context.abort(status_code(error), error.message)

    def _guarded(
        self, behavior: Callable[..., Iterator[Any]], method: str, admitted: bool
    ) -> Callable[..., Iterator[Any]]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            slot = self._enter(context, method, admitted)
            try:
                if hasattr(request, "__next__"):
                    request = _progressing(request, slot)
                for response in behavior(request, context):
                    yield response
                    slot.progress()
            finally:
                slot.close()

        return handle

    def _guarded_unary(self, behavior: Callable[..., Any], method: str, admitted: bool) -> Callable[..., Any]:
        def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            slot = self._enter(context, method, admitted)
            try:
                return behavior(_progressing(requests, slot), context)
            finally:
                slot.close()

        return handle


def _progressing(requests: Iterator[Any], slot: Any) -> Iterator[Any]:
    for request in requests:
        slot.progress()
        yield request
