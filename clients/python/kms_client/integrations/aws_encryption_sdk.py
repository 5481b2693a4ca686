"""The AWS Encryption SDK for Python on this service: a master key provider (``KmsGrpcMasterKey``,
``KmsGrpcMasterKeyProvider``) and a keyring (``KmsGrpcKeyring``) for the Material Providers
Library. docs/integrations/aws-encryption-sdk.md has the full story and runnable examples.

    provider = KmsGrpcMasterKeyProvider(client=KmsClient("127.0.0.1:50051"), key_ids=["orders"])
    ciphertext, _ = esdk.encrypt(source=data, key_provider=provider, encryption_context={"tenant": "acme"})

Encrypted data keys (EDKs) written into ESDK messages:

- ``key_provider_id`` is ``"kms-grpc"`` (PROVIDER_ID), ``key_provider_info`` the key id in ASCII;
- ``ciphertext``, when this key generated the message's data key, is the wrapped key the service
  returned with it from GenerateDataKey (docs/wrapped-key-format.md: ``66 + len(key id)`` bytes,
  first byte the format version ``0x01``);
- ``ciphertext``, when another key generated the data key and this one only encrypts it (a
  multi-key message), is an envelope ciphertext v1 of the data key (docs/envelope-format.md,
  first four bytes ``KMSE``), made by ``KmsClient.encrypt``: the service never encrypts caller
  data, so an existing key is sealed locally under a fresh data key of the service.

Both are bound to the ESDK message's encryption context, passed verbatim as the service's
encryption context (with a signing suite that includes ``aws-crypto-public-key``; with the
Material Providers' required-encryption-context CMM, the required pairs too). Decrypting an EDK
sends the context of the message being read: a message whose context was altered does not get its
data key back. Contexts must fit the service's limits (at most 64 pairs, keys of 1 to 128 bytes,
values up to 1024, 8192 bytes encoded), or encryption fails.

Data key length. The service issues 32-byte data keys. A suite whose data key is 32 bytes (every
AES-256 suite, including the default committing ones) uses them as they are. Generating for a
suite with a 16- or 24-byte data key (the legacy AES-128 and AES-192 suites) is refused, never
truncated: ``GenerateKeyError`` from a master key, an MPL error from the keyring, naming both
lengths. Encrypting and decrypting an existing data key of any length (this key as a non-generator
beside another one) works, and a decrypted key of another length than the suite's is refused.

Errors: master keys raise ESDK exceptions (``GenerateKeyError``, ``EncryptKeyError``,
``DecryptKeyError``, ``InvalidKeyIdError``) and the keyring raises
``AwsCryptographicMaterialProvidersException``, which the ESDK wraps in
``AWSEncryptionSDKClientError``; messages name the key id and the SDK error's reason, and the
``kms_client.KmsError`` is chained where the library keeps causes. No message, repr or log line of
this module carries a data key or a plaintext.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

try:
    import attr
    from aws_cryptographic_material_providers.mpl.errors import AwsCryptographicMaterialProvidersException
    from aws_cryptographic_material_providers.mpl.models import (
        AlgorithmSuiteInfo,
        DecryptionMaterials,
        DerivationAlgorithmHKDF,
        DerivationAlgorithmIDENTITY,
        EncryptAES_GCM,
        EncryptedDataKey,
        EncryptionMaterials,
        OnDecryptInput,
        OnDecryptOutput,
        OnEncryptInput,
        OnEncryptOutput,
    )
    from aws_cryptographic_material_providers.mpl.references import IKeyring
    from aws_encryption_sdk.exceptions import DecryptKeyError, EncryptKeyError, GenerateKeyError, InvalidKeyIdError
    from aws_encryption_sdk.key_providers.base import (
        MasterKey,
        MasterKeyConfig,
        MasterKeyProvider,
        MasterKeyProviderConfig,
    )
    from aws_encryption_sdk.structures import DataKey as EsdkDataKey
    from aws_encryption_sdk.structures import EncryptedDataKey as EsdkEncryptedDataKey
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "kms_client.integrations.aws_encryption_sdk needs the AWS Encryption SDK and the Material Providers "
        "Library: pip install 'kms-client[aws]'"
    ) from missing

from kms_client.client import KmsClient
from kms_client.envelope import DATA_KEY_BYTES, MAGIC, parse_header_bytes
from kms_client.errors import InvalidCiphertext, KmsError

PROVIDER_ID = "kms-grpc"

_KEY_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")


# -- the recipes both adapters share: data keys in, EDK ciphertexts out, and back -------------


def _key_id_bytes(key_id: str | bytes) -> bytes:
    raw = key_id.encode("ascii", "replace") if isinstance(key_id, str) else bytes(key_id)
    if not _KEY_ID.fullmatch(raw):
        raise InvalidKeyIdError("a kms-grpc key id is 1 to 64 characters of [A-Za-z0-9_-]")
    return raw


def _unsupported_length(key_id: str, suite: str, length: int) -> str:
    return (
        f"kms-grpc key {key_id} cannot generate the data key of {suite}: the suite needs {length} bytes and "
        f"the service issues {DATA_KEY_BYTES}-byte data keys (use an AES-256 suite, such as the default)"
    )


def _generate(client: KmsClient, key_id: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
    """(plaintext data key, wrapped key) from GenerateDataKey(key_id, context)."""
    data_key = client.generate_data_key(key_id, dict(context))
    if data_key.key_id != key_id or len(data_key.plaintext) != DATA_KEY_BYTES:
        raise KmsError("the service returned a data key that does not fit the request")
    return data_key.plaintext, data_key.wrapped_key


def _seal(client: KmsClient, key_id: str, data_key: bytes, context: Mapping[str, str]) -> bytes:
    """An envelope ciphertext of an existing data key, under a fresh data key of ``key_id``."""
    return client.encrypt(bytes(data_key), key_id=key_id, context=dict(context))


def _open(client: KmsClient, key_id: str, ciphertext: bytes, context: Mapping[str, str], length: int) -> bytes:
    """The data key inside an EDK ciphertext of ``key_id``: an envelope (it starts with ``KMSE``)
    or a wrapped key (it starts with its format version, 0x01). Raises InvalidCiphertext when it
    belongs to another key id or holds a key of another length than ``length``, and whatever the
    SDK raises otherwise."""
    if ciphertext[: len(MAGIC)] == MAGIC:
        if parse_header_bytes(ciphertext).key_id != key_id:
            raise InvalidCiphertext("the encrypted data key is under another key")
        plaintext = client.decrypt(ciphertext, context=dict(context))
    else:
        data_key = client.decrypt_data_key(ciphertext, dict(context))
        if data_key.key_id != key_id:
            raise InvalidCiphertext("the encrypted data key is under another key")
        plaintext = data_key.plaintext
    if len(plaintext) != length:
        raise InvalidCiphertext(f"the encrypted data key does not hold a {length}-byte data key")
    return plaintext


# -- master keys (aws_encryption_sdk.key_providers) ---------------------------------------------


@attr.s(hash=True)
class KmsGrpcMasterKeyConfig(MasterKeyConfig):
    """``key_id`` (str or ASCII bytes, converted to bytes) and ``client``, a KmsClient."""

    provider_id = PROVIDER_ID
    client: KmsClient = attr.ib(hash=True, validator=attr.validators.instance_of(KmsClient))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _key_id_bytes(self.key_id)


class KmsGrpcMasterKey(MasterKey):
    """One key of the service as an ESDK master key: ``KmsGrpcMasterKey(key_id="orders",
    client=kms)``. Usable as a ``key_provider`` on its own.

    - ``generate_data_key``: GenerateDataKey(key id, message context); the EDK holds the wrapped
      key. Raises GenerateKeyError for a suite whose data key is not 32 bytes, or when the
      service refuses (the reason in the message, the KmsError as ``__cause__``).
    - ``encrypt_data_key``: an envelope ciphertext of the given data key under a fresh data key of
      this key and the message context. Raises EncryptKeyError.
    - ``decrypt_data_key``: the data key of an EDK of this key (either form), under the context of
      the message being read. Raises IncorrectMasterKeyError for another provider or key id,
      DecryptKeyError when the service or the envelope refuses (altered EDK, other context, no
      permission, unusable key version...) or the key has another length than the suite's.

    Raises InvalidKeyIdError for a key id the service would refuse.
    """

    provider_id = PROVIDER_ID
    _config_class = KmsGrpcMasterKeyConfig

    @property
    def _key_id_text(self) -> str:
        key_id: bytes = self.key_id  # converted to bytes by the config
        return key_id.decode("ascii")

    def _failure(self, what: str, error: KmsError) -> str:
        return f"kms-grpc key {self._key_id_text}: {what} failed: {error.reason}"

    def _generate_data_key(self, algorithm: Any, encryption_context: Mapping[str, str]) -> EsdkDataKey:
        length = algorithm.kdf_input_len
        if length != DATA_KEY_BYTES:
            raise GenerateKeyError(_unsupported_length(self._key_id_text, algorithm.name, length))
        try:
            plaintext, wrapped_key = _generate(self.config.client, self._key_id_text, encryption_context)
        except KmsError as error:
            raise GenerateKeyError(self._failure("GenerateDataKey", error)) from error
        return EsdkDataKey(key_provider=self.key_provider, data_key=plaintext, encrypted_data_key=wrapped_key)

    def _encrypt_data_key(
        self, data_key: Any, algorithm: Any, encryption_context: Mapping[str, str]
    ) -> EsdkEncryptedDataKey:
        try:
            sealed = _seal(self.config.client, self._key_id_text, data_key.data_key, encryption_context)
        except KmsError as error:
            raise EncryptKeyError(self._failure("encrypting the data key", error)) from error
        return EsdkEncryptedDataKey(key_provider=self.key_provider, encrypted_data_key=sealed)

    def _decrypt_data_key(
        self, encrypted_data_key: Any, algorithm: Any, encryption_context: Mapping[str, str]
    ) -> EsdkDataKey:
        ciphertext = bytes(encrypted_data_key.encrypted_data_key)
        try:
            plaintext = _open(
                self.config.client, self._key_id_text, ciphertext, encryption_context, algorithm.kdf_input_len
            )
        except KmsError as error:
            raise DecryptKeyError(self._failure("decrypting the data key", error)) from error
        return EsdkDataKey(key_provider=self.key_provider, data_key=plaintext, encrypted_data_key=ciphertext)


def _key_id_list(value: Iterable[str | bytes]) -> tuple[bytes, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError("key_ids is a list of key ids, not one key id")
    return tuple(_key_id_bytes(key_id) for key_id in value)


@attr.s(hash=True)
class KmsGrpcMasterKeyProviderConfig(MasterKeyProviderConfig):
    """``client``, a KmsClient, and ``key_ids``, the keys to encrypt under (the first generates)."""

    client: KmsClient = attr.ib(hash=True, validator=attr.validators.instance_of(KmsClient))
    key_ids: tuple[bytes, ...] = attr.ib(hash=True, default=(), converter=_key_id_list)


class KmsGrpcMasterKeyProvider(MasterKeyProvider):
    """Master keys of the service: ``KmsGrpcMasterKeyProvider(client=kms, key_ids=["orders"])``.

    On encrypt the first key id generates the data key and every other one encrypts it too (one
    EDK each). On decrypt only EDKs of the key ids given (``key_ids`` or ``add_master_key``) are
    tried, in the message's order, until one opens: the provider never follows a key id that a
    message names (no discovery mode), like the ESDK's strict AWS KMS provider. Every master key
    behaves as ``KmsGrpcMasterKey`` says; a provider that can open no EDK makes the ESDK raise
    DecryptKeyError.
    """

    provider_id = PROVIDER_ID
    _config_class = KmsGrpcMasterKeyProviderConfig
    vend_masterkey_on_decrypt = False

    def __init__(self, **kwargs: Any) -> None:  # the config is built by MasterKeyProvider.__new__
        self.add_master_keys_from_list(self.config.key_ids)

    def _new_master_key(self, key_id: bytes) -> KmsGrpcMasterKey:
        return KmsGrpcMasterKey(key_id=key_id, client=self.config.client)


# -- keyring (aws_cryptographic_material_providers) ---------------------------------------------


def _suite_key_length(suite: AlgorithmSuiteInfo) -> int:
    """The data key length of an MPL algorithm suite: the KDF's input for HKDF suites, the
    cipher's key for the legacy suites without a KDF."""
    if isinstance(suite.kdf, DerivationAlgorithmHKDF):
        return int(suite.kdf.value.input_key_length)
    if isinstance(suite.kdf, DerivationAlgorithmIDENTITY) and isinstance(suite.encrypt, EncryptAES_GCM):
        return int(suite.encrypt.value.key_length)
    raise AwsCryptographicMaterialProvidersException(message="kms-grpc keyring: unsupported algorithm suite")


