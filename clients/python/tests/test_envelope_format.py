"""The envelope format without the service: a fixed data key, every tamper case, the parser."""

from __future__ import annotations

import contextlib
import io
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdk_helpers import DATA_KEY, OTHER_DATA_KEY, WRAPPED, frames_of, open_, open_stream, seal

from kms_client import envelope, streaming
from kms_client._context import encode_context
from kms_client.errors import InvalidArgument, InvalidCiphertext, TruncatedCiphertext

F = 16


@pytest.mark.parametrize("size", [0, 1, F - 1, F, F + 1, 2 * F, 7 * F + 5])
def test_round_trip_in_memory_and_as_a_stream(size):
    plaintext = os.urandom(size)
    ciphertext = seal(plaintext, frame_size=F)
    header = envelope.parse_header_bytes(ciphertext)
    assert len(ciphertext) == header.length + envelope.body_length(size, F)
    assert len(frames_of(ciphertext)[1]) == size // F + 1
    assert open_(ciphertext) == plaintext
    assert open_stream(ciphertext) == plaintext
    streamed = io.BytesIO()
    header, sealer = envelope.seal_header(
        DATA_KEY,
        key_id="orders",
        encoded_context=encode_context({}),
        wrapped_key=WRAPPED,
        frame_size=F,
        salt=os.urandom(32),
    )
    assert streaming.seal_stream(io.BytesIO(plaintext), streamed, header, sealer) == size
    assert open_(streamed.getvalue()) == plaintext


def test_the_final_frame_is_shorter_than_a_frame_so_an_exact_multiple_ends_with_an_empty_one():
    _header, frames = frames_of(seal(bytes(2 * F), frame_size=F))
    assert [len(f) for f in frames] == [F + 16, F + 16, 16]
    assert envelope.frame_nonce(2, True) == bytes(10) + b"\x02\x01"


@pytest.mark.parametrize("region", ["authenticated header and its tag", "body"])
def test_every_bit_flip_fails(region):
    # The wrapped key is not authenticated here: the service refuses an altered one (see
    # test_client_encryption) and the commitment refuses any other data key.
    ciphertext = seal(b"x" * 40, frame_size=F)
    header = envelope.parse_header_bytes(ciphertext)
    span = range(header.length, len(ciphertext)) if region == "body" else range(header.wrapped_key_offset)
    for index in span:
        for bit in range(8):
            altered = bytearray(ciphertext)
            altered[index] ^= 1 << bit
            with pytest.raises(InvalidCiphertext):
                open_(bytes(altered))


def test_truncation_at_every_frame_boundary_is_reported_as_truncation():
    ciphertext = seal(os.urandom(5 * F + 3), frame_size=F)
    header, frames = frames_of(ciphertext)
    for kept in range(len(frames)):
        cut = header + b"".join(frames[:kept])
        with pytest.raises(TruncatedCiphertext):
            open_(cut)
        with pytest.raises(TruncatedCiphertext):
            open_stream(cut)


def test_truncation_at_every_byte_fails():
    ciphertext = seal(os.urandom(3 * F + 3), frame_size=F)
    for length in range(len(ciphertext)):
        with pytest.raises(InvalidCiphertext):
            open_(ciphertext[:length])
        with pytest.raises(InvalidCiphertext):
            open_stream(ciphertext[:length])


def test_reordered_duplicated_dropped_or_trailing_frames_fail():
    header, frames = frames_of(seal(os.urandom(4 * F + 1), frame_size=F))
    altered_bodies = [
        [frames[1], frames[0], *frames[2:]],
        [frames[0], frames[0], *frames[1:]],
        [frames[0], *frames[2:]],
        [*frames[:-2], frames[-1]],
        [*frames, frames[-1]],
        [*frames[:-1], frames[-2][: len(frames[-1])]],
    ]
    for body in altered_bodies:
        with pytest.raises(InvalidCiphertext):
            open_(header + b"".join(body))
    with pytest.raises(InvalidCiphertext):
        open_(header + b"".join(frames) + b"\x00")


def test_frames_spliced_from_another_message_under_the_same_data_key_fail():
    # A cached data key encrypts many messages: their frames are still not interchangeable,
    # because each message's frame key comes from its own salt.
    first_header, first = frames_of(seal(os.urandom(3 * F), frame_size=F))
    _second_header, second = frames_of(seal(os.urandom(3 * F), frame_size=F))
    with pytest.raises(InvalidCiphertext):
        open_(first_header + first[0] + second[1] + first[2] + first[3])
    with pytest.raises(InvalidCiphertext):
        open_(first_header + b"".join(second))


def test_the_same_salt_and_data_key_with_another_header_still_fails():
    salt = os.urandom(32)
    one = seal(b"a" * 20, frame_size=F, salt=salt, context={"tenant": "acme"})
    two = seal(b"a" * 20, frame_size=F, salt=salt, context={"tenant": "evil"})
    header_two, _ = frames_of(two)
    _, body_one = frames_of(one)
    with pytest.raises(InvalidCiphertext):
        open_(header_two + b"".join(body_one))


def test_another_data_key_fails_the_commitment_before_any_frame():
    ciphertext = seal(b"secret", frame_size=F)
    header = envelope.parse_header_bytes(ciphertext)
    with pytest.raises(InvalidCiphertext):
        envelope.open_header(OTHER_DATA_KEY, header)


def test_the_wrapped_key_is_outside_the_authenticated_header():
    ciphertext = seal(b"body", frame_size=F)
    header = envelope.parse_header_bytes(ciphertext)
    replaced = header.with_wrapped_key(b"\x01" + b"Z" * 80)
    assert replaced.authenticated_bytes() == header.authenticated_bytes()
    assert replaced.header_tag == header.header_tag
    assert open_(replaced.encode() + ciphertext[header.length :]) == b"body"


