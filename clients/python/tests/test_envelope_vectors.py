"""Golden vectors of docs/envelope-format.md (docs/vectors/envelope-v1.json), checked twice: by
the SDK, and by an independent reader written here from the specification alone (HKDF and
HMAC spelled out with the standard library's hmac, AES-GCM from pyca), which also opens each
wrapped key with its master key as docs/wrapped-key-format.md says."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import itertools
import json
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sdk_helpers import open_, open_stream

from kms_client import envelope
from kms_client._context import encode_context
from kms_client.errors import EncryptionContextMismatch, InvalidCiphertext, TruncatedCiphertext

ROOT = Path(__file__).resolve().parents[3]
VECTOR_FILE = ROOT / "docs" / "vectors" / "envelope-v1.json"
VECTORS = json.loads(VECTOR_FILE.read_text())
BY_ID = {v["id"]: v for v in VECTORS["vectors"]}
VALID = [pytest.param(v, id=f"{v['id']}") for v in VECTORS["vectors"] if v["result"] == "valid"]
REFUSED = [pytest.param(v, id=f"{v['id']}-{v['result']}") for v in VECTORS["vectors"] if v["result"] != "valid"]


class Refused(Exception):
    """The independent reader's integrity failure."""


class Truncated(Refused):
    pass


class ContextMismatch(Refused):
    pass


# result -> (what the independent reader raises, what the SDK raises), each exactly that class
OUTCOMES = {
    "truncated": (Truncated, TruncatedCiphertext),
    "context_mismatch": (ContextMismatch, EncryptionContextMismatch),
    "invalid": (Refused, InvalidCiphertext),
}


def unwrap(wrapped_key: bytes, wrapping: dict, context: dict) -> bytes:
    """docs/wrapped-key-format.md: AES-256-GCM(master key, iv, data key, header || context)."""
    key_id_length = wrapped_key[1]
    header = wrapped_key[: 6 + key_id_length]
    iv = wrapped_key[6 + key_id_length : 18 + key_id_length]
    assert iv.hex() == wrapping["iv"]
    return AESGCM(bytes.fromhex(wrapping["master_key"])).decrypt(
        iv, wrapped_key[18 + key_id_length :], header + encode_context(context)
    )


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def decode_context(encoded: bytes) -> dict:
    """docs/envelope-format.md, "Encryption context": the context of a canonical encoding only."""
    at = 0

    def number(low: int, high: int) -> int:
        nonlocal at
        if at + 2 > len(encoded):
            raise Refused("context ends early")
        (value,) = struct.unpack_from(">H", encoded, at)
        if not low <= value <= high:
            raise Refused("context field out of range")
        at += 2
        return value

    def string(low: int, high: int) -> bytes:
        nonlocal at
        length = number(low, high)
        if at + length > len(encoded):
            raise Refused("context ends early")
        at += length
        return encoded[at - length : at]

    if len(encoded) > 8192:
        raise Refused("context too long")
    entries = [(string(1, 128), string(0, 1024)) for _ in range(number(0, 64))]
    keys = [key for key, _ in entries]
    if at != len(encoded) or any(a >= b for a, b in itertools.pairwise(keys)):
        raise Refused("context not canonical")
    try:
        return {key.decode("utf-8"): value.decode("utf-8") for key, value in entries}
    except UnicodeDecodeError:
        raise Refused("context not UTF-8") from None


def independent_decrypt(ciphertext: bytes, data_key_for, context: dict) -> bytes:
    """A reader written from docs/envelope-format.md. ``data_key_for(wrapped_key)``."""
    need = lambda n, at: ciphertext[at : at + n] if at + n <= len(ciphertext) else _raise(Truncated)  # noqa: E731
    magic, version, suite, frame_size = struct.unpack(">4sBHI", need(11, 0))
    if (magic, version, suite) != (b"KMSE", 1, 1) or not 1 <= frame_size <= 2**22:
        raise Refused
    salt = need(32, 11)
    key_id_length = need(1, 43)[0]
    offset = 44 + key_id_length
    (context_length,) = struct.unpack(">H", need(2, offset))
    encoded_context = need(context_length, offset + 2)
    decode_context(encoded_context)
    offset += 2 + context_length
    commitment = need(32, offset)
    authenticated = ciphertext[: offset + 32]
    tag = need(32, offset + 32)
    (wrapped_length,) = struct.unpack(">H", need(2, offset + 64))
    wrapped_key = need(wrapped_length, offset + 66)
    body = ciphertext[offset + 66 + wrapped_length :]
    if encoded_context != encode_context(context):
        raise ContextMismatch
    okm = hkdf(data_key_for(wrapped_key), salt, b"KMSE\x01\x00\x01", 96)
    if not hmac.compare_digest(okm[64:], commitment):
        raise Refused("commitment")
    if not hmac.compare_digest(hmac.new(okm[32:64], authenticated, hashlib.sha256).digest(), tag):
        raise Refused("header tag")
    gcm, step, plaintext, index = AESGCM(okm[:32]), frame_size + 16, b"", 0
    while len(body) >= step:
        try:
            plaintext += gcm.decrypt(bytes(7) + struct.pack(">IB", index, 0), body[:step], tag)
        except InvalidTag:
            raise Refused("frame") from None
        body, index = body[step:], index + 1
    if len(body) < 16:
        raise Truncated
    try:
        return plaintext + gcm.decrypt(bytes(7) + struct.pack(">IB", index, 1), body, tag)
    except InvalidTag:
        raise Refused("final frame") from None


