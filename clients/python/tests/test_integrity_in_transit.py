"""The SDK's side of integrity in transit (docs/api.md): it sends the CRC32C of what it sends,
checks the checksums of what it receives, and sends bytes altered in transit (either way) once
more before it gives up with ChecksumMismatch; in a batch only the altered items go again.
Alterations are made by gRPC interceptors between the SDK and a real server."""

from __future__ import annotations

import grpc
import pytest

from kms_client import (
    ChecksumMismatch,
    KmsClient,
    ResponseChecksumMismatch,
    RetryPolicy,
)


class Alter(grpc.UnaryUnaryClientInterceptor):
    """Alters the next ``times`` requests or responses of ``method`` with ``change`` (which edits
    the message in place), and counts the calls of each method and their items."""

    def __init__(self, method: str, change, *, times: int = 1, request: bool = False) -> None:
        self.method, self.change, self.times, self.request = method, change, times, request
        self.calls: list[str] = []
        self.sent: list = []

    def intercept_unary_unary(self, continuation, details, request):
        name = details.method.rsplit("/", 1)[-1]
        self.calls.append(name)
        self.sent.append(request)
        altering = name == self.method and self.times > 0
        if altering and self.request:
            self.times -= 1
            request = type(request).FromString(request.SerializeToString())
            self.change(request)
        outcome = continuation(details, request)
        if altering and not self.request and outcome.exception() is None:
            self.times -= 1
            self.change(outcome.result())
        return outcome


def _flip(message, field: str) -> None:
    data = bytearray(getattr(message, field))
    data[-1] ^= 0x01
    setattr(message, field, bytes(data))


@pytest.fixture
def connect(server):
    channels = []

    def make(alter: Alter, **options) -> KmsClient:
        raw = grpc.insecure_channel(server.target)
        channels.append(raw)
        return KmsClient(
            channel=grpc.intercept_channel(raw, alter), retry=RetryPolicy(max_attempts=1), timeout=30, **options
        )

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def keys(client):
    client.create_key("orders")
    client.create_key("emails", purpose="PSEUDONYMIZE")
    return client


@pytest.mark.parametrize(
    ("method", "field", "call"),
    [
        ("GenerateDataKey", "plaintext", lambda c, w: c.generate_data_key("orders").plaintext),
        ("GenerateDataKey", "wrapped_key", lambda c, w: c.generate_data_key("orders").wrapped_key),
        (
            "GenerateDataKeyWithoutPlaintext",
            "wrapped_key",
            lambda c, w: c.generate_data_key_without_plaintext("orders"),
        ),
        ("Decrypt", "plaintext", lambda c, w: c.decrypt_data_key(w).plaintext),
        ("ReWrap", "wrapped_key", lambda c, w: c.rewrap_data_key(w).wrapped_key),
    ],
)
def test_a_response_altered_once_is_asked_for_again_and_one_altered_twice_is_refused(
    keys, connect, method, field, call
):
    wrapped = keys.generate_data_key("orders").wrapped_key
    once = Alter(method, lambda m: _flip(m, field))
    call(connect(once), wrapped)
    assert once.calls.count(method) == 2
    always = Alter(method, lambda m: _flip(m, field), times=2)
    with pytest.raises(ResponseChecksumMismatch) as refused:
        call(connect(always), wrapped)
    assert always.calls.count(method) == 2
    assert isinstance(refused.value, ChecksumMismatch) and field in refused.value.message


@pytest.mark.parametrize("method", ["Decrypt", "ReWrap"])
def test_a_request_altered_in_transit_is_refused_by_the_service_and_sent_once_more(keys, connect, method):
    issued = keys.generate_data_key("orders")
    once = Alter(method, lambda m: _flip(m, "wrapped_key"), request=True)
    client = connect(once)
    opened = (
        client.decrypt_data_key(issued.wrapped_key)
        if method == "Decrypt"
        else client.rewrap_data_key(issued.wrapped_key)
    )
    assert once.calls.count(method) == 2
    assert method == "ReWrap" or opened.plaintext == issued.plaintext
    always = Alter(method, lambda m: _flip(m, "wrapped_key"), request=True, times=2)
    with pytest.raises(ChecksumMismatch) as refused:
        connect(always).decrypt_data_key(issued.wrapped_key) if method == "Decrypt" else connect(
            always
        ).rewrap_data_key(issued.wrapped_key)
    assert not isinstance(refused.value, ResponseChecksumMismatch)  # the service's own verdict
    assert refused.value.reason == "ChecksumMismatch"


