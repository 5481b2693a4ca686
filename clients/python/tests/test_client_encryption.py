"""encrypt/decrypt/streams/rewrap through a real server (SoftHSM token, SQLite)."""

from __future__ import annotations

import io
import os
import struct

import grpc
import pytest
from sdk_helpers import frames_of, seal

from kms_client import (
    EncryptionContextMismatch,
    InvalidCiphertext,
    InvalidEncryptionContext,
    KeyNotFound,
    KeyVersionDisabled,
    KmsClient,
    KmsError,
    PermissionDenied,
    RetryPolicy,
    TruncatedCiphertext,
    Unavailable,
    parse_header_bytes,
)
from tests.support.fixtures import APP

CONTEXT = {"tenant": "acme", "purpose": "orders"}
F = 64


@pytest.mark.parametrize("size", [0, 1, F - 1, F, F + 1, 9 * F + 17])
def test_round_trip_of_every_size_in_memory_and_as_streams(client, orders, size):
    plaintext = os.urandom(size)
    ciphertext = client.encrypt(plaintext, key_id=orders, context=CONTEXT, frame_size=F)
    assert client.decrypt(ciphertext, context=CONTEXT) == plaintext
    streamed = io.BytesIO()
    assert client.encrypt_stream(io.BytesIO(plaintext), streamed, key_id=orders, context=CONTEXT, frame_size=F) == size
    out = io.BytesIO()
    assert client.decrypt_stream(io.BytesIO(streamed.getvalue()), out, context=CONTEXT) == size
    assert out.getvalue() == plaintext
    assert client.decrypt(streamed.getvalue(), context=CONTEXT) == plaintext


def test_default_frame_size_and_a_multi_frame_message(client, orders):
    plaintext = os.urandom(3 * 65536 + 5)
    ciphertext = client.encrypt(plaintext, key_id=orders)
    header = parse_header_bytes(ciphertext)
    assert (header.key_id, dict(header.context), header.frame_size) == (orders, {}, 65536)
    assert len(ciphertext) == header.length + len(plaintext) + 4 * 16
    assert client.decrypt(ciphertext) == plaintext


def test_the_ciphertext_describes_itself_without_secrets(client, orders):
    ciphertext = client.encrypt(b"card 4111", key_id=orders, context=CONTEXT)
    header = parse_header_bytes(ciphertext)
    assert header.key_id == orders and dict(header.context) == CONTEXT
    assert "wrapped_key" not in repr(header) and header.salt.hex() not in repr(header)


def test_a_wrong_context_is_refused_before_the_service_is_asked(make_client, counter, orders):
    client = make_client()
    ciphertext = client.encrypt(b"x", key_id=orders, context=CONTEXT)
    before = counter.total()
    for wrong in ({}, {"tenant": "other", "purpose": "orders"}, {**CONTEXT, "extra": ""}):
        with pytest.raises(EncryptionContextMismatch):
            client.decrypt(ciphertext, context=wrong)
        with pytest.raises(EncryptionContextMismatch):
            client.decrypt_stream(io.BytesIO(ciphertext), io.BytesIO(), context=wrong)
    assert counter.total() == before


def test_a_header_rewritten_to_another_context_is_refused(client, orders):
    ciphertext = client.encrypt(b"x", key_id=orders, context={"tenant": "acme"})
    forged = ciphertext.replace(b"acme", b"evil", 1)
    with pytest.raises(InvalidCiphertext) as raised:
        client.decrypt(forged, context={"tenant": "evil"})
    assert not isinstance(raised.value, EncryptionContextMismatch)


def test_a_wrapped_key_swapped_from_another_message_fails_the_commitment(client, orders):
    # The service opens the swapped wrapped key (same key, same context): only the key
    # commitment in the header stands between it and a decryption under the wrong data key.
    first = client.encrypt(b"first message", key_id=orders, context=CONTEXT)
    second = client.encrypt(b"second message", key_id=orders, context=CONTEXT)
    first_header, second_header = parse_header_bytes(first), parse_header_bytes(second)
    swapped = first_header.with_wrapped_key(second_header.wrapped_key).encode() + first[first_header.length :]
    with pytest.raises(InvalidCiphertext):
        client.decrypt(swapped, context=CONTEXT)
    with pytest.raises(InvalidCiphertext):
        client.decrypt_stream(io.BytesIO(swapped), io.BytesIO(), context=CONTEXT)


def test_a_wrapped_key_of_another_key_or_altered_is_refused(client, orders):
    client.create_key("invoices")
    mine = client.encrypt(b"mine", key_id=orders, context=CONTEXT)
    theirs = client.encrypt(b"theirs", key_id="invoices", context=CONTEXT)
    header = parse_header_bytes(mine)
    foreign = header.with_wrapped_key(parse_header_bytes(theirs).wrapped_key).encode() + mine[header.length :]
    with pytest.raises(InvalidCiphertext):
        client.decrypt(foreign, context=CONTEXT)
    for index in range(header.wrapped_key_offset, header.length):
        altered = bytearray(mine)
        altered[index] ^= 0x04
        with pytest.raises(InvalidCiphertext):
            client.decrypt(bytes(altered), context=CONTEXT)


