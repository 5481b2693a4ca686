"""The frozen wrapped-key vectors (docs/vectors/wrapped-key-v1.json): their bytes follow from the
specification with an independent AES-GCM, and the service opens them through the HSM."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, ObjectClass

from kms.crypto.context import encode_context
from kms.crypto.wrapped_key import WrappedKeyHeader
from kms.domain.keys import Key, KeyVersion, VersionState
from kms.errors import InvalidCiphertext
from kms.service.calls import Call

VECTORS = json.loads((Path(__file__).parents[2] / "docs" / "vectors" / "wrapped-key-v1.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"vector{v['id']}")
def test_bytes_follow_from_the_specification(vector):
    header = WrappedKeyHeader(vector["key_id"], vector["key_version"])
    assert header.encode().hex() == vector["header"]
    assert encode_context(vector["encryption_context"]).hex() == vector["encoded_context"]
    associated_data = bytes.fromhex(vector["header"] + vector["encoded_context"])
    assert associated_data.hex() == vector["associated_data"]
    sealed = AESGCM(bytes.fromhex(vector["master_key"])).encrypt(
        bytes.fromhex(vector["iv"]), bytes.fromhex(vector["data_key"]), associated_data
    )
    assert vector["wrapped_key"] == vector["header"] + vector["iv"] + sealed.hex()


@pytest.fixture
def service_with_vector_keys(sqlite_services):
    """Each vector's master key imported into the HSM and recorded as its key's version
    (HSM_OBJECT storage), opened by the service's own decrypt path. The service never uses an
    imported key (kms.hsm.trust): these keys are known by design, so the data key service here
    is built on a master key store that takes them, the one seam for that."""
    from kms.hsm.master_keys import Pkcs11MasterKeyStore
    from kms.service.data_keys import DataKeyService

    services = sqlite_services
    now = datetime.now(UTC)
    imported = []
    versions: dict[str, dict[int, KeyVersion]] = {}
    for vector in VECTORS:
        object_id = secrets.token_bytes(16)
        imported.append(object_id)
        services.pool.run(
            lambda pooled, v=vector, oid=object_id: pooled.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: bytes.fromhex(v["master_key"]),
                    Attribute.ID: oid,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                }
            )
        )
        versions.setdefault(vector["key_id"], {})[vector["key_version"]] = KeyVersion(
            vector["key_id"], vector["key_version"], VersionState.ENABLED, object_id.hex(), "vector", now
        )
    for key_id, by_number in versions.items():
        # The vectors' version numbers, as they are (not consecutive: one is 2^32 - 1).
        numbered = tuple(by_number[n] for n in sorted(by_number))
        with services.repository.transaction(key_id) as transaction:
            transaction.save(Key(key_id, "", max(by_number), numbered, now, now))
    services.integrity.refresh()
    known_keys = Pkcs11MasterKeyStore(
        services.pool,
        services.clock,
        services.settings.pkcs11_label_prefix,
        hierarchy=services.master_keys.hierarchy,
        vet=lambda found: (),
    )
    yield DataKeyService(services.cache, known_keys, services.usage, services.authorizer)
    for vector, object_id in zip(VECTORS, imported, strict=True):
        known_keys.destroy(
            KeyVersion(vector["key_id"], vector["key_version"], VersionState.ENABLED, object_id.hex(), "vector", now)
        )


def test_service_opens_every_vector(service_with_vector_keys):
    for vector in VECTORS:
        opened = service_with_vector_keys.decrypt(
            Call(), bytes.fromhex(vector["wrapped_key"]), vector["encryption_context"]
        )
        assert (opened.key_id, opened.key_version) == (vector["key_id"], vector["key_version"])
        assert opened.plaintext.hex() == vector["data_key"]


def test_service_rejects_every_single_byte_change_of_a_vector(service_with_vector_keys):
    vector = VECTORS[1]
    blob = bytes.fromhex(vector["wrapped_key"])
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(InvalidCiphertext):
            service_with_vector_keys.decrypt(Call(), bytes(tampered), vector["encryption_context"])
    with pytest.raises(InvalidCiphertext):
        service_with_vector_keys.decrypt(Call(), blob, {**vector["encryption_context"], "tenant": "other"})
