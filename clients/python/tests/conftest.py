"""Fixtures of the SDK's tests. The server, the HSM token and the databases are real (the root
conftest.py loads tests/support/fixtures.py: ``server``, ``client``, ``database_url``...)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

import grpc
import pytest

from kms_client import DataKeyCaching, KmsClient


class CallCounter(grpc.UnaryUnaryClientInterceptor):
    """Counts the unary calls a client makes, by method name ("GenerateDataKey", ...)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation, client_call_details, request):
        with self._lock:
            self.calls[client_call_details.method.rsplit("/", 1)[-1]] += 1
        return continuation(client_call_details, request)

    def total(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def orders(client: KmsClient) -> str:
    client.create_key("orders")
    return "orders"


@pytest.fixture
def counter() -> CallCounter:
    return CallCounter()


@pytest.fixture
def make_client(server, counter: CallCounter) -> Iterator:
    """``make_client(caching=None, interceptors=())``: clients whose calls ``counter`` counts."""
    channels = []

    def make(caching: DataKeyCaching | None = None, interceptors: tuple = (), **options) -> KmsClient:
        raw = grpc.insecure_channel(server.target)
        channels.append(raw)
        return KmsClient(
            channel=grpc.intercept_channel(raw, counter, *interceptors), data_key_caching=caching, **options
        )

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def caching_client(make_client) -> KmsClient:
    """A client with data key caching on (default limits), its calls counted by ``counter``."""
    return make_client(DataKeyCaching())