def _naming(ciphertext: bytes, key_id: str, version: int) -> bytes:
    """``ciphertext`` with its wrapped key rewritten to name ``key_id`` and ``version`` (the
    layout of docs/wrapped-key-format.md; the bytes after the key version are kept)."""
    header = parse_header_bytes(ciphertext)
    wrapped = header.wrapped_key
    rest = wrapped[2 + wrapped[1] + 4 :]
    renamed = bytes([wrapped[0], len(key_id)]) + key_id.encode() + struct.pack(">I", version) + rest
    return header.with_wrapped_key(renamed).encode() + ciphertext[header.length :]


def test_a_wrapped_key_naming_a_disabled_version_gives_key_version_disabled(client, orders):
    # The wrapped key is not authenticated, so the service answers about whichever version it
    # names, genuine or not: that answer concerns the key, and the ciphertext still never opens.
    old = client.encrypt(b"under version 1", key_id=orders, context=CONTEXT)
    client.rotate_key(orders)
    new = client.encrypt(b"under version 2", key_id=orders, context=CONTEXT)
    client.disable_key_version(orders, 1)
    for ciphertext in (old, _naming(new, orders, 1)):
        with pytest.raises(KeyVersionDisabled) as raised:
            client.decrypt(ciphertext, context=CONTEXT)
        assert not isinstance(raised.value, InvalidCiphertext)
        with pytest.raises(KeyVersionDisabled):
            client.rewrap(ciphertext, context=CONTEXT)
    with pytest.raises(InvalidCiphertext):
        client.decrypt(_naming(new, orders, 3), context=CONTEXT)  # no version 3: an integrity failure
    assert client.decrypt(new, context=CONTEXT) == b"under version 2"


def test_a_wrapped_key_naming_a_key_the_caller_may_not_use_gives_permission_denied(mtls_server, connect):
    admin, app = connect(mtls_server, "admin"), connect(mtls_server, "app")
    for key_id in ("orders", "payroll"):
        admin.create_key(key_id)
    admin.grant_permissions(APP, "orders", ["encrypt", "decrypt"])
    ciphertext = app.encrypt(b"an order", key_id="orders", context=CONTEXT)
    with pytest.raises(PermissionDenied):
        app.decrypt(_naming(ciphertext, "payroll", 1), context=CONTEXT)
    with pytest.raises(InvalidCiphertext):
        admin.decrypt(_naming(ciphertext, "payroll", 1), context=CONTEXT)  # may use payroll: it fails to open
    assert app.decrypt(ciphertext, context=CONTEXT) == b"an order"


def test_decrypt_documents_the_errors_about_the_named_key_version_beside_the_integrity_failures():
    for name in (
        "InvalidCiphertext",
        "TruncatedCiphertext",
        "EncryptionContextMismatch",
        "PermissionDenied",
        "KeyVersionNotUsable",
        "KeyVersionDisabled",
        "KeyMaterialMissing",
        "Unavailable",
    ):
        assert name in KmsClient.decrypt.__doc__
    for method in (KmsClient.decrypt_stream, KmsClient.rewrap):
        assert "Raises what ``decrypt`` raises" in " ".join(method.__doc__.split())


def test_stream_truncated_at_each_frame_boundary_says_so(client, orders):
    plaintext = os.urandom(4 * F + 1)
    ciphertext = client.encrypt(plaintext, key_id=orders, context=CONTEXT, frame_size=F)
    header, frames = frames_of(ciphertext)
    for kept in range(len(frames)):
        out = io.BytesIO()
        with pytest.raises(TruncatedCiphertext):
            client.decrypt_stream(io.BytesIO(header + b"".join(frames[:kept])), out, context=CONTEXT)
        assert out.getvalue() == plaintext[: kept * F]
    with pytest.raises(TruncatedCiphertext):
        client.decrypt_stream(io.BytesIO(ciphertext[: len(header) - 3]), io.BytesIO(), context=CONTEXT)


def test_rewrap_changes_only_the_wrapped_key_and_never_sees_the_data_key(make_client, counter, orders):
    client = make_client()
    plaintext = os.urandom(5 * F + 3)
    ciphertext = client.encrypt(plaintext, key_id=orders, context=CONTEXT, frame_size=F)
    assert client.rewrap(ciphertext, context=CONTEXT) == ciphertext  # already under the primary version
    client.rotate_key(orders)
    counter.calls.clear()
    rewrapped = client.rewrap(ciphertext, context=CONTEXT)
    assert dict(counter.calls) == {"ReWrap": 1}
    old, new = parse_header_bytes(ciphertext), parse_header_bytes(rewrapped)
    assert new.wrapped_key != old.wrapped_key
    assert rewrapped[: new.wrapped_key_offset] == ciphertext[: old.wrapped_key_offset]
    assert rewrapped[new.length :] == ciphertext[old.length :]
    assert client.decrypt_data_key(new.wrapped_key, CONTEXT).key_version == 2
    assert client.decrypt(rewrapped, context=CONTEXT) == plaintext
    with pytest.raises(EncryptionContextMismatch):
        client.rewrap(ciphertext, context={"tenant": "acme"})


