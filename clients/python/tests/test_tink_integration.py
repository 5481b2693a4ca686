"""The Tink integration (kms_client.integrations.tink) with the real Tink library, through a real
server: KmsEnvelopeAead, encrypted keysets, registered clients, the byte format that
docs/integrations/tink.md states, and the refusals (context, associated data, key, alteration)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import tink
from tink import _kms_clients, aead

from kms_client import EncryptionContextMismatch, InvalidCiphertext, KmsClient, KmsError, parse_header_bytes
from kms_client.integrations.tink import ASSOCIATED_DATA_CONTEXT_KEY, TinkKmsClient, key_uri

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "integrations" / "tink.md"
BASE = {"app": "billing"}
AES256_GCM = aead.aead_key_templates.AES256_GCM

aead.register()


def digest_entry(associated_data: bytes) -> dict[str, str]:
    return {ASSOCIATED_DATA_CONTEXT_KEY: hashlib.sha256(associated_data).hexdigest()}


@pytest.fixture
def tink_kms(client: KmsClient, orders: str) -> TinkKmsClient:
    return TinkKmsClient(client, encryption_context=BASE)


@pytest.fixture
def remote(tink_kms: TinkKmsClient) -> aead.Aead:
    return tink_kms.get_aead("kms-grpc://orders")


@pytest.fixture
def registry():
    """Tink's process-wide list of registered KMS clients, emptied after the test."""
    yield
    _kms_clients.reset_kms_clients()


# -- the remote AEAD and its bytes -------------------------------------------------------------


def test_remote_ciphertext_is_an_envelope_under_the_base_context_and_the_digest_of_the_associated_data(
    remote, client: KmsClient
) -> None:
    ciphertext = remote.encrypt(b"keyset bytes", b"keyset:billing")

    header = parse_header_bytes(ciphertext)
    assert header.key_id == "orders"
    assert dict(header.context) == {**BASE, **digest_entry(b"keyset:billing")}
    # An ordinary SDK ciphertext: the SDK alone opens it with that context (the documented format).
    assert client.decrypt(ciphertext, context=dict(header.context)) == b"keyset bytes"
    assert remote.decrypt(ciphertext, b"keyset:billing") == b"keyset bytes"