def _suite_name(suite: AlgorithmSuiteInfo) -> str:
    return f"algorithm suite 0x{bytes(suite.binary_id).hex()}"


class KmsGrpcKeyring(IKeyring):
    """One key of the service as a Material Providers keyring: ``KmsGrpcKeyring(kms, "orders")``,
    for ``esdk.encrypt(..., keyring=...)`` or as a generator or child of a multi-keyring.

    - ``on_encrypt``: without a data key in the materials, generates one with GenerateDataKey (key
      id, materials' context) and adds the wrapped key as an EDK; with one, adds an envelope
      ciphertext of it as an EDK. Raises for a suite whose data key is not 32 bytes (when
      generating) and when the service refuses.
    - ``on_decrypt``: tries the EDKs with provider id ``kms-grpc`` and this key id, in order,
      with the materials' context, and returns the materials with the first data key that
      opens. Raises when the materials already hold a data key, or when none opens.

    Failures are ``AwsCryptographicMaterialProvidersException`` naming the key id and the SDK
    errors' reasons; the ESDK raises them as ``AWSEncryptionSDKClientError``.
    """

    def __init__(self, client: KmsClient, key_id: str) -> None:
        if not isinstance(client, KmsClient):
            raise TypeError("client must be a kms_client.KmsClient")
        self._key_info = _key_id_bytes(key_id)
        self._client = client
        self._key_id = self._key_info.decode("ascii")

    def __repr__(self) -> str:
        return f"KmsGrpcKeyring(key_id={self._key_id!r})"

    def _failure(self, what: str) -> AwsCryptographicMaterialProvidersException:
        return AwsCryptographicMaterialProvidersException(message=f"kms-grpc keyring, key {self._key_id}: {what}")

    def on_encrypt(self, param: OnEncryptInput) -> OnEncryptOutput:
        materials = param.materials
        try:
            if materials.plaintext_data_key is None:
                length = _suite_key_length(materials.algorithm_suite)
                if length != DATA_KEY_BYTES:
                    raise AwsCryptographicMaterialProvidersException(
                        message=_unsupported_length(self._key_id, _suite_name(materials.algorithm_suite), length)
                    )
                data_key, ciphertext = _generate(self._client, self._key_id, materials.encryption_context)
            else:
                data_key = bytes(materials.plaintext_data_key)
                ciphertext = _seal(self._client, self._key_id, data_key, materials.encryption_context)
        except KmsError as error:
            raise self._failure(f"encrypting the data key failed: {error.reason}") from error
        edk = EncryptedDataKey(key_provider_id=PROVIDER_ID, key_provider_info=self._key_info, ciphertext=ciphertext)
        return OnEncryptOutput(
            materials=EncryptionMaterials(
                algorithm_suite=materials.algorithm_suite,
                encryption_context=materials.encryption_context,
                encrypted_data_keys=[*materials.encrypted_data_keys, edk],
                required_encryption_context_keys=materials.required_encryption_context_keys,
                plaintext_data_key=data_key,
                signing_key=materials.signing_key,
                symmetric_signing_keys=materials.symmetric_signing_keys,
            )
        )

    def on_decrypt(self, param: OnDecryptInput) -> OnDecryptOutput:
        materials = param.materials
        if materials.plaintext_data_key is not None:
            raise self._failure("the decryption materials already hold a data key")
        length = _suite_key_length(materials.algorithm_suite)
        reasons: list[str] = []
        for edk in param.encrypted_data_keys:
            if edk.key_provider_id != PROVIDER_ID or bytes(edk.key_provider_info) != self._key_info:
                continue
            try:
                data_key = _open(
                    self._client, self._key_id, bytes(edk.ciphertext), materials.encryption_context, length
                )
            except KmsError as error:
                reasons.append(error.reason)
                continue
            return OnDecryptOutput(
                materials=DecryptionMaterials(
                    algorithm_suite=materials.algorithm_suite,
                    encryption_context=materials.encryption_context,
                    required_encryption_context_keys=materials.required_encryption_context_keys,
                    plaintext_data_key=data_key,
                    verification_key=materials.verification_key,
                    symmetric_signing_key=materials.symmetric_signing_key,
                )
            )
        if not reasons:
            raise self._failure("the message has no encrypted data key of this key")
        raise self._failure(f"no encrypted data key of this key could be decrypted ({', '.join(reasons)})")
