"""Master keys as the HSM holds them, seen through the adapter and through pkcs11-tool."""

from __future__ import annotations

import pytest

from kms.errors import InvalidCiphertext, KeyMaterialMissing
from kms.service.calls import Call
from tests.support.hsm import pkcs11_tool_secret_keys


@pytest.fixture
def settings(settings):
    """Keys here live as HSM objects, one token object per version: the subject of these tests."""
    return settings.model_copy(update={"key_storage": "hsm_object"})


@pytest.fixture
def sqlite_settings(sqlite_settings):
    return sqlite_settings.model_copy(update={"key_storage": "hsm_object"})


def test_every_version_is_one_sensitive_never_extractable_secret_key(sqlite_services, hsm_token, label_prefix):
    keys = sqlite_services.keys
    keys.create_key(Call(), "orders")
    keys.rotate_key(Call(), "orders")
    rotated = keys.rotate_key(Call(), "orders")

    listed = [
        o
        for o in pkcs11_tool_secret_keys(hsm_token)
        if o.get("label", "").startswith(f"{label_prefix}:") and o["label"] != f"{label_prefix}:audit-seal"
    ]
    assert sorted(o["label"] for o in listed) == [f"{label_prefix}:orders:v{n}" for n in (1, 2, 3)]
    by_id = {o["id"]: o for o in listed}
    for version in rotated.versions:
        seen = by_id[version.master_key_id]
        assert seen["type"] == "AES length 32"
        assert seen["usage"] == "encrypt, decrypt"
        assert seen["access"] == "sensitive, always sensitive, never extractable, local"


def test_adapter_reports_objects_with_their_versions_and_soundness(sqlite_services):
    created = sqlite_services.keys.create_key(Call(), "listing")
    [found] = sqlite_services.master_keys.find("listing", 1)
    assert found.master_key_id == created.versions[0].master_key_id
    assert (found.key_id, found.version, found.sound) == ("listing", 1, True)
    assert found.create_time <= created.create_time
    assert [o.master_key_id for o in sqlite_services.master_keys.list_objects()] == [found.master_key_id]


def test_gcm_through_the_hsm_binds_the_associated_data(sqlite_services):
    version = sqlite_services.keys.create_key(Call(), "gcm").versions[0]
    store = sqlite_services.master_keys
    iv, sealed = store.encrypt(version, b"k" * 32, b"aad")
    assert len(iv) == 12 and len(sealed) == 48
    assert store.decrypt(version, iv, sealed, b"aad") == b"k" * 32
    with pytest.raises(InvalidCiphertext):
        store.decrypt(version, iv, sealed, b"aaD")
    ivs = {store.encrypt(version, b"k" * 32, b"")[0] for _ in range(200)}
    assert len(ivs) == 200  # a fresh IV every time


def test_destroyed_object_is_reported_missing_not_as_bad_input(sqlite_services):
    version = sqlite_services.keys.create_key(Call(), "gone").versions[0]
    store = sqlite_services.master_keys
    iv, sealed = store.encrypt(version, b"k" * 32, b"")
    store.destroy(version)
    store.destroy(version)  # idempotent
    with pytest.raises(KeyMaterialMissing, match="key 'gone' version 1"):
        store.decrypt(version, iv, sealed, b"")
    assert store.find("gone", 1) == []