def _raise(error: type[Exception]):
    raise error


def _data_key_for(vector: dict):
    """Unwraps with the vector's own wrapping inputs, or those of the vector it is based on."""
    base = BY_ID.get(vector.get("based_on"), vector)
    wrapping = vector.get("wrapping", base["wrapping"])
    return lambda wrapped_key: unwrap(wrapped_key, wrapping, base["encryption_context"])


def test_the_generator_reproduces_the_file_byte_for_byte():
    script = ROOT / "scripts" / "make_envelope_vectors.py"
    spec = importlib.util.spec_from_file_location("make_envelope_vectors", script)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert json.dumps(generator.build(), indent=2, ensure_ascii=False) + "\n" == VECTOR_FILE.read_text()


def test_the_file_names_its_format_and_holds_each_kind_of_case():
    assert (VECTORS["format_version"], VECTORS["algorithm_suite"]) == (1, 1)
    assert {v["result"] for v in VECTORS["vectors"]} == {"valid", "truncated", "invalid", "context_mismatch"}


@pytest.mark.parametrize("vector", VALID)
def test_valid_vector_decrypts_with_the_sdk_and_the_independent_reader(vector):
    ciphertext = bytes.fromhex(vector["ciphertext"])
    data_key = bytes.fromhex(vector["data_key"])
    assert unwrap(bytes.fromhex(vector["wrapped_key"]), vector["wrapping"], vector["encryption_context"]) == data_key
    plaintext = bytes.fromhex(vector["plaintext"])
    assert open_(ciphertext, data_key) == plaintext
    assert open_stream(ciphertext, data_key=data_key) == plaintext
    assert independent_decrypt(ciphertext, _data_key_for(vector), vector["encryption_context"]) == plaintext
    assert dict(envelope.parse_header_bytes(ciphertext).context) == vector["encryption_context"]


@pytest.mark.parametrize("vector", [v for v in VALID if "salt" in v.values[0]])
def test_the_sdk_reproduces_every_byte_of_a_valid_vector(vector):
    data_key, salt = bytes.fromhex(vector["data_key"]), bytes.fromhex(vector["salt"])
    keys = envelope.derive_message_keys(data_key, salt)
    assert (keys.frame_key.hex(), keys.header_key.hex(), keys.commitment.hex()) == (
        vector["frame_key"],
        vector["header_key"],
        vector["commitment"],
    )
    assert hkdf(data_key, salt, bytes.fromhex(vector["hkdf_info"]), 96).hex() == (
        vector["frame_key"] + vector["header_key"] + vector["commitment"]
    )
    header, sealer = envelope.seal_header(
        data_key,
        key_id=vector["key_id"],
        encoded_context=encode_context(vector["encryption_context"]),
        wrapped_key=bytes.fromhex(vector["wrapped_key"]),
        frame_size=vector["frame_size"],
        salt=salt,
    )
    assert header.authenticated_bytes().hex() == vector["authenticated_header"]
    assert header.header_tag.hex() == vector["header_tag"]
    assert header.encode().hex() == vector["header"]
    body = envelope.seal_frames(sealer, bytes.fromhex(vector["plaintext"]))
    assert body.hex() == "".join(frame["sealed"] for frame in vector["frames"])
    assert (header.encode() + body).hex() == vector["ciphertext"]
    final = [envelope.frame_nonce(i, i == len(vector["frames"]) - 1).hex() for i in range(len(vector["frames"]))]
    assert final == [frame["nonce"] for frame in vector["frames"]]


def test_the_rewrapped_vector_differs_from_its_original_only_in_the_wrapped_key():
    rewrapped = next(v for v in VECTORS["vectors"] if v["comment"].startswith("vector 3 re-wrapped"))
    original = BY_ID[rewrapped["based_on"]]
    old, new = bytes.fromhex(original["ciphertext"]), bytes.fromhex(rewrapped["ciphertext"])
    old_header, new_header = envelope.parse_header_bytes(old), envelope.parse_header_bytes(new)
    assert old[: old_header.wrapped_key_offset] == new[: new_header.wrapped_key_offset]
    assert old[old_header.length :] == new[new_header.length :]
    assert old_header.wrapped_key != new_header.wrapped_key


@pytest.mark.parametrize("vector", REFUSED)
def test_refused_vector_is_refused_for_its_stated_reason_by_the_sdk_and_the_independent_reader(vector):
    ciphertext = bytes.fromhex(vector["ciphertext"])
    lookup = _data_key_for(vector)
    independent, sdk = OUTCOMES[vector["result"]]
    with pytest.raises(Refused) as refused:
        independent_decrypt(ciphertext, lookup, vector["decrypt_context"])
    assert type(refused.value) is independent
    with pytest.raises(InvalidCiphertext) as raised:
        header = envelope.parse_header_bytes(ciphertext)
        if encode_context(vector["decrypt_context"]) != header.encoded_context:
            raise EncryptionContextMismatch("context")
        open_(ciphertext, lookup(header.wrapped_key))
    assert type(raised.value) is sdk
