"""The SDK's primitives against Wycheproof (AES-256-GCM, HKDF-SHA256) and its context encoding
against the service's (kms.crypto.context), which binds the same bytes to wrapped keys."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from kms.crypto.context import encode_context as service_encode_context
from kms.errors import InvalidEncryptionContext as ServiceInvalidEncryptionContext
from kms_client import envelope
from kms_client._context import decode_context, encode_context
from kms_client.errors import InvalidCiphertext, InvalidEncryptionContext

ROOT = Path(__file__).resolve().parents[3]
WYCHEPROOF = ROOT / "tests" / "vectors" / "wycheproof"


def _load(name: str) -> dict:
    return json.loads((WYCHEPROOF / name).read_text())


GCM_VECTORS = [
    pytest.param(test, id=f"tc{test['tcId']}-{test['result']}")
    for group in _load("aes_gcm_test.json")["testGroups"]
    if group["keySize"] == 256 and group["ivSize"] == 96 and group["tagSize"] == 128
    for test in group["tests"]
]
HKDF_VECTORS = [
    pytest.param(test, id=f"tc{test['tcId']}-{test['result']}")
    for group in _load("hkdf_sha256_test.json")["testGroups"]
    for test in group["tests"]
]


def test_the_vector_selections_cover_valid_and_invalid_cases():
    assert len(GCM_VECTORS) >= 60 and {p.values[0]["result"] for p in GCM_VECTORS} == {"valid", "invalid"}
    assert len(HKDF_VECTORS) >= 80 and {p.values[0]["result"] for p in HKDF_VECTORS} == {"valid", "invalid"}


@pytest.mark.parametrize("vector", GCM_VECTORS)
def test_frame_cipher_against_wycheproof(vector):
    gcm = envelope.Aes256Gcm(bytes.fromhex(vector["key"]))
    nonce, aad, msg = (bytes.fromhex(vector[name]) for name in ("iv", "aad", "msg"))
    sealed = bytes.fromhex(vector["ct"]) + bytes.fromhex(vector["tag"])
    out = bytearray(max(len(sealed) - 16, 0))
    if vector["result"] == "valid":
        assert gcm.seal(nonce, msg, aad) == sealed
        assert gcm.open(nonce, sealed, aad) == msg
        gcm.open_into(nonce, memoryview(sealed), aad, memoryview(out))
        assert out == msg
        into = bytearray(len(sealed))
        gcm.seal_into(nonce, memoryview(msg), aad, memoryview(into))
        assert into == sealed
    else:
        with pytest.raises(InvalidCiphertext):
            gcm.open(nonce, sealed, aad)
        with pytest.raises(InvalidCiphertext):
            gcm.open_into(nonce, memoryview(sealed), aad, memoryview(out))
        assert out == bytes(len(out))


@pytest.mark.parametrize("vector", HKDF_VECTORS)
def test_hkdf_against_wycheproof(vector):
    ikm, salt, info = (bytes.fromhex(vector[name]) for name in ("ikm", "salt", "info"))
    if vector["result"] == "valid":
        assert envelope.hkdf_sha256(ikm, salt, info, vector["size"]).hex() == vector["okm"]
    else:
        with pytest.raises(ValueError):
            envelope.hkdf_sha256(ikm, salt, info, vector["size"])


def test_message_keys_are_the_three_thirds_of_one_hkdf_output():
    data_key, salt = bytes(range(32)), bytes(range(32, 64))
    okm = envelope.hkdf_sha256(data_key, salt, b"KMSE\x01\x00\x01", 96)
    keys = envelope.derive_message_keys(data_key, salt)
    assert (keys.frame_key, keys.header_key, keys.commitment) == (okm[:32], okm[32:64], okm[64:])
    assert data_key.hex() not in repr(keys) and keys.frame_key.hex() not in repr(keys)


contexts = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=30), max_size=8)


@settings(max_examples=300)
@given(contexts)
def test_context_encoding_is_the_services_and_decodes_back(context):
    encoded = encode_context(context)
    assert encoded == service_encode_context(context)
    assert decode_context(encoded) == context


def test_context_example_from_the_wrapped_key_specification():
    encoded = encode_context({"tenant": "acme", "a": ""})
    assert encoded.hex() == "00020001610000000674656e616e74000461636d65"


def test_the_envelope_specification_spells_out_every_field_of_the_context_encoding():
    section = (ROOT / "docs" / "envelope-format.md").read_text().split("### Encryption context\n")[1]
    layout = section.split("```\n")[1]
    rows = [line.split() for line in layout.splitlines() if line.strip() and not line.startswith("then")]
    assert [row[1] if row[0] == "uint16" else row[0] for row in rows] == ["N", "len(key)", "key", "len(value)", "value"]
    example = re.search(r"Example: `(\{.*?\})`\s+encodes to\s+```\n(.*?)\n```", section, re.S)
    assert example, "the section shows an example encoding"
    context, encoded = json.loads(example[1]), bytes.fromhex(example[2].replace(" ", ""))
    assert encode_context(context) == encoded and decode_context(encoded) == context


def test_the_frame_cipher_writes_into_the_callers_buffers():
    """Sealing and opening in place (AESGCM.encrypt_into, decrypt_into: pyca/cryptography 47 and
    later, which is why the SDK requires it) leave the result in the buffer given, and a failed
    open leaves zeros there, never unauthenticated plaintext."""
    key, nonce, aad, plaintext = bytes(range(32)), bytes(12), b"header", b"frame of plaintext"
    gcm = envelope.Aes256Gcm(key)
    sealed = bytearray(len(plaintext) + 16)
    gcm.seal_into(nonce, plaintext, aad, sealed)
    assert sealed == AESGCM(key).encrypt(nonce, plaintext, aad)
    opened = bytearray(len(plaintext))
    gcm.open_into(nonce, memoryview(bytes(sealed)), aad, memoryview(opened))
    assert opened == plaintext
    sealed[0] ^= 1
    with pytest.raises(InvalidCiphertext):
        gcm.open_into(nonce, memoryview(bytes(sealed)), aad, memoryview(opened))
    assert opened == bytes(len(plaintext))


def test_the_installed_sdk_accepts_the_cryptography_it_runs_with():
    """What pip enforces is the installed distribution's metadata, not pyproject.toml's text."""
    requirements = [Requirement(r) for r in importlib.metadata.requires("kms-client")]
    (cryptography,) = [r for r in requirements if r.name == "cryptography"]
    assert cryptography.specifier.contains(importlib.metadata.version("cryptography"))


@pytest.mark.parametrize(
    "context",
    [
        {str(i): "" for i in range(65)},
        {"": "x"},
        {"k" * 129: ""},
        {"k": "v" * 1025},
        {f"{i:03d}" + "k" * 120: "v" * 1000 for i in range(9)},
        {"\ud800": "lone surrogate"},
    ],
    ids=["entries", "empty-key", "long-key", "long-value", "total", "surrogate"],
)
def test_contexts_over_a_limit_are_refused_like_the_service_does(context):
    with pytest.raises(InvalidEncryptionContext):
        encode_context(context)
    with pytest.raises(ServiceInvalidEncryptionContext):
        service_encode_context(context)


@pytest.mark.parametrize(
    "encoded",
    [
        "000200016200000001610000",  # keys out of order
        "000200016100000001610000",  # duplicate key
        "0001000161000000",  # trailing byte
        "0001000261",  # key runs past the end
        "000100000000",  # empty key
        "00010001ff0000",  # not UTF-8
        "00",  # too short
    ],
)
def test_non_canonical_context_encodings_are_refused(encoded):
    with pytest.raises(InvalidCiphertext):
        decode_context(bytes.fromhex(encoded))


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_context_decoder(data):
    try:
        context = decode_context(data)
    except InvalidCiphertext:
        return
    assert encode_context(context) == data