def test_a_failed_frame_leaves_no_plaintext_in_the_output_buffer():
    ciphertext = seal(b"p" * F + b"q", frame_size=F)
    header = envelope.parse_header_bytes(ciphertext)
    opener = envelope.open_header(DATA_KEY, header)
    sealed = bytearray(ciphertext[header.length : header.length + F + 16])
    sealed[0] ^= 1
    out = bytearray(F)
    with pytest.raises(InvalidCiphertext):
        opener.open_run_into(memoryview(sealed), memoryview(out), final=False)
    assert out == bytes(F)


def test_decrypt_stream_writes_only_whole_authenticated_frames():
    plaintext = os.urandom(40 * F)
    header, frames = frames_of(seal(plaintext, frame_size=F))
    bad = bytearray(frames[30])
    bad[3] ^= 1
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertext):
        open_stream(header + b"".join(frames[:30]) + bytes(bad) + b"".join(frames[31:]), out)
    written = out.getvalue()
    assert len(written) % F == 0 and len(written) <= 30 * F and plaintext.startswith(written)


def test_frame_counter_limit_and_nonce_layout():
    assert envelope.frame_nonce(0, False) == bytes(12)
    assert envelope.frame_nonce(2**32 - 1, True) == bytes(7) + b"\xff\xff\xff\xff\x01"
    with pytest.raises(InvalidCiphertext):
        envelope.frame_nonce(2**32, False)


@pytest.mark.parametrize("frame_size", [0, -1, envelope.MAX_FRAME_SIZE + 1])
def test_frame_size_outside_the_limits_is_refused_on_encrypt(frame_size):
    with pytest.raises(InvalidArgument):
        seal(b"", frame_size=frame_size)


def test_a_hostile_frame_size_is_refused_before_any_allocation():
    ciphertext = bytearray(seal(b"", frame_size=F))
    struct.pack_into(">I", ciphertext, 7, 2**32 - 1)
    with pytest.raises(InvalidCiphertext, match="frame size"):
        envelope.parse_header_bytes(ciphertext)


@pytest.mark.parametrize(
    "offset, value, message",
    [(0, b"XMSE", "magic"), (4, b"\x02", "version"), (5, b"\x00\x02", "suite"), (43, b"\x00", "key id")],
)
def test_unknown_magic_version_suite_or_key_id_are_refused(offset, value, message):
    ciphertext = bytearray(seal(b"", frame_size=F))
    ciphertext[offset : offset + len(value)] = value
    with pytest.raises(InvalidCiphertext, match=message):
        envelope.parse_header_bytes(ciphertext)


def test_sources_with_short_reads_and_without_readinto_and_sinks_with_short_writes():
    class Dribble:
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self.data.read(min(n, 7))

    class ShortWrites(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, view) -> int:
            chunk = bytes(view[:5])
            self.data += chunk
            return len(chunk)

    plaintext = os.urandom(3 * F + 2)
    header, sealer = envelope.seal_header(
        DATA_KEY,
        key_id="orders",
        encoded_context=encode_context({}),
        wrapped_key=WRAPPED,
        frame_size=F,
        salt=os.urandom(32),
    )
    sink = ShortWrites()
    streaming.seal_stream(Dribble(plaintext), sink, header, sealer)
    assert open_(bytes(sink.data)) == plaintext
    source = Dribble(bytes(sink.data))
    opened = streaming.read_header(source)
    out = ShortWrites()
    streaming.open_stream(source, out, envelope.open_header(DATA_KEY, opened))
    assert bytes(out.data) == plaintext


contexts = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(plaintext=st.binary(max_size=300), frame_size=st.integers(1, 40), context=contexts)
def test_hypothesis_round_trip(plaintext, frame_size, context):
    ciphertext = seal(plaintext, frame_size=frame_size, context=context)
    header = envelope.parse_header_bytes(ciphertext)
    assert dict(header.context) == context and header.frame_size == frame_size
    assert open_(ciphertext) == plaintext
    assert open_stream(ciphertext) == plaintext


@settings(max_examples=400)
@given(st.binary(max_size=400))
def test_fuzz_header_parser_on_arbitrary_bytes(data):
    for parse in (envelope.parse_header_bytes, lambda d: streaming.read_header(io.BytesIO(d))):
        with contextlib.suppress(InvalidCiphertext):
            parse(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_header_parser_behind_a_valid_prefix(tail):
    # Random bytes alone rarely get past the magic: start from a real header's first 44 bytes.
    prefix = seal(b"", frame_size=F)[:44]
    with contextlib.suppress(InvalidCiphertext):
        envelope.parse_header_bytes(prefix + tail)


@settings(max_examples=400)
@given(data=st.data())
def test_fuzz_mutated_ciphertexts_only_open_when_the_authenticated_bytes_are_intact(data):
    original = seal(b"abc", frame_size=F, context={"a": "1", "b": "2"})
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    mutated = mutated[: data.draw(st.integers(0, len(mutated)))]
    try:
        header = envelope.parse_header_bytes(mutated)
        assert open_(bytes(mutated)) == b"abc"
    except InvalidCiphertext:
        return
    # It opened: only the unauthenticated wrapped key can have changed.
    original_header = envelope.parse_header_bytes(original)
    assert mutated[: header.wrapped_key_offset] == original[: original_header.wrapped_key_offset]
    assert mutated[header.length :] == original[original_header.length :]