def test_remote_ciphertext_length_is_the_documented_formula(remote) -> None:
    for n in (0, 1, 65535, 65536, 200_000):
        ciphertext = remote.encrypt(os.urandom(n), b"")
        encoded_context = len(parse_header_bytes(ciphertext).encoded_context)
        assert encoded_context == 97 + 2 + 3 + 2 + 7  # the digest entry, then "app": "billing"
        assert len(ciphertext) == n + 16 * (n // 65536 + 1) + 178 + 2 * len("orders") + encoded_context


def test_empty_associated_data_is_bound_as_the_digest_of_nothing(remote) -> None:
    ciphertext = remote.encrypt(b"x", b"")
    assert parse_header_bytes(ciphertext).context[ASSOCIATED_DATA_CONTEXT_KEY] == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_wrong_associated_data_is_refused(remote) -> None:
    ciphertext = remote.encrypt(b"secret", b"ad-1")
    for wrong in (b"ad-2", b"", b"ad-1\x00", b"AD-1"):
        with pytest.raises(tink.TinkError) as refused:
            remote.decrypt(ciphertext, wrong)
        assert isinstance(refused.value.__cause__, EncryptionContextMismatch)
    assert remote.decrypt(ciphertext, b"ad-1") == b"secret"


def test_wrong_base_context_is_refused(client: KmsClient, remote) -> None:
    ciphertext = remote.encrypt(b"secret", b"ad")
    for context in ({"app": "payroll"}, {}, {**BASE, "tenant": "acme"}):
        other = TinkKmsClient(client, encryption_context=context).get_aead("kms-grpc://orders")
        with pytest.raises(tink.TinkError, match="EncryptionContextMismatch"):
            other.decrypt(ciphertext, b"ad")


def test_a_header_edited_to_claim_another_context_is_refused_by_the_service(remote, client: KmsClient) -> None:
    """The header's context is checked against the caller's first; an attacker who rewrites it to
    match the caller's context (same length) still fails: the service unwraps the data key only
    under the context it was issued with."""
    ciphertext = remote.encrypt(b"secret", b"ad")
    forged = ciphertext.replace(b"billing", b"payroll", 1)
    assert dict(parse_header_bytes(forged).context)["app"] == "payroll"
    payroll = TinkKmsClient(client, encryption_context={"app": "payroll"}).get_aead("kms-grpc://orders")
    with pytest.raises(tink.TinkError) as refused:
        payroll.decrypt(forged, b"ad")
    assert type(refused.value.__cause__) is InvalidCiphertext


def test_a_ciphertext_of_another_key_is_refused_before_the_service(client: KmsClient, tink_kms) -> None:
    client.create_key("archive")
    ciphertext = tink_kms.get_aead("kms-grpc://archive").encrypt(b"secret", b"")
    with pytest.raises(tink.TinkError, match="under another key"):
        tink_kms.get_aead("kms-grpc://orders").decrypt(ciphertext, b"")
    assert tink_kms.get_aead("kms-grpc://archive").decrypt(ciphertext, b"") == b"secret"


def tampered_positions(ciphertext: bytes) -> dict[str, int]:
    header = parse_header_bytes(ciphertext)
    context_start = 46 + len(header.key_id)
    return {
        "magic": 0,
        "frame size": 10,
        "salt": 20,
        "key id": 44,
        "context": context_start + 3,
        "commitment": context_start + len(header.encoded_context) + 5,
        "header tag": header.length - len(header.wrapped_key) - 10,
        "wrapped key": header.length - 20,
        "body": header.length + 3,
        "frame tag": len(ciphertext) - 1,
    }


def test_every_region_of_a_tampered_remote_ciphertext_is_refused(remote) -> None:
    ciphertext = remote.encrypt(b"the plaintext of a keyset", b"ad")
    for region, position in tampered_positions(ciphertext).items():
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0x01
        with pytest.raises(tink.TinkError) as refused:
            remote.decrypt(bytes(tampered), b"ad")
        if region == "key id":
            assert "under another key" in str(refused.value)
        else:
            assert isinstance(refused.value.__cause__, KmsError), region
    for cut in (0, 10, len(ciphertext) - 1):
        with pytest.raises(tink.TinkError):
            remote.decrypt(ciphertext[:cut], b"ad")
    with pytest.raises(tink.TinkError):
        remote.decrypt(ciphertext + b"\x00", b"ad")


# -- KmsEnvelopeAead ---------------------------------------------------------------------------


def test_kms_envelope_aead_round_trip_and_its_layout(remote, client: KmsClient) -> None:
    envelope = aead.KmsEnvelopeAead(AES256_GCM, remote)
    ciphertext = envelope.encrypt(b"a record" * 100, b"row 7")
    assert envelope.decrypt(ciphertext, b"row 7") == b"a record" * 100

    # uint32 length || our envelope of the serialized DEK (empty associated data) || DEK ciphertext
    (length,) = struct.unpack(">I", ciphertext[:4])
    encrypted_dek = ciphertext[4 : 4 + length]
    header = parse_header_bytes(encrypted_dek)
    assert (header.key_id, dict(header.context)) == ("orders", {**BASE, **digest_entry(b"")})
    dek = client.decrypt(encrypted_dek, context=dict(header.context))
    assert length == len(dek) + 194 + 2 * len("orders") + len(header.encoded_context)
    assert len(ciphertext) == 4 + length + 12 + 800 + 16  # Tink's AES-GCM: IV, ciphertext, tag


def test_kms_envelope_aead_refuses_wrong_context_associated_data_and_tampering(client: KmsClient, remote) -> None:
    envelope = aead.KmsEnvelopeAead(AES256_GCM, remote)
    ciphertext = envelope.encrypt(b"a record", b"row 7")
    other = TinkKmsClient(client, encryption_context={"app": "payroll"}).get_aead("kms-grpc://orders")
    with pytest.raises(tink.TinkError):
        aead.KmsEnvelopeAead(AES256_GCM, other).decrypt(ciphertext, b"row 7")
    with pytest.raises(tink.TinkError):
        envelope.decrypt(ciphertext, b"row 8")
    (length,) = struct.unpack(">I", ciphertext[:4])
    for position in (4 + 50, 4 + length - 1, 4 + length + 20, len(ciphertext) - 1):  # encrypted DEK, then payload
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0x80
        with pytest.raises(tink.TinkError):
            envelope.decrypt(bytes(tampered), b"row 7")


# -- encrypted keysets -------------------------------------------------------------------------


def test_json_keyset_encrypted_by_the_kms_is_written_and_read_back(remote, tmp_path: Path) -> None:
    handle = tink.new_keyset_handle(AES256_GCM)
    path = tmp_path / "keyset.json"
    path.write_text(tink.json_proto_keyset_format.serialize_encrypted(handle, remote, b"keyset:billing"))

    stored = path.read_text()
    encrypted_keyset = base64.b64decode(json.loads(stored)["encryptedKeyset"])
    assert parse_header_bytes(encrypted_keyset).context[ASSOCIATED_DATA_CONTEXT_KEY] == (
        hashlib.sha256(b"keyset:billing").hexdigest()
    )
    assert b"keyValue" not in stored.encode() and b"AesGcmKey" in stored.encode()  # only key info in clear

    restored = tink.json_proto_keyset_format.parse_encrypted(stored, remote, b"keyset:billing")
    token = handle.primitive(aead.Aead).encrypt(b"hello", b"ctx")
    assert restored.primitive(aead.Aead).decrypt(token, b"ctx") == b"hello"
    assert restored.keyset_info() == handle.keyset_info()


def test_binary_keyset_encrypted_by_the_kms_is_written_and_read_back(remote) -> None:
    handle = tink.new_keyset_handle(aead.aead_key_templates.AES128_CTR_HMAC_SHA256)
    stored = tink.proto_keyset_format.serialize_encrypted(handle, remote, b"")
    restored = tink.proto_keyset_format.parse_encrypted(stored, remote, b"")
    token = restored.primitive(aead.Aead).encrypt(b"hello", b"")
    assert handle.primitive(aead.Aead).decrypt(token, b"") == b"hello"


def test_encrypted_keyset_refuses_wrong_associated_data_wrong_context_and_tampering(client: KmsClient, remote) -> None:
    handle = tink.new_keyset_handle(AES256_GCM)
    stored = tink.json_proto_keyset_format.serialize_encrypted(handle, remote, b"keyset:billing")
    with pytest.raises(tink.TinkError):
        tink.json_proto_keyset_format.parse_encrypted(stored, remote, b"keyset:payroll")
    other = TinkKmsClient(client, encryption_context={"app": "payroll"}).get_aead("kms-grpc://orders")
    with pytest.raises(tink.TinkError):
        tink.json_proto_keyset_format.parse_encrypted(stored, other, b"keyset:billing")

    document = json.loads(stored)
    encrypted = bytearray(base64.b64decode(document["encryptedKeyset"]))
    encrypted[-5] ^= 0x01
    document["encryptedKeyset"] = base64.b64encode(bytes(encrypted)).decode()
    with pytest.raises(tink.TinkError):
        tink.json_proto_keyset_format.parse_encrypted(json.dumps(document), remote, b"keyset:billing")


# -- URIs, registration, configuration ---------------------------------------------------------


def test_key_uris(client: KmsClient) -> None:
    unbound = TinkKmsClient(client)
    assert unbound.does_support("kms-grpc://orders") and unbound.does_support("kms-grpc://A_b-9")
    assert unbound.does_support("kms-grpc://" + "k" * 64)
    for uri in (
        "kms-grpc://",
        "kms-grpc://orders/",
        "kms-grpc://host:50051/orders",
        "kms-grpc://orders?x=1",
        "kms-grpc://ördérs",
        "kms-grpc://" + "k" * 65,
        "aws-kms://orders",
        "KMS-GRPC://orders",
        "orders",
    ):
        assert not unbound.does_support(uri), uri
        with pytest.raises(tink.TinkError):
            unbound.get_aead(uri)

    bound = TinkKmsClient(client, key_uri="kms-grpc://orders")
    assert bound.does_support("kms-grpc://orders") and not bound.does_support("kms-grpc://archive")
    with pytest.raises(tink.TinkError, match="bound to kms-grpc://orders"):
        bound.get_aead("kms-grpc://archive")
    assert key_uri("orders") == "kms-grpc://orders"
    with pytest.raises(ValueError):
        key_uri("orders/1")
    with pytest.raises(ValueError):
        TinkKmsClient(client, key_uri="kms-grpc://orders/")


def test_invalid_base_contexts_are_refused_when_the_client_is_made(client: KmsClient) -> None:
    with pytest.raises(ValueError, match="reserved"):
        TinkKmsClient(client, encryption_context={ASSOCIATED_DATA_CONTEXT_KEY: "0" * 64})
    with pytest.raises(ValueError, match="invalid encryption context"):
        TinkKmsClient(client, encryption_context={"": "empty key"})
    with pytest.raises(ValueError, match="invalid encryption context"):
        TinkKmsClient(client, encryption_context={f"k{i}": "v" for i in range(64)})  # 65 with the digest
    TinkKmsClient(client, encryption_context={f"k{i}": "v" for i in range(63)})
    with pytest.raises(TypeError):
        TinkKmsClient("127.0.0.1:1")  # type: ignore[arg-type]


def test_registered_client_serves_kms_envelope_and_kms_aead_key_templates(client: KmsClient, orders, registry) -> None:
    tink.register_kms_client(TinkKmsClient(client, key_uri="kms-grpc://orders", encryption_context=BASE))
    templates = (
        aead.aead_key_templates.create_kms_envelope_aead_key_template("kms-grpc://orders", AES256_GCM),
        aead.aead_key_templates.create_kms_aead_key_template("kms-grpc://orders"),
    )
    for template in templates:
        primitive = tink.new_keyset_handle(template).primitive(aead.Aead)
        ciphertext = primitive.encrypt(b"data", b"ad")
        assert primitive.decrypt(ciphertext, b"ad") == b"data"
        with pytest.raises(tink.TinkError):
            primitive.decrypt(ciphertext, b"other ad")


def test_errors_and_reprs_carry_no_secrets(client: KmsClient, tink_kms, remote) -> None:
    ciphertext = remote.encrypt(b"PLAINTEXT-MARKER", b"AD-MARKER")
    with pytest.raises(tink.TinkError) as refused:
        remote.decrypt(ciphertext, b"AD-MARKER-2")
    shown = " ".join(
        [str(refused.value), repr(refused.value), repr(refused.value.__cause__), repr(remote), repr(tink_kms)]
    )
    assert "MARKER" not in shown
    assert repr(remote) == "RemoteAead(key_uri='kms-grpc://orders')"


def test_the_service_being_down_is_a_tink_error() -> None:
    with KmsClient("127.0.0.1:1", timeout=1) as unreachable:
        remote = TinkKmsClient(unreachable).get_aead("kms-grpc://orders")
        with pytest.raises(tink.TinkError, match=r"Unavailable|DeadlineExceeded"):
            remote.encrypt(b"x", b"")


def test_importing_kms_client_imports_neither_tink_nor_the_esdk() -> None:
    program = (
        "import sys, kms_client, kms_client.integrations\n"
        "names = ('tink', 'aws_encryption_sdk', 'aws_cryptographic_material_providers')\n"
        "loaded = [m for m in names if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


# -- the documentation's example ---------------------------------------------------------------


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown.read_text(), flags=re.S | re.M)


def test_the_documented_example_runs_as_written(server, client: KmsClient, orders, registry, monkeypatch) -> None:
    blocks = python_blocks(DOC)
    assert len(blocks) == 2
    monkeypatch.setenv("KMS_TARGET", server.target)
    namespace: dict = {"__name__": "docs_example"}
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        if "kms" in namespace:
            namespace["kms"].close()
    # The example's ciphertext opens here, so it was made with this server's key and context.
    remote = TinkKmsClient(client, encryption_context=BASE).get_aead("kms-grpc://orders")
    ours = aead.KmsEnvelopeAead(AES256_GCM, remote)
    assert ours.decrypt(namespace["ciphertext"], b"customer-42") == b"card 4111 1111 1111 1111"
