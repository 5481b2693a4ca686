"""From a service exception to a status and back to the SDK's exception, without a server: the
gRPC edge's mapping (kms.api.errors.status_code, item_error) and the SDK's (from_rpc_error on a
stand-in RpcError, error_for for batch items)."""

from __future__ import annotations

import inspect

import grpc
import pytest

import kms.errors as server
import kms_client
from kms.api.errors import REASON_KEY, item_error, status_code
from kms_client import errors as sdk

SERVER_CLASSES = sorted(
    (cls for _, cls in inspect.getmembers(server, inspect.isclass) if issubclass(cls, server.KmsError)),
    key=lambda cls: cls.__name__,
)
_SAMPLE_ARGUMENTS = {"str": "orders", "int": 3, "float": 1.5}


def instance(cls: type[server.KmsError]) -> server.KmsError:
    """An instance of ``cls`` built from its constructor's annotations."""
    parameters = inspect.signature(cls).parameters.values()
    required = [p for p in parameters if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    return cls(*(_SAMPLE_ARGUMENTS[p.annotation] for p in required))


class FakeRpcError(grpc.RpcError):
    """What grpcio raises on the client: a status code, its details and the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: tuple = ()) -> None:
        self._code, self._details, self._metadata = code, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._metadata


@pytest.mark.parametrize("cls", SERVER_CLASSES, ids=lambda cls: cls.__name__)
def test_each_condition_becomes_its_own_status_code(cls):
    assert status_code(instance(cls)) is getattr(grpc.StatusCode, cls.code)


def test_a_code_that_is_no_status_becomes_internal():
    odd = server.KmsError("odd")
    odd.code = "NOT_A_STATUS_CODE"
    assert status_code(odd) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("cls", SERVER_CLASSES, ids=lambda cls: cls.__name__)
def test_a_batch_item_carries_the_code_message_and_reason(cls):
    error = instance(cls)
    item = item_error(error)
    code = getattr(grpc.StatusCode, cls.code).value[0]
    assert (item.code, item.message, item.reason) == (code, error.message, cls.__name__)


@pytest.mark.parametrize("cls", [c for c in SERVER_CLASSES if c is not server.KmsError], ids=lambda cls: cls.__name__)
def test_the_sdk_rebuilds_what_the_edge_sends(cls):
    error = instance(cls)
    raw = FakeRpcError(status_code(error), error.message, ((REASON_KEY, error.reason), ("x-request-id", "r1")))
    rebuilt = sdk.from_rpc_error(raw)
    assert type(rebuilt).__name__ == cls.__name__
    assert (rebuilt.code, rebuilt.message, rebuilt.reason) == (status_code(error), error.message, cls.__name__)
    item = item_error(error)
    by_item = sdk.error_for(next(c for c in grpc.StatusCode if c.value[0] == item.code), item.message, item.reason)
    assert type(by_item) is type(rebuilt)


def test_the_reason_wins_when_its_code_agrees():
    message = "key 'k' version 1 is DISABLED"
    raw = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, message, ((REASON_KEY, "KeyVersionDisabled"),))
    error = sdk.from_rpc_error(raw)
    assert type(error) is kms_client.KeyVersionDisabled
    assert isinstance(error, kms_client.KeyVersionNotUsable) and isinstance(error, kms_client.FailedPrecondition)
    assert (error.message, error.reason, error.retry_after) == (message, "KeyVersionDisabled", None)


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "KeyNotFound", kms_client.PermissionDenied),  # disagrees: the code decides
        (grpc.StatusCode.NOT_FOUND, "SomethingNewer", kms_client.NotFound),  # unknown to this SDK
        (grpc.StatusCode.UNAVAILABLE, None, kms_client.Unavailable),  # a proxy answered
        (grpc.StatusCode.INTERNAL, None, kms_client.Internal),
        (grpc.StatusCode.CANCELLED, "StreamIdle", kms_client.StreamIdle),
        (grpc.StatusCode.ABORTED, None, kms_client.KmsError),  # no class for the code
    ],
)
def test_otherwise_the_code_decides(code, reason, expected):
    metadata = ((REASON_KEY, reason),) if reason else ()
    error = sdk.from_rpc_error(FakeRpcError(code, "details", metadata))
    assert type(error) is expected
    assert error.reason == (reason or expected.__name__)


def test_retry_after_is_read_in_milliseconds_and_junk_is_ignored():
    trailers = ((REASON_KEY, "RateLimited"), ("retry-after-ms", "2500"))
    limited = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", trailers)
    error = sdk.from_rpc_error(limited)
    assert type(error) is kms_client.RateLimited and error.retry_after == 2.5
    junk = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (("retry-after-ms", "soon"),))
    assert sdk.from_rpc_error(junk).retry_after is None


def test_an_empty_message_becomes_the_code_name():
    assert sdk.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "")).message == "UNAVAILABLE"


def test_an_rpc_error_without_a_status_is_unknown():
    error = sdk.from_rpc_error(grpc.RpcError("connection reset"))
    assert type(error) is kms_client.KmsError and error.code is grpc.StatusCode.UNKNOWN
    assert error.message == "connection reset"
