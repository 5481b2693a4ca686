"""The AWS Encryption SDK integration (kms_client.integrations.aws_encryption_sdk) with the real
ESDK and Material Providers Library, through a real server: master keys and the keyring, one and
several keys, streams, the encrypted data keys that docs/integrations/aws-encryption-sdk.md
describes, data key lengths, and the refusals (context, tampering, key ids)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import aws_encryption_sdk
import pytest
from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
from aws_cryptographic_material_providers.mpl.errors import AwsCryptographicMaterialProvidersException
from aws_cryptographic_material_providers.mpl.models import (
    AesWrappingAlg,
    CreateDefaultCryptographicMaterialsManagerInput,
    CreateMultiKeyringInput,
    CreateRawAesKeyringInput,
    CreateRequiredEncryptionContextCMMInput,
    DecryptionMaterials,
    OnDecryptInput,
)
from aws_encryption_sdk import Algorithm, CommitmentPolicy
from aws_encryption_sdk.exceptions import (
    AWSEncryptionSDKClientError,
    DecryptKeyError,
    GenerateKeyError,
    IncorrectMasterKeyError,
    InvalidKeyIdError,
)
from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
from cryptography.exceptions import InvalidSignature, InvalidTag

from kms_client import InvalidCiphertext, KmsClient, parse_header_bytes
from kms_client.integrations.aws_encryption_sdk import (
    PROVIDER_ID,
    KmsGrpcKeyring,
    KmsGrpcMasterKey,
    KmsGrpcMasterKeyProvider,
)

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "integrations" / "aws-encryption-sdk.md"
CONTEXT = {"tenant": "acme", "purpose": "invoice"}
AES_128 = Algorithm.AES_128_GCM_IV12_TAG16_HKDF_SHA256
PLAINTEXT = b"invoice 2024-001: 1 x widget" * 40


class StaticAesProvider(RawMasterKeyProvider):
    """A raw AES master key provider of the ESDK with a fixed wrapping key: another, unrelated
    generator for the multi-key tests."""

    provider_id = "test-static-aes"

    def _get_raw_key(self, key_id: bytes) -> WrappingKey:
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=bytes(range(32)),
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


@pytest.fixture
def archive(client: KmsClient) -> str:
    client.create_key("archive")
    return "archive"


@pytest.fixture
def esdk() -> aws_encryption_sdk.EncryptionSDKClient:
    return aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


@pytest.fixture
def legacy_esdk() -> aws_encryption_sdk.EncryptionSDKClient:
    """The only policy under which the ESDK encrypts with a non-committing (e.g. AES-128) suite."""
    return aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)


@pytest.fixture
def mpl() -> AwsCryptographicMaterialProviders:
    return AwsCryptographicMaterialProviders(MaterialProvidersConfig())


def provider(client: KmsClient, *key_ids: str) -> KmsGrpcMasterKeyProvider:
    return KmsGrpcMasterKeyProvider(client=client, key_ids=list(key_ids))


def ours(header) -> list:
    return [edk for edk in header.encrypted_data_keys if edk.key_provider.provider_id == PROVIDER_ID]


def contains(context: dict, expected: dict) -> bool:
    return all(context.get(key) == value for key, value in expected.items())


# -- master key provider -----------------------------------------------------------------------


def test_master_key_provider_round_trip_and_its_edk_is_the_services_wrapped_key(
    esdk, client: KmsClient, orders
) -> None:
    keys = provider(client, "orders")
    ciphertext, header = esdk.encrypt(source=PLAINTEXT, key_provider=keys, encryption_context=CONTEXT)

    (edk,) = header.encrypted_data_keys
    assert (edk.key_provider.provider_id, edk.key_provider.key_info) == ("kms-grpc", b"orders")
    wrapped = edk.encrypted_data_key
    assert len(wrapped) == 66 + len("orders") and wrapped[0] == 0x01 and wrapped[2:8] == b"orders"
    # The service opens it under the message's context exactly (the default suite signs, so that
    # includes the public key the ESDK added) and under nothing else.
    assert "aws-crypto-public-key" in header.encryption_context
    unwrapped = client.decrypt_data_key(wrapped, dict(header.encryption_context))
    assert unwrapped.key_id == "orders" and len(unwrapped.plaintext) == 32
    with pytest.raises(InvalidCiphertext):
        client.decrypt_data_key(wrapped, CONTEXT)

    plaintext, decrypted_header = esdk.decrypt(source=ciphertext, key_provider=provider(client, "orders"))
    assert plaintext == PLAINTEXT
    assert contains(decrypted_header.encryption_context, CONTEXT)


def test_a_single_master_key_is_a_provider_too(esdk, client: KmsClient, orders) -> None:
    master_key = KmsGrpcMasterKey(key_id="orders", client=client)
    ciphertext, _ = esdk.encrypt(source=PLAINTEXT, key_provider=master_key, encryption_context=CONTEXT)
    assert esdk.decrypt(source=ciphertext, key_provider=master_key)[0] == PLAINTEXT
    assert esdk.decrypt(source=ciphertext, key_provider=provider(client, "orders"))[0] == PLAINTEXT


def test_streaming_round_trip(esdk, client: KmsClient, orders) -> None:
    document = os.urandom(300_000)
    keys = provider(client, "orders")
    encrypted = io.BytesIO()
    with esdk.stream(
        mode="e", source=io.BytesIO(document), key_provider=keys, encryption_context=CONTEXT, frame_length=4096
    ) as encryptor:
        for chunk in encryptor:
            encrypted.write(chunk)
    assert len(encrypted.getvalue()) > len(document)
    decrypted = io.BytesIO()
    with esdk.stream(mode="d", source=io.BytesIO(encrypted.getvalue()), key_provider=keys) as decryptor:
        for chunk in decryptor:
            decrypted.write(chunk)
        assert contains(decryptor.header.encryption_context, CONTEXT)
    assert decrypted.getvalue() == document


def test_several_keys_the_first_generates_and_the_others_seal_the_data_key_in_an_envelope(
    esdk, client: KmsClient, orders, archive
) -> None:
    ciphertext, header = esdk.encrypt(
        source=PLAINTEXT, key_provider=provider(client, "orders", "archive"), encryption_context=CONTEXT
    )
    by_key = {edk.key_provider.key_info: edk for edk in header.encrypted_data_keys}  # a set: no order
    generated, sealed = by_key[b"orders"], by_key[b"archive"]
    assert generated.key_provider.key_info == b"orders" and generated.encrypted_data_key[0] == 0x01
    assert sealed.key_provider.key_info == b"archive" and sealed.encrypted_data_key[:4] == b"KMSE"
    envelope = parse_header_bytes(sealed.encrypted_data_key)
    assert envelope.key_id == "archive" and dict(envelope.context) == dict(header.encryption_context)
    assert len(sealed.encrypted_data_key) == 32 + 194 + 2 * len("archive") + len(envelope.encoded_context)
    # The envelope holds the very data key the generator wrapped.
    generator_key = client.decrypt_data_key(generated.encrypted_data_key, dict(header.encryption_context)).plaintext
    assert client.decrypt(sealed.encrypted_data_key, context=dict(header.encryption_context)) == generator_key

    assert esdk.decrypt(source=ciphertext, key_provider=provider(client, "archive"))[0] == PLAINTEXT
    assert esdk.decrypt(source=ciphertext, key_provider=provider(client, "orders"))[0] == PLAINTEXT


@pytest.mark.usefixtures("orders", "archive")
def test_a_strict_provider_does_not_follow_key_ids_that_a_message_names(esdk, client: KmsClient) -> None:
    ciphertext, _ = esdk.encrypt(source=PLAINTEXT, key_provider=provider(client, "archive"), encryption_context=CONTEXT)
    with pytest.raises(DecryptKeyError):
        esdk.decrypt(source=ciphertext, key_provider=provider(client, "orders"))


# -- context binding ---------------------------------------------------------------------------


def test_a_master_key_refuses_its_edks_under_another_context(esdk, client: KmsClient, orders, archive) -> None:
    _, header = esdk.encrypt(
        source=PLAINTEXT, key_provider=provider(client, "orders", "archive"), encryption_context=CONTEXT
    )
    assert sorted(edk.encrypted_data_key[:1] for edk in header.encrypted_data_keys) == [b"\x01", b"K"]
    for edk in header.encrypted_data_keys:  # a wrapped key and an envelope
        master_key = KmsGrpcMasterKey(key_id=edk.key_provider.key_info, client=client)
        right = dict(header.encryption_context)
        assert len(master_key.decrypt_data_key(edk, header.algorithm, right).data_key) == 32
        for wrong in ({**right, "tenant": "globex"}, {**right, "extra": ""}, CONTEXT):
            with pytest.raises(DecryptKeyError):
                master_key.decrypt_data_key(edk, header.algorithm, wrong)


def alter_context(ciphertext: bytes) -> bytes:
    """The message with the context value "acme" replaced by "evil" (same length) wherever it is
    stored: the message header, and the header of an envelope EDK, which keeps a copy."""
    assert b"acme" in ciphertext
    return ciphertext.replace(b"acme", b"evil")


@pytest.mark.parametrize("key_ids", [("orders",), ("orders", "archive")])
@pytest.mark.usefixtures("orders", "archive")
def test_a_message_with_an_altered_context_does_not_get_its_data_key(esdk, client: KmsClient, key_ids) -> None:
    """DecryptKeyError, not the ESDK's header authentication failure (SerializationError) that
    follows it: the service refuses to unwrap under the altered context, for both EDK forms."""
    ciphertext, _ = esdk.encrypt(source=PLAINTEXT, key_provider=provider(client, *key_ids), encryption_context=CONTEXT)
    with pytest.raises(DecryptKeyError):
        esdk.decrypt(source=alter_context(ciphertext), key_provider=provider(client, key_ids[-1]))


# -- tampering ---------------------------------------------------------------------------------


def test_a_tampered_edk_is_refused(esdk, client: KmsClient, orders, archive) -> None:
    ciphertext, header = esdk.encrypt(
        source=PLAINTEXT, key_provider=provider(client, "orders", "archive"), encryption_context=CONTEXT
    )
    for edk in header.encrypted_data_keys:
        start = ciphertext.index(edk.encrypted_data_key)
        for offset in (1, len(edk.encrypted_data_key) // 2, len(edk.encrypted_data_key) - 1):
            tampered = bytearray(ciphertext)
            tampered[start + offset] ^= 0x01
            with pytest.raises(DecryptKeyError):
                esdk.decrypt(source=bytes(tampered), key_provider=provider(client, edk.key_provider.key_info))


def test_a_tampered_message_body_is_refused(esdk, client: KmsClient, orders) -> None:
    """The ESDK's own checks, with our data key: a frame and the footer's signature (the ESDK lets
    cryptography's InvalidTag and InvalidSignature through unwrapped)."""
    ciphertext, _ = esdk.encrypt(source=PLAINTEXT, key_provider=provider(client, "orders"), encryption_context=CONTEXT)
    for position in (len(ciphertext) // 2, len(ciphertext) - 1):
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0x01
        with pytest.raises((AWSEncryptionSDKClientError, InvalidTag, InvalidSignature)):
            esdk.decrypt(source=bytes(tampered), key_provider=provider(client, "orders"))


def test_an_edk_of_another_key_relabelled_as_ours_is_refused(esdk, client: KmsClient, orders, archive) -> None:
    """EDKs claiming key "orders" whose ciphertext is really under "archive", in both forms: the
    service opens the wrapped key but reports "archive", the envelope's header names "archive",
    and the master key refuses both."""
    _, header = esdk.encrypt(
        source=PLAINTEXT, key_provider=provider(client, "orders", "archive"), encryption_context=CONTEXT
    )
    context = dict(header.encryption_context)
    by_key = {edk.key_provider.key_info: edk for edk in header.encrypted_data_keys}
    _, archive_header = esdk.encrypt(
        source=PLAINTEXT, key_provider=provider(client, "archive"), encryption_context=CONTEXT
    )
    (wrapped,) = archive_header.encrypted_data_keys
    master_key = KmsGrpcMasterKey(key_id="orders", client=client)
    for edk, edk_context in ((wrapped, dict(archive_header.encryption_context)), (by_key[b"archive"], context)):
        relabelled = type(edk)(
            key_provider=type(edk.key_provider)(PROVIDER_ID, b"orders"), encrypted_data_key=edk.encrypted_data_key
        )
        with pytest.raises(DecryptKeyError, match="InvalidCiphertext"):
            master_key.decrypt_data_key(relabelled, header.algorithm, edk_context)
        with pytest.raises(IncorrectMasterKeyError):
            master_key.decrypt_data_key(edk, header.algorithm, edk_context)


# -- data key lengths --------------------------------------------------------------------------


def test_generating_for_a_suite_with_a_shorter_data_key_is_refused(legacy_esdk, client: KmsClient, orders) -> None:
    with pytest.raises(GenerateKeyError, match=r"needs 16 bytes.*32-byte"):
        legacy_esdk.encrypt(source=PLAINTEXT, key_provider=provider(client, "orders"), algorithm=AES_128)
    assert client.get_key("orders").versions[0].data_keys_issued == 0  # refused before asking the service


@pytest.mark.usefixtures("orders")
def test_beside_another_generator_a_shorter_data_key_is_sealed_and_opened(legacy_esdk, client: KmsClient) -> None:
    keys = StaticAesProvider()
    keys.add_master_key(b"static")
    keys.add_master_key_provider(provider(client, "orders"))
    ciphertext, header = legacy_esdk.encrypt(
        source=PLAINTEXT, key_provider=keys, algorithm=AES_128, encryption_context=CONTEXT
    )
    (edk,) = ours(header)
    assert edk.encrypted_data_key[:4] == b"KMSE"
    assert len(client.decrypt(edk.encrypted_data_key, context=dict(header.encryption_context))) == 16
    plaintext, _ = legacy_esdk.decrypt(source=ciphertext, key_provider=provider(client, "orders"))
    assert plaintext == PLAINTEXT

    # The same sealed 16-byte key offered for a 32-byte suite is refused, not padded or accepted.
    master_key = KmsGrpcMasterKey(key_id="orders", client=client)
    with pytest.raises(DecryptKeyError, match="InvalidCiphertext"):
        master_key._decrypt_data_key(edk, Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY, dict(header.encryption_context))


# -- keyring -----------------------------------------------------------------------------------


def test_keyring_round_trip_and_decrypt_checks_the_reproduced_context(esdk, client: KmsClient, orders) -> None:
    keyring = KmsGrpcKeyring(client, "orders")
    ciphertext, header = esdk.encrypt(source=PLAINTEXT, keyring=keyring, encryption_context=CONTEXT)
    (edk,) = header.encrypted_data_keys
    assert edk.key_provider.provider_id == "kms-grpc" and edk.encrypted_data_key[0] == 0x01

    assert esdk.decrypt(source=ciphertext, keyring=keyring, encryption_context=CONTEXT)[0] == PLAINTEXT
    with pytest.raises(AWSEncryptionSDKClientError):
        esdk.decrypt(source=ciphertext, keyring=keyring, encryption_context={**CONTEXT, "tenant": "globex"})


def test_keyring_and_master_key_provider_read_each_others_messages(esdk, client: KmsClient, orders) -> None:
    keyring, keys = KmsGrpcKeyring(client, "orders"), provider(client, "orders")
    by_keyring, _ = esdk.encrypt(source=PLAINTEXT, keyring=keyring, encryption_context=CONTEXT)
    by_provider, _ = esdk.encrypt(source=PLAINTEXT, key_provider=keys, encryption_context=CONTEXT)
    assert esdk.decrypt(source=by_keyring, key_provider=keys)[0] == PLAINTEXT
    assert esdk.decrypt(source=by_provider, keyring=keyring)[0] == PLAINTEXT


def test_the_keyring_refuses_a_message_with_an_altered_context(esdk, client: KmsClient, orders) -> None:
    keyring = KmsGrpcKeyring(client, "orders")
    ciphertext, _ = esdk.encrypt(source=PLAINTEXT, keyring=keyring, encryption_context=CONTEXT)
    with pytest.raises(AWSEncryptionSDKClientError, match="kms-grpc keyring, key orders: no encrypted data key"):
        esdk.decrypt(source=alter_context(ciphertext), keyring=keyring)


@pytest.mark.usefixtures("orders", "archive")
def test_the_keyring_refuses_a_tampered_edk_and_messages_without_its_key(esdk, client: KmsClient) -> None:
    keyring = KmsGrpcKeyring(client, "orders")
    ciphertext, header = esdk.encrypt(source=PLAINTEXT, keyring=keyring, encryption_context=CONTEXT)
    (edk,) = header.encrypted_data_keys
    tampered = bytearray(ciphertext)
    tampered[ciphertext.index(edk.encrypted_data_key) + 30] ^= 0x01
    with pytest.raises(AWSEncryptionSDKClientError, match="InvalidCiphertext"):
        esdk.decrypt(source=bytes(tampered), keyring=KmsGrpcKeyring(client, "orders"))
    with pytest.raises(AWSEncryptionSDKClientError, match="no encrypted data key of this key"):
        esdk.decrypt(source=ciphertext, keyring=KmsGrpcKeyring(client, "archive"))


@pytest.mark.usefixtures("orders")
def test_keyring_in_a_multi_keyring_beside_a_raw_aes_generator(legacy_esdk, esdk, mpl, client: KmsClient) -> None:
    raw = mpl.create_raw_aes_keyring(
        CreateRawAesKeyringInput(
            key_namespace="test",
            key_name="static",
            wrapping_key=bytes(range(32)),
            wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
        )
    )
    keyring = KmsGrpcKeyring(client, "orders")
    multi = mpl.create_multi_keyring(CreateMultiKeyringInput(generator=raw, child_keyrings=[keyring]))
    for sdk, suite in ((esdk, None), (legacy_esdk, AES_128)):
        options = {"algorithm": suite} if suite else {}
        ciphertext, header = sdk.encrypt(source=PLAINTEXT, keyring=multi, encryption_context=CONTEXT, **options)
        (edk,) = ours(header)
        assert edk.encrypted_data_key[:4] == b"KMSE"
        data_key = client.decrypt(edk.encrypted_data_key, context=dict(header.encryption_context))
        assert len(data_key) == (16 if suite else 32)
        plaintext, _ = sdk.decrypt(source=ciphertext, keyring=keyring, encryption_context=CONTEXT)
        assert plaintext == PLAINTEXT


@pytest.mark.usefixtures("orders")
def test_the_keyring_refuses_to_generate_for_a_suite_with_a_shorter_data_key(legacy_esdk, client: KmsClient) -> None:
    with pytest.raises(AWSEncryptionSDKClientError, match=r"needs 16 bytes.*32-byte"):
        legacy_esdk.encrypt(source=PLAINTEXT, keyring=KmsGrpcKeyring(client, "orders"), algorithm=AES_128)


def test_required_encryption_context_pairs_are_bound_though_not_stored(esdk, mpl, client: KmsClient, orders) -> None:
    underlying = mpl.create_default_cryptographic_materials_manager(
        CreateDefaultCryptographicMaterialsManagerInput(keyring=KmsGrpcKeyring(client, "orders"))
    )
    cmm = mpl.create_required_encryption_context_cmm(
        CreateRequiredEncryptionContextCMMInput(underlying_cmm=underlying, required_encryption_context_keys=["tenant"])
    )
    ciphertext, header = esdk.encrypt(source=PLAINTEXT, materials_manager=cmm, encryption_context=CONTEXT)
    assert b"acme" not in ciphertext  # not stored in the message...
    (edk,) = header.encrypted_data_keys
    stored = {k: v for k, v in header.encryption_context.items() if k != "tenant"}
    with pytest.raises(InvalidCiphertext):
        client.decrypt_data_key(edk.encrypted_data_key, stored)
    client.decrypt_data_key(edk.encrypted_data_key, {**stored, "tenant": "acme"})  # ...but bound by the service
    assert esdk.decrypt(source=ciphertext, materials_manager=cmm, encryption_context=CONTEXT)[0] == PLAINTEXT
    with pytest.raises(AWSEncryptionSDKClientError):
        esdk.decrypt(source=ciphertext, materials_manager=cmm, encryption_context={**CONTEXT, "tenant": "globex"})


def test_the_keyring_refuses_decryption_materials_that_already_hold_a_data_key(mpl, client: KmsClient) -> None:
    suite = mpl.get_algorithm_suite_info(b"\x05\x78")  # the default committing, signing suite
    materials = DecryptionMaterials(
        algorithm_suite=suite, encryption_context={}, required_encryption_context_keys=[], plaintext_data_key=bytes(32)
    )
    with pytest.raises(AwsCryptographicMaterialProvidersException, match="already hold a data key"):
        KmsGrpcKeyring(client, "orders").on_decrypt(OnDecryptInput(materials=materials, encrypted_data_keys=[]))


# -- configuration and errors ------------------------------------------------------------------


def test_key_ids_are_checked_when_keys_are_made(client: KmsClient) -> None:
    for bad in ("", "orders/1", "ördérs", "k" * 65):
        with pytest.raises(InvalidKeyIdError):
            KmsGrpcMasterKey(key_id=bad, client=client)
        with pytest.raises(InvalidKeyIdError):
            KmsGrpcKeyring(client, bad)
        with pytest.raises(InvalidKeyIdError):
            provider(client, "orders", bad)
    with pytest.raises(TypeError):
        KmsGrpcMasterKeyProvider(client=client, key_ids="orders")
    with pytest.raises(TypeError):
        KmsGrpcMasterKeyProvider(client="127.0.0.1:50051", key_ids=["orders"])


def test_service_errors_become_esdk_errors_naming_the_reason(esdk, client: KmsClient, orders) -> None:
    with pytest.raises(GenerateKeyError, match="KeyNotFound") as refused:
        esdk.encrypt(source=PLAINTEXT, key_provider=provider(client, "missing"), encryption_context=CONTEXT)
    assert type(refused.value.__cause__).__name__ == "KeyNotFound"
    with pytest.raises(GenerateKeyError, match="InvalidEncryptionContext"):
        esdk.encrypt(source=PLAINTEXT, key_provider=provider(client, "orders"), encryption_context={"k": "v" * 1025})


def test_reprs_and_errors_carry_no_data_key(esdk, client: KmsClient, orders) -> None:
    keys = provider(client, "orders")
    _, header = esdk.encrypt(source=PLAINTEXT, key_provider=keys, encryption_context=CONTEXT)
    (edk,) = header.encrypted_data_keys
    data_key = client.decrypt_data_key(edk.encrypted_data_key, dict(header.encryption_context)).plaintext
    master_key = keys.master_key_for_decrypt(b"orders")
    decrypted = master_key.decrypt_data_key(edk, header.algorithm, dict(header.encryption_context))
    assert decrypted.data_key == data_key
    with pytest.raises(DecryptKeyError) as refused:
        master_key.decrypt_data_key(edk, header.algorithm, CONTEXT)
    keyring = KmsGrpcKeyring(client, "orders")
    shown = " ".join([repr(keys), repr(master_key), repr(decrypted), str(refused.value), repr(keyring)])
    assert data_key.hex() not in shown and repr(data_key) not in shown


# -- the documentation's example ---------------------------------------------------------------


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown.read_text(), flags=re.S | re.M)


def test_the_documented_example_runs_as_written(server, esdk, client: KmsClient, orders, monkeypatch) -> None:
    (block,) = python_blocks(DOC)
    monkeypatch.setenv("KMS_TARGET", server.target)
    namespace: dict = {"__name__": "docs_example"}
    try:
        exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        if "kms" in namespace:
            namespace["kms"].close()
    # The example's message opens here, so it was made with this server's key.
    assert (
        esdk.decrypt(
            source=namespace["ciphertext"], keyring=KmsGrpcKeyring(client, "orders"), encryption_context=CONTEXT
        )[0]
        == b"invoice 2024-002"
    )
