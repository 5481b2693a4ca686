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
    """Each vector's master key imported into the HSM and recorded as its key's version."""
    now = datetime.now(UTC)
    imported = []
    for vector in VECTORS:
        object_id = secrets.token_bytes(16)
        imported.append(object_id)
        sqlite_services.pool.run(
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
        version = KeyVersion(vector["key_id"], vector["key_version"], VersionState.ENABLED, object_id.hex(), "vector", now)
        with sqlite_services.repository.transaction(vector["key_id"]) as transaction:
            transaction.save(Key(vector["key_id"], "", vector["key_version"], (version,), now, now))
    yield sqlite_services
    for object_id in imported:
        sqlite_services.master_keys.destroy(object_id.hex())


def test_service_opens_every_vector(service_with_vector_keys):
    for vector in VECTORS:
        opened = service_with_vector_keys.data_keys.decrypt(
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
            service_with_vector_keys.data_keys.decrypt(Call(), bytes(tampered), vector["encryption_context"])
    with pytest.raises(InvalidCiphertext):
        service_with_vector_keys.data_keys.decrypt(Call(), blob, {**vector["encryption_context"], "tenant": "other"})
