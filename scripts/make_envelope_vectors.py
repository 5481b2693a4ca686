#!/usr/bin/env python3
"""Writes docs/vectors/envelope-v1.json: golden vectors of the client envelope format, v1.

Run once when the format version was introduced; the file is frozen afterwards (a new format
gets a new file). Every input is fixed (data keys, salts, master keys, wrapping IVs), so anyone
can reproduce every output from docs/envelope-format.md with AES-256-GCM, HKDF-SHA256 and
HMAC-SHA256 alone. The wrapped keys are real wrapped keys of docs/wrapped-key-format.md under the
given master keys, so a vector can be opened end to end without the service.

One correction since: vector 13 first flipped a bit of the key "tenant" in the header's context,
which left a canonical context ("uenant"); by the reading steps that is a context mismatch, not
the integrity failure it was labelled. It now flips the entry count, so the header's context is
not canonical and step 1 refuses it. Every other vector is byte for byte as first generated.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.context import encode_context
from kms.crypto.wrapped_key import WrappedKey, WrappedKeyHeader
from kms_client import envelope
from kms_client._context import decode_context
from kms_client.errors import InvalidCiphertext

# (name, key id, key version, context, frame size, plaintext)
VALID = [
    ("empty plaintext, empty context, default frame size", "orders", 1, {}, 65536, b""),
    ("one frame with a context", "orders", 3, {"tenant": "acme", "table": "orders"}, 65536, b"hello, world"),
    (
        "three frames, the final one partial",
        "orders",
        1,
        {"tenant": "acme"},
        16,
        b"The quick brown fox jumps over the lazy dog",
    ),
    ("plaintext a multiple of the frame size: empty final frame", "invoices", 2, {}, 16, bytes(range(32))),
    (
        "frame size 1, longest key id, non-ASCII context",
        "K" * 64,
        4294967295,
        {"région": "Île-de-France", "empty": "", "🔑": "✓"},
        1,
        b"abc",
    ),
]


def pattern(seed: int, length: int, step: int = 1) -> bytes:
    return bytes((seed + step * i) % 256 for i in range(length))


def wrap(number: int, key_id: str, version: int, context: dict, data_key: bytes) -> tuple[dict, bytes]:
    master_key = pattern(number * 19, 32)
    iv = pattern(number * 23, 12)
    header = WrappedKeyHeader(key_id, version)
    sealed = AESGCM(master_key).encrypt(iv, data_key, header.associated_data(encode_context(context)))
    wrapped = WrappedKey(header, iv, sealed).encode()
    return {"master_key": master_key.hex(), "key_version": version, "iv": iv.hex()}, wrapped


def valid_vector(
    number: int, name: str, key_id: str, version: int, context: dict, frame_size: int, plaintext: bytes
) -> dict:
    data_key = pattern(number * 41 + 7, 32, 3)
    salt = pattern(number * 53 + 1, 32, 5)
    wrapping, wrapped_key = wrap(number, key_id, version, context, data_key)
    encoded_context = encode_context(context)
    header, sealer = envelope.seal_header(
        data_key,
        key_id=key_id,
        encoded_context=encoded_context,
        wrapped_key=wrapped_key,
        frame_size=frame_size,
        salt=salt,
    )
    body = envelope.seal_frames(sealer, plaintext)
    keys = envelope.derive_message_keys(data_key, salt)
    step = frame_size + envelope.FRAME_TAG_BYTES
    frames = [body[i : i + step] for i in range(0, len(body), step)]
    return {
        "id": number,
        "result": "valid",
        "comment": name,
        "data_key": data_key.hex(),
        "salt": salt.hex(),
        "key_id": key_id,
        "encryption_context": context,
        "frame_size": frame_size,
        "plaintext": plaintext.hex(),
        "wrapped_key": wrapped_key.hex(),
        "wrapping": wrapping,
        "encoded_context": encoded_context.hex(),
        "hkdf_info": envelope.KDF_INFO.hex(),
        "frame_key": keys.frame_key.hex(),
        "header_key": keys.header_key.hex(),
        "commitment": keys.commitment.hex(),
        "authenticated_header": header.authenticated_bytes().hex(),
        "header_tag": header.header_tag.hex(),
        "header": header.encode().hex(),
        "frames": [
            {"nonce": envelope.frame_nonce(i, i == len(frames) - 1).hex(), "sealed": frame.hex()}
            for i, frame in enumerate(frames)
        ],
        "ciphertext": (header.encode() + body).hex(),
    }


def invalid_vectors(base: dict, first_id: int) -> list[dict]:
    """Alterations of vector ``base`` (three frames) that every reader must refuse."""
    ciphertext = bytes.fromhex(base["ciphertext"])
    header_length = len(bytes.fromhex(base["header"]))
    frames = [bytes.fromhex(f["sealed"]) for f in base["frames"]]
    head = ciphertext[:header_length]
    context = base["encryption_context"]

    # The same message's header with the wrapped key of another data key (same key, context).
    other_key = pattern(250, 32, 7)
    _, other_wrapped = wrap(99, base["key_id"], 1, context, other_key)
    parsed = envelope.parse_header_bytes(head)
    swapped = parsed.with_wrapped_key(other_wrapped).encode()
    assert swapped.startswith(bytes.fromhex(base["authenticated_header"]))
    other_master = pattern(99 * 19, 32)

    # The low bit of the context's entry count (1 -> 0): the entry becomes trailing bytes, so the
    # header's context is not canonical and step 1 of reading refuses it. A flip that leaves a
    # canonical context ("tenant" -> "uenant") would be a context mismatch at step 2 instead.
    context_at = 46 + len(base["key_id"])
    bad_context = _flip(ciphertext, context_at + 1)
    try:
        decode_context(bad_context[context_at : context_at + len(bytes.fromhex(base["encoded_context"]))])
    except InvalidCiphertext:
        pass
    else:
        raise AssertionError("the flipped context is still canonical")

    cases = [
        ("truncated", "final frame removed (stream ends on a frame boundary)", head + b"".join(frames[:-1]), context),
        ("truncated", "ends inside the header", ciphertext[: header_length - 1], context),
        ("invalid", "frames 1 and 2 swapped", head + frames[1] + frames[0] + frames[2], context),
        ("invalid", "frame 1 duplicated", head + frames[0] + frames[0] + frames[1] + frames[2], context),
        (
            "invalid",
            "final frame dropped and frame 2 presented as final",
            head + frames[0] + frames[1][: len(frames[2])],
            context,
        ),
        ("invalid", "one bit of the body flipped", ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]), context),
        (
            "invalid",
            "one bit of the context in the header flipped: entry count 1 -> 0, not canonical",
            bad_context,
            context,
        ),
        ("invalid", "bytes after the final frame", ciphertext + b"\x00", context),
        ("context_mismatch", "decrypted with another context", ciphertext, {"tenant": "other"}),
        (
            "invalid",
            "wrapped key of another data key (fails the commitment)",
            swapped + ciphertext[header_length:],
            context,
        ),
    ]
    vectors = []
    for number, (result, comment, data, decrypt_context) in enumerate(cases, start=first_id):
        vector = {
            "id": number,
            "result": result,
            "comment": comment,
            "based_on": base["id"],
            "decrypt_context": decrypt_context,
            "ciphertext": data.hex(),
        }
        if "another data key" in comment:
            vector["wrapped_data_key"] = other_key.hex()
            vector["wrapping"] = {"master_key": other_master.hex(), "key_version": 1, "iv": pattern(99 * 23, 12).hex()}
        vectors.append(vector)
    return vectors


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def rewrap_vector(base: dict, number: int) -> dict:
    """``base`` with its data key re-wrapped under a new key version: only the wrapped key differs."""
    ciphertext = bytes.fromhex(base["ciphertext"])
    header = envelope.parse_header_bytes(ciphertext)
    data_key = bytes.fromhex(base["data_key"])
    wrapping, wrapped_key = wrap(number, base["key_id"], 9, base["encryption_context"], data_key)
    new_header = header.with_wrapped_key(wrapped_key)
    rewrapped = new_header.encode() + ciphertext[header.length :]
    assert struct.unpack(">H", rewrapped[header.wrapped_key_offset : header.wrapped_key_offset + 2])[0] == len(
        wrapped_key
    )
    return {
        "id": number,
        "result": "valid",
        "comment": f"vector {base['id']} re-wrapped under key version 9: only the wrapped key changed",
        "based_on": base["id"],
        "data_key": base["data_key"],
        "encryption_context": base["encryption_context"],
        "plaintext": base["plaintext"],
        "wrapped_key": wrapped_key.hex(),
        "wrapping": wrapping,
        "ciphertext": rewrapped.hex(),
    }


def build() -> dict:
    valid = [valid_vector(number, *case) for number, case in enumerate(VALID, start=1)]
    rewrapped = rewrap_vector(valid[2], len(valid) + 1)
    invalid = invalid_vectors(valid[2], len(valid) + 2)
    return {
        "format": "kms client envelope",
        "format_version": 1,
        "algorithm_suite": 1,
        "specification": "docs/envelope-format.md",
        "generator": "scripts/make_envelope_vectors.py (pyca/cryptography AES-GCM, HKDF, HMAC)",
        "notes": (
            "All byte strings are hex. 'wrapping' gives the master key, key version and IV that made "
            "wrapped_key in the format of docs/wrapped-key-format.md, so a vector opens without the service. "
            "result: valid (decrypts to plaintext), truncated (a reader must report that the input ended "
            "early), invalid (any integrity failure), context_mismatch (decrypt_context differs from the header's)."
        ),
        "vectors": [*valid, rewrapped, *invalid],
    }


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "vectors" / "envelope-v1.json"
    if target.exists() and "--force" not in sys.argv:
        raise SystemExit(f"{target} exists and is frozen; a format change needs a new version")
    target.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {target}")