def test_in_a_batch_only_the_altered_items_go_again(keys, connect):
    wrapped = [keys.generate_data_key("orders", {"n": str(n)}).wrapped_key for n in range(5)]
    items = [(w, {"n": str(n)}) for n, w in enumerate(wrapped)]

    def alter_third(response):
        _flip(response.results[2].data_key, "plaintext")

    once = Alter("BatchDecrypt", alter_third)
    opened = connect(once).decrypt_data_keys(items)
    assert [o.plaintext for o in opened] == [keys.decrypt_data_key(w, c).plaintext for w, c in items]
    assert [len(r.requests) for r in once.sent] == [5, 1]
    always = Alter("BatchDecrypt", lambda r: _flip(r.results[0].data_key, "plaintext"), times=2)
    results = connect(always).decrypt_data_keys(items[2:3])
    assert isinstance(results[0], ResponseChecksumMismatch)

    rewrap = Alter("BatchReWrap", lambda r: _flip(r.results[1].rewrapped, "wrapped_key"))
    rewrapped = connect(rewrap).rewrap_data_keys(items)
    assert all(not isinstance(r, Exception) for r in rewrapped)
    assert [len(r.requests) for r in rewrap.sent] == [5, 1]
    every_request = [r for batch in rewrap.sent for r in batch.requests]
    assert all(r.HasField("wrapped_key_crc32c") for r in every_request)


def test_a_token_altered_in_transit_is_asked_for_again_alone(keys, connect):
    values = ["ada@example.com", "bob@example.com", "eve@example.com"]
    expected = keys.pseudonymize(values, key_id="emails")

    def alter(response):
        token = response.results[-1].token
        response.results[-1].token = token[:-1] + ("A" if token[-1] != "A" else "B")

    once = Alter("Pseudonymize", alter)
    assert connect(once).pseudonymize(values, key_id="emails") == expected
    assert [len(r.values) for r in once.sent] == [3, 1]
    assert all(len(r.values_crc32c) == len(r.values) for r in once.sent)
    with pytest.raises(ResponseChecksumMismatch):
        connect(Alter("Pseudonymize", alter, times=2)).pseudonymize(values, key_id="emails")


def test_a_service_that_sends_no_checksums_is_refused_unless_checks_are_off(keys, connect):
    def strip(response):
        response.ClearField("plaintext_crc32c")

    with pytest.raises(ResponseChecksumMismatch, match="carries no plaintext_crc32c"):
        connect(Alter("GenerateDataKey", strip, times=2)).generate_data_key("orders")
    quiet = Alter("Decrypt", strip, times=2)
    unchecked = connect(quiet, verify_checksums=False)
    issued = unchecked.generate_data_key("orders")
    assert unchecked.decrypt_data_key(issued.wrapped_key).plaintext == issued.plaintext
    assert not quiet.sent[-1].HasField("wrapped_key_crc32c")


def test_stream_items_altered_in_transit_are_that_items_error(server, keys):
    wrapped = keys.generate_data_key("orders").wrapped_key
    keys.rotate_key("orders")

    class AlterStream(grpc.StreamStreamClientInterceptor):
        def intercept_stream_stream(self, continuation, details, requests):
            def altered():
                for response in continuation(details, requests):
                    _flip(response.results[0].rewrapped, "wrapped_key")
                    yield response

            return altered()

    with grpc.insecure_channel(server.target) as raw:
        client = KmsClient(channel=grpc.intercept_channel(raw, AlterStream()))
        results = list(client.stream_rewrap([(wrapped, {}), (wrapped, {})]))
    assert isinstance(results[0], ResponseChecksumMismatch) and results[1].key_version == 2
