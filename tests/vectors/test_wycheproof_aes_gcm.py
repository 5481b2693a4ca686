"""Wycheproof AES-GCM (256-bit keys, 96-bit IVs, 128-bit tags) through the HSM adapter's GCM
path: the same kms.hsm.gcm functions that wrap data keys, with each vector's key imported into
SoftHSM as a session object."""

from __future__ import annotations

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from kms.errors import InvalidCiphertext
from kms.hsm import gcm
from kms.hsm.quirks import quirks_for
from tests.vectors.conftest import wycheproof

VECTORS = [
    pytest.param(test, id=f"tc{test['tcId']}-{test['result']}")
    for group in wycheproof("aes_gcm_test.json")["testGroups"]
    if group["keySize"] == 256 and group["ivSize"] == 96 and group["tagSize"] == 128
    for test in group["tests"]
]


@pytest.fixture(scope="module")
def pool(hsm_token):
    from kms.hsm.pool import SessionPool

    pool = SessionPool(hsm_token.module_path, hsm_token.token_label, hsm_token.read_pin(), 2)
    yield pool
    pool.close()


def _import_key(session, raw: bytes):
    return session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: raw,
            Attribute.TOKEN: False,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
        }
    )


def test_the_selection_covers_valid_and_invalid_vectors():
    results = {p.values[0]["result"] for p in VECTORS}
    assert len(VECTORS) >= 60 and results == {"valid", "invalid"}


@pytest.mark.parametrize("vector", VECTORS)
def test_vector(pool, vector):
    quirks = quirks_for(pool.module.lib.manufacturer_id)
    pool.run(lambda pooled: _check(pooled.session, quirks, vector))


def _check(session, quirks, vector) -> None:
    key = _import_key(session, bytes.fromhex(vector["key"]))
    iv, aad = bytes.fromhex(vector["iv"]), bytes.fromhex(vector["aad"])
    msg = bytes.fromhex(vector["msg"])
    sealed = bytes.fromhex(vector["ct"]) + bytes.fromhex(vector["tag"])
    try:
        if vector["result"] == "valid":
            assert gcm.decrypt(key, iv, sealed, aad, quirks.gcm_auth_failures) == msg
            assert gcm.encrypt(key, iv, msg, aad) == sealed
        else:
            with pytest.raises(InvalidCiphertext):
                gcm.decrypt(key, iv, sealed, aad, quirks.gcm_auth_failures)
    finally:
        key.destroy()