def test_rewrap_stream_copies_the_body_unchanged(client, orders):
    plaintext = os.urandom(10 * F)
    source = io.BytesIO()
    client.encrypt_stream(io.BytesIO(plaintext), source, key_id=orders, context=CONTEXT, frame_size=F)
    client.rotate_key(orders)
    out = io.BytesIO()
    client.rewrap_stream(io.BytesIO(source.getvalue()), out, context=CONTEXT)
    old, new = parse_header_bytes(source.getvalue()), parse_header_bytes(out.getvalue())
    assert out.getvalue()[new.length :] == source.getvalue()[old.length :]
    assert client.decrypt(out.getvalue(), context=CONTEXT) == plaintext


def test_rewrap_many_reports_each_item_on_its_own(client, orders):
    good = [client.encrypt(bytes([i]) * 10, key_id=orders, context={"row": str(i)}) for i in range(5)]
    client.rotate_key(orders)
    items = [(c, {"row": str(i)}) for i, c in enumerate(good)]
    items.append((good[0], {"row": "wrong"}))
    items.append((b"not a ciphertext", {}))
    results = client.rewrap_many(items)
    for i, result in enumerate(results[:5]):
        assert isinstance(result, bytes) and client.decrypt(result, context={"row": str(i)}) == bytes([i]) * 10
    assert isinstance(results[5], EncryptionContextMismatch)
    assert isinstance(results[6], InvalidCiphertext)


@pytest.mark.parametrize("forged_first", [False, True], ids=["genuine-first", "forged-first"])
def test_rewrap_many_checks_each_item_against_the_key_id_its_own_header_names(client, orders, forged_first):
    # Two items sharing a wrapped key cost one BatchReWrap item, but a header naming `payroll`
    # around the `orders` wrapped key is a forgery, whichever of the two comes first.
    client.create_key("payroll")
    data_key = client.generate_data_key(orders, CONTEXT)
    genuine = seal(
        b"an order", context=CONTEXT, data_key=data_key.plaintext, wrapped_key=data_key.wrapped_key, key_id=orders
    )
    forged = seal(
        b"pay everyone twice",
        context=CONTEXT,
        data_key=data_key.plaintext,
        wrapped_key=data_key.wrapped_key,
        key_id="payroll",
    )
    client.rotate_key(orders)
    order = ["forged", "genuine"] if forged_first else ["genuine", "forged"]
    items = {"genuine": (genuine, CONTEXT), "forged": (forged, CONTEXT)}
    results = dict(zip(order, client.rewrap_many([items[name] for name in order]), strict=True))
    assert type(results["forged"]) is InvalidCiphertext
    assert isinstance(results["genuine"], bytes)
    assert parse_header_bytes(results["genuine"]).wrapped_key != data_key.wrapped_key
    assert client.decrypt(results["genuine"], context=CONTEXT) == b"an order"


def test_errors_are_typed(client, orders):
    with pytest.raises(KeyNotFound):
        client.encrypt(b"x", key_id="missing")
    with pytest.raises(KeyNotFound):
        client.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), key_id="missing")
    with pytest.raises(InvalidEncryptionContext):
        client.encrypt(b"x", key_id=orders, context={"": "empty key"})
    with pytest.raises(InvalidCiphertext):
        client.decrypt(b"")
    with pytest.raises(TruncatedCiphertext):
        client.decrypt(b"KMSE\x01")


class _Unavailable(grpc.RpcError, grpc.Call):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "injected"

    def trailing_metadata(self):
        return ()

    def result(self):
        raise self

    initial_metadata = time_remaining = cancel = add_callback = is_active = lambda self, *a: None


class FailFirst(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, failures: int) -> None:
        self.failures = failures

    def intercept_unary_unary(self, continuation, client_call_details, request):
        if self.failures:
            self.failures -= 1
            return _Unavailable()
        return continuation(client_call_details, request)


def test_unavailable_is_retried_with_backoff_and_other_codes_are_not(make_client, counter, orders):
    fast = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.01)
    flaky = make_client(interceptors=(FailFirst(2),), retry=fast)
    ciphertext = flaky.encrypt(b"retried", key_id=orders)
    assert counter.calls["GenerateDataKey"] == 3
    assert flaky.decrypt(ciphertext) == b"retried"
    counter.calls.clear()
    with pytest.raises(KeyNotFound):
        flaky.encrypt(b"x", key_id="missing")
    assert counter.calls["GenerateDataKey"] == 1


def test_an_unreachable_service_gives_unavailable_not_a_grpc_error(orders):
    with (
        KmsClient("127.0.0.1:1", timeout=2, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)) as client,
        pytest.raises(Unavailable) as raised,
    ):
        client.encrypt(b"x", key_id=orders)
    assert isinstance(raised.value, KmsError) and not isinstance(raised.value, grpc.RpcError)
