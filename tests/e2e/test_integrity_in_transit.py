"""CRC32C of byte fields in transit, at the service (docs/api.md, "Integrity in transit"): every
response carries the checksums of its byte fields, a request checksum that does not match is
INVALID_ARGUMENT (reason ChecksumMismatch) before anything is unwrapped or computed, batch and
stream items fail alone, and ``verified_*`` says whether the request's checksum was checked.
Raw stubs, so that what is sent is exactly what the test says."""

from __future__ import annotations

import grpc
import pytest
from google_crc32c import value as crc32c

from kms.domain.keys import Purpose
from kms.service.calls import Call
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc

CONTEXT = {"tenant": "acme"}
CHECKSUM_MISMATCH = (grpc.StatusCode.INVALID_ARGUMENT.value[0], "ChecksumMismatch")


@pytest.fixture
def stub(server):
    server.services.keys.create_key(Call(), "orders")
    with grpc.insecure_channel(server.target) as channel:
        yield kms_pb2_grpc.KeyManagementServiceStub(channel)


def _flipped(data: bytes, index: int = -1) -> bytes:
    altered = bytearray(data)
    altered[index] ^= 0x01
    return bytes(altered)


def _refused(call, *args) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return dict(raised.value.trailing_metadata())["kms-error-reason"]


def _decrypts(server) -> int:
    server.services.usage.flush()
    return server.services.repository.get("orders").version(1).usage.decrypts


def test_every_response_carries_the_checksums_of_its_byte_fields(stub):
    issued = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders", encryption_context=CONTEXT))
    assert issued.HasField("plaintext_crc32c") and issued.HasField("wrapped_key_crc32c")
    assert (issued.plaintext_crc32c, issued.wrapped_key_crc32c) == (
        crc32c(issued.plaintext),
        crc32c(issued.wrapped_key),
    )
    bare = stub.GenerateDataKeyWithoutPlaintext(pb.GenerateDataKeyRequest(key_id="orders"))
    assert bare.wrapped_key_crc32c == crc32c(bare.wrapped_key)

    unchecked = stub.Decrypt(pb.DecryptRequest(wrapped_key=issued.wrapped_key, encryption_context=CONTEXT))
    assert unchecked.plaintext_crc32c == crc32c(unchecked.plaintext) and not unchecked.verified_wrapped_key_crc32c
    checked = stub.Decrypt(
        pb.DecryptRequest(
            wrapped_key=issued.wrapped_key,
            encryption_context=CONTEXT,
            wrapped_key_crc32c=crc32c(issued.wrapped_key),
        )
    )
    assert checked.verified_wrapped_key_crc32c and checked.plaintext == issued.plaintext

    rewrapped = stub.ReWrap(
        pb.ReWrapRequest(
            wrapped_key=issued.wrapped_key, encryption_context=CONTEXT, wrapped_key_crc32c=crc32c(issued.wrapped_key)
        )
    )
    assert rewrapped.verified_wrapped_key_crc32c and rewrapped.wrapped_key_crc32c == crc32c(rewrapped.wrapped_key)
    assert not stub.ReWrap(
        pb.ReWrapRequest(wrapped_key=issued.wrapped_key, encryption_context=CONTEXT)
    ).verified_wrapped_key_crc32c

    [batch_issued] = stub.BatchGenerateDataKey(
        pb.BatchGenerateDataKeyRequest(requests=[pb.GenerateDataKeyRequest(key_id="orders")])
    ).results
    assert batch_issued.data_key.plaintext_crc32c == crc32c(batch_issued.data_key.plaintext)


def test_a_wrapped_key_altered_in_transit_is_refused_before_it_is_unwrapped(server, stub):
    wrapped = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders", encryption_context=CONTEXT)).wrapped_key
    before = _decrypts(server)
    for index in (0, 5, len(wrapped) // 2, -1):
        altered = _flipped(wrapped, index)
        for call, request in (
            (
                stub.Decrypt,
                pb.DecryptRequest(wrapped_key=altered, encryption_context=CONTEXT, wrapped_key_crc32c=crc32c(wrapped)),
            ),
            (
                stub.ReWrap,
                pb.ReWrapRequest(wrapped_key=altered, encryption_context=CONTEXT, wrapped_key_crc32c=crc32c(wrapped)),
            ),
        ):
            assert _refused(call, request) == "ChecksumMismatch"
    # The right bytes with a wrong checksum are refused too (the checksum is what was altered).
    request = pb.DecryptRequest(wrapped_key=wrapped, encryption_context=CONTEXT, wrapped_key_crc32c=crc32c(wrapped) ^ 1)
    assert _refused(stub.Decrypt, request) == "ChecksumMismatch"
    assert _decrypts(server) == before  # nothing was unwrapped


def test_batch_and_stream_items_with_a_wrong_checksum_fail_alone(stub):
    wrapped = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="orders")).wrapped_key
    good = {"wrapped_key": wrapped, "wrapped_key_crc32c": crc32c(wrapped)}
    bad = {"wrapped_key": _flipped(wrapped), "wrapped_key_crc32c": crc32c(wrapped)}
    unchecked = {"wrapped_key": wrapped}
    decrypted = stub.BatchDecrypt(pb.BatchDecryptRequest(requests=[good, bad, unchecked])).results
    assert decrypted[0].data_key.verified_wrapped_key_crc32c
    assert (decrypted[1].error.code, decrypted[1].error.reason) == CHECKSUM_MISMATCH
    assert decrypted[2].HasField("data_key") and not decrypted[2].data_key.verified_wrapped_key_crc32c
    assert decrypted[0].data_key.plaintext_crc32c == crc32c(decrypted[0].data_key.plaintext)

    batch = pb.BatchReWrapRequest(requests=[good, bad, unchecked])
    for results in (
        stub.BatchReWrap(batch).results,
        [r for response in stub.StreamReWrap(iter([batch]), timeout=10) for r in response.results],
    ):
        assert results[0].rewrapped.verified_wrapped_key_crc32c
        assert results[0].rewrapped.wrapped_key_crc32c == crc32c(results[0].rewrapped.wrapped_key)
        assert (results[1].error.code, results[1].error.reason) == CHECKSUM_MISMATCH
        assert results[2].HasField("rewrapped") and not results[2].rewrapped.verified_wrapped_key_crc32c


def test_pseudonymize_checks_each_values_checksum_and_sends_each_tokens(server, stub):
    server.services.keys.create_key(Call(), "emails", purpose=Purpose.PSEUDONYMIZE)
    values = [b"ada@example.com", b"bob@example.com"]
    answer = stub.Pseudonymize(
        pb.PseudonymizeRequest(
            key_id="emails", values=[values[0], _flipped(values[1])], values_crc32c=[crc32c(v) for v in values]
        )
    )
    ok, refused = answer.results
    assert ok.verified_value_crc32c and ok.token_crc32c == crc32c(ok.token.encode())
    assert (refused.error.code, refused.error.reason) == CHECKSUM_MISMATCH and not refused.verified_value_crc32c
    unchecked = stub.Pseudonymize(pb.PseudonymizeRequest(key_id="emails", values=values)).results
    assert unchecked[0].token == ok.token and not unchecked[0].verified_value_crc32c
    assert unchecked[0].token_crc32c == crc32c(unchecked[0].token.encode())
    wrong_count = pb.PseudonymizeRequest(key_id="emails", values=values, values_crc32c=[crc32c(values[0])])
    assert _refused(stub.Pseudonymize, wrong_count) == "InvalidArgument"
