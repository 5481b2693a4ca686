"""The frozen vectors of the wrapped key format 2 (docs/vectors/wrapped-key-v2.json): a data
subject's data key under the subject's key, the subject's key under a master key version, and the
subject's digest. Their bytes follow from the specification alone (an independent reader: struct,
hmac and pyca's AES-GCM, nothing of kms.crypto.subject_key), and the service opens them through the
HSM; every single-bit change of a vector, another subject or another context fails."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, ObjectClass

from kms.crypto.context import encode_context
from kms.domain.keys import Key, KeyVersion, Storage, VersionState
from kms.domain.privacy import SubjectKey
from kms.errors import InvalidCiphertext, SubjectErased
from kms.service.calls import Call

VECTORS = json.loads((Path(__file__).parents[2] / "docs" / "vectors" / "wrapped-key-v2.json").read_text())["vectors"]


def _text(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return struct.pack(">I", len(encoded)) + encoded


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"vector{v['id']}")
def test_bytes_follow_from_the_specification(vector):
    key_id, subject = vector["key_id"], vector["encryption_context"][vector["subject_field"]]
    digest = hmac.new(
        bytes.fromhex(vector["digest_key"]), b"kms-subject-v1" + _text(key_id) + _text(subject), hashlib.sha256
    ).hexdigest()
    assert digest == vector["subject_digest"]

    subject_ad = (
        b"kms-subject-key-v1"
        + bytes([len(key_id)])
        + key_id.encode("ascii")
        + bytes.fromhex(digest)
        + struct.pack(">I", vector["master_key_version"])
    )
    assert subject_ad.hex() == vector["subject_key_associated_data"]
    wrapped_subject_key = AESGCM(bytes.fromhex(vector["master_key"])).encrypt(
        bytes.fromhex(vector["subject_key_iv"]), bytes.fromhex(vector["subject_key"]), subject_ad
    )
    assert wrapped_subject_key.hex() == vector["wrapped_subject_key"]

    header = bytes([2, len(key_id)]) + key_id.encode("ascii")
    assert header.hex() == vector["header"]
    assert encode_context(vector["encryption_context"]).hex() == vector["encoded_context"]
    associated_data = header + bytes.fromhex(vector["encoded_context"])
    assert associated_data.hex() == vector["associated_data"]
    sealed = AESGCM(bytes.fromhex(vector["subject_key"])).encrypt(
        bytes.fromhex(vector["iv"]), bytes.fromhex(vector["data_key"]), associated_data
    )
    assert vector["wrapped_key"] == vector["header"] + vector["iv"] + sealed.hex()
    assert len(bytes.fromhex(vector["wrapped_key"])) == 62 + len(key_id)


@pytest.fixture
def service_with_vector_subjects(sqlite_services):
    """Each vector's master key imported into the HSM as its key's version (HSM_OBJECT), and its
    subject's key stored as the service stores it: wrapped by that master key, bound to the
    subject's digest (the service's, from its HSM-derived key). The service never uses an imported
    key (kms.hsm.trust), so the data key service here runs on a master key store that takes them."""
    from kms.hsm.master_keys import Pkcs11MasterKeyStore
    from kms.service.data_keys import DataKeyService
    from kms.service.subject_data_keys import SubjectDataKeys
    from kms.service.subjects import SubjectKeys

    services = sqlite_services
    now = datetime.now(UTC)
    imported = []
    for vector in VECTORS:
        key_id, number = vector["key_id"], vector["master_key_version"]
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
        version = KeyVersion(key_id, number, VersionState.ENABLED, object_id.hex(), "vector", now)
        with services.repository.transaction(key_id) as transaction:
            stored = transaction.key
            versions = (*(stored.versions if stored else ()), version)
            key = Key(key_id, "", number, versions, now, now, storage=Storage.HSM_OBJECT, subject_field="user_id")
            transaction.save(replace(key, revision=stored.revision if stored else 0))
        subject = vector["encryption_context"]["user_id"]
        digest = services.subjects.digest(key_id, subject)
        iv = bytes.fromhex(vector["subject_key_iv"])
        ad = b"kms-subject-key-v1" + bytes([len(key_id)]) + key_id.encode() + bytes.fromhex(digest)
        sealed = AESGCM(bytes.fromhex(vector["master_key"])).encrypt(
            iv, bytes.fromhex(vector["subject_key"]), ad + struct.pack(">I", number)
        )
        services.subject_repository.add(SubjectKey(key_id, digest, number, iv, sealed, now))
    services.integrity.refresh()
    known_keys = Pkcs11MasterKeyStore(
        services.pool,
        services.clock,
        services.settings.pkcs11_label_prefix,
        hierarchy=services.master_keys.hierarchy,
        vet=lambda found: (),
    )
    subjects = SubjectKeys(
        services.subject_repository,
        known_keys,
        services.subjects._digests,
        services.integrity,
        services.clock,
        services.usage,
    )
    yield DataKeyService(
        services.cache,
        known_keys,
        services.usage,
        services.authorizer,
        subjects=SubjectDataKeys(services.cache, subjects, services.authorizer),
    )
    subjects.clear()
    for vector, object_id in zip(VECTORS, imported, strict=True):
        known_keys.destroy(
            KeyVersion(vector["key_id"], vector["master_key_version"], VersionState.ENABLED, object_id.hex(), "v", now)
        )


def test_service_opens_every_vector(service_with_vector_subjects):
    for vector in VECTORS:
        opened = service_with_vector_subjects.decrypt(
            Call(), bytes.fromhex(vector["wrapped_key"]), vector["encryption_context"]
        )
        assert (opened.key_id, opened.key_version) == (vector["key_id"], vector["master_key_version"])
        assert opened.plaintext.hex() == vector["data_key"]


def test_service_rejects_every_single_bit_change_of_a_vector(service_with_vector_subjects):
    vector = VECTORS[1]
    blob = bytes.fromhex(vector["wrapped_key"])
    for index in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[index] ^= 1 << bit
            with pytest.raises(InvalidCiphertext):
                service_with_vector_subjects.decrypt(Call(), bytes(tampered), vector["encryption_context"])
    with pytest.raises(InvalidCiphertext):  # another context
        service_with_vector_subjects.decrypt(Call(), blob, {**vector["encryption_context"], "tenant": "other"})
    with pytest.raises(InvalidCiphertext):  # another subject (who has no key)
        service_with_vector_subjects.decrypt(Call(), blob, {**vector["encryption_context"], "user_id": "mallory"})
    with pytest.raises(InvalidCiphertext):  # another subject's key, of the same key
        service_with_vector_subjects.decrypt(Call(), blob, VECTORS[0]["encryption_context"])


def test_an_erased_vector_subject_is_refused_not_reported_invalid(service_with_vector_subjects, sqlite_services):
    vector = VECTORS[0]
    sqlite_services.erasures.erase_subject(Call(), vector["key_id"], vector["encryption_context"]["user_id"])
    blob = bytearray(bytes.fromhex(vector["wrapped_key"]))
    with pytest.raises(SubjectErased):
        service_with_vector_subjects.decrypt(Call(), bytes(blob), vector["encryption_context"])
    blob[-1] ^= 1  # altered too: the erasure is what is reported, it is decided before opening
    with pytest.raises(SubjectErased):
        service_with_vector_subjects.decrypt(Call(), bytes(blob), vector["encryption_context"])
