"""Local envelope messages for the format tests: a fixed data key and no service."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

from kms_client import envelope, streaming
from kms_client._context import encode_context

DATA_KEY = bytes(range(32))
OTHER_DATA_KEY = bytes(range(100, 132))
WRAPPED = b"\x01" + b"W" * 69


def seal(
    plaintext: bytes,
    *,
    frame_size: int = 16,
    context: Mapping[str, str] | None = None,
    data_key: bytes = DATA_KEY,
    wrapped_key: bytes = WRAPPED,
    key_id: str = "orders",
    salt: bytes | None = None,
) -> bytes:
    header, sealer = envelope.seal_header(
        data_key,
        key_id=key_id,
        encoded_context=encode_context({"tenant": "acme"} if context is None else context),
        wrapped_key=wrapped_key,
        frame_size=frame_size,
        salt=salt or os.urandom(32),
    )
    return header.encode() + envelope.seal_frames(sealer, plaintext)


def open_(ciphertext: bytes, data_key: bytes = DATA_KEY) -> bytes:
    header = envelope.parse_header_bytes(ciphertext)
    opener = envelope.open_header(data_key, header)
    return envelope.open_frames(opener, memoryview(ciphertext)[header.length :])


def open_stream(ciphertext: bytes, dst: io.BytesIO | None = None, data_key: bytes = DATA_KEY) -> bytes:
    src = io.BytesIO(ciphertext)
    dst = dst if dst is not None else io.BytesIO()
    header = streaming.read_header(src)
    streaming.open_stream(src, dst, envelope.open_header(data_key, header))
    return dst.getvalue()


def frames_of(ciphertext: bytes) -> tuple[bytes, list[bytes]]:
    header = envelope.parse_header_bytes(ciphertext)
    body = ciphertext[header.length :]
    step = header.frame_size + envelope.FRAME_TAG_BYTES
    return ciphertext[: header.length], [body[i : i + step] for i in range(0, len(body), step)]
