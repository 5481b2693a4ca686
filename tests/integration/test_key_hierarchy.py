"""The key hierarchy against a real SoftHSM2 token, on SQLite and PostgreSQL: version keys that
live wrapped under an HSM root key, their binding to key and version, root rotation, and the
process-wide cache of usable handles."""

from __future__ import annotations

import random
import threading
from dataclasses import replace

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from kms.domain.keys import Storage, WrappedMaterial
from kms.errors import FailedPrecondition, KeyMaterialCorrupt, RootKeyUntrusted
from kms.hsm.hierarchy import KeyHierarchy
from kms.hsm.master_keys import Pkcs11MasterKeyStore
from kms.service.calls import Call
from tests.support.fixtures import own_journal

CONTEXT = {"tenant": "acme"}


def _secret_keys(services, label_prefix: str) -> list[str]:
    """The labels of this test's secret key objects on the token."""
    return sorted(
        services.pool.run(
            lambda pooled: [
                o[Attribute.LABEL]
                for o in pooled.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
                if (o[Attribute.LABEL] or "").startswith(label_prefix + ":")
            ]
        )
    )


def test_the_hsm_holds_a_root_and_a_seal_key_however_many_keys_and_versions(services, label_prefix):
    for n in range(30):
        services.keys.create_key(Call(), f"tenant-{n}")
        services.keys.rotate_key(Call(), f"tenant-{n}")
    assert _secret_keys(services, label_prefix) == [f"{label_prefix}:audit-seal", f"{label_prefix}:root"]
    key = services.keys.get_key(Call(), "tenant-7")
    assert {v.storage for v in key.versions} == {Storage.WRAPPED}
    assert all(v.wrapped_material and v.material_mac and v.root_key_id for v in key.versions)
    issued = services.data_keys.generate_data_key(Call(), "tenant-7", CONTEXT)
    assert services.data_keys.decrypt(Call(), issued.wrapped_key, CONTEXT).plaintext == issued.plaintext


def test_two_versions_wrapped_keys_swapped_are_refused(sqlite_services):
    """Binding: each wrapped key opens only as the key and version it was made for."""
    services = sqlite_services
    services.keys.create_key(Call(), "orders")
    key = services.keys.rotate_key(Call(), "orders")
    first, second = key.version(1), key.version(2)
    swapped = replace(first, wrapped_material=second.wrapped_material, material_mac=second.material_mac)
    with pytest.raises(KeyMaterialCorrupt, match="not bound to this key and version"):
        services.master_keys.encrypt(replace(swapped, master_key_id="aa" * 16), b"k" * 32, b"aad")
    other_key = services.keys.create_key(Call(), "other").version(1)
    moved = replace(other_key, key_id="orders", master_key_id="bb" * 16)
    with pytest.raises(KeyMaterialCorrupt):
        services.master_keys.encrypt(moved, b"k" * 32, b"aad")


def test_an_altered_wrapped_key_is_refused_even_with_a_valid_binding(sqlite_services):
    services = sqlite_services
    version = services.keys.create_key(Call(), "orders").version(1)
    blob = bytearray(version.wrapped_material)
    blob[5] ^= 0x01
    material = WrappedMaterial(bytes(blob), version.root_key_id)
    rebound = replace(
        version,
        wrapped_material=material.blob,
        master_key_id="cc" * 16,
        material_mac=services.master_keys.hierarchy.bind("orders", 1, material),
    )
    with pytest.raises(KeyMaterialCorrupt, match="does not unwrap"):
        services.master_keys.encrypt(rebound, b"k" * 32, b"aad")


def test_a_wrapped_key_under_a_root_the_hsm_does_not_have_is_refused(sqlite_services):
    services = sqlite_services
    version = services.keys.create_key(Call(), "orders").version(1)
    material = WrappedMaterial(version.wrapped_material, "dd" * 16)
    elsewhere = replace(
        version,
        root_key_id=material.root_key_id,
        master_key_id="dd" * 16,
        material_mac=services.master_keys.hierarchy.bind("orders", 1, material),
    )
    with pytest.raises(KeyMaterialCorrupt, match="root key"):
        services.master_keys.encrypt(elsewhere, b"k" * 32, b"aad")


def test_root_rotation_rewraps_everything_old_data_still_opens_and_old_copies_die_with_the_old_root(services):
    keys, data_keys = services.keys, services.data_keys
    issued = []
    for n in range(5):
        keys.create_key(Call(), f"k{n}")
        issued.append((f"k{n}", data_keys.generate_data_key(Call(), f"k{n}", CONTEXT)))
        keys.rotate_key(Call(), f"k{n}")
        issued.append((f"k{n}", data_keys.generate_data_key(Call(), f"k{n}", CONTEXT)))
    old_root = services.master_keys.hierarchy.active_root()
    before = keys.get_key(Call(), "k0").version(1)  # as a database backup from now would hold it

    report = services.roots.rotate()
    assert report.created and report.root_key_id != old_root and (report.keys, report.versions) == (5, 10)
    assert services.repository.keys_wrapped_outside(report.root_key_id, 10, None) == []
    for _key_id, data_key in issued:
        assert data_keys.decrypt(Call(), data_key.wrapped_key, CONTEXT).plaintext == data_key.plaintext
    assert {v.root_key_id for v in keys.get_key(Call(), "k3").versions} == {report.root_key_id}

    services.roots.retire(old_root)
    assert old_root not in services.master_keys.hierarchy.roots()
    with pytest.raises(KeyMaterialCorrupt, match="root key"):  # the backup's copy is dead
        services.master_keys.encrypt(replace(before, master_key_id="ee" * 16), b"k" * 32, b"aad")
    for _key_id, data_key in issued:  # and the live keys still open everything
        assert data_keys.decrypt(Call(), data_key.wrapped_key, CONTEXT).plaintext == data_key.plaintext


def test_a_serving_replica_follows_a_root_rotation_made_by_another_process(settings):
    """kms hsm rotate-root runs in its own process while servers serve: they find the new root
    (for new versions, and for versions it re-wrapped) without a restart, so the old root can
    be retired under them."""
    from kms.app import build_services

    serving, operator = build_services(settings), build_services(own_journal(settings, "operator"))
    try:
        serving.keys.create_key(Call(), "orders")
        issued = serving.data_keys.generate_data_key(Call(), "orders", CONTEXT)
        old_root = serving.master_keys.hierarchy.active_root()

        report = operator.roots.rotate()  # waits KMS_HSM_ROOT_REFRESH before re-wrapping
        serving.integrity.refresh()  # what the ledger poller does
        rotated = serving.keys.rotate_key(Call(), "orders")
        assert (report.keys, report.versions) == (1, 1)
        assert {v.root_key_id for v in rotated.versions} == {report.root_key_id}
        operator.roots.retire(old_root)

        assert serving.data_keys.decrypt(Call(), issued.wrapped_key, CONTEXT).plaintext == issued.plaintext
        fresh = serving.data_keys.generate_data_key(Call(), "orders", CONTEXT)
        assert serving.data_keys.decrypt(Call(), fresh.wrapped_key, CONTEXT).plaintext == fresh.plaintext
    finally:
        serving.close()
        operator.close()


def test_an_interrupted_root_rotation_resumes_onto_the_same_new_root(sqlite_services, monkeypatch):
    services = sqlite_services
    for n in range(6):
        services.keys.create_key(Call(), f"k{n}")
    hierarchy = services.master_keys.hierarchy
    original = hierarchy.rewrap_material
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyMaterialCorrupt("k3", 1, "interrupted")
        return original(*args, **kwargs)

    monkeypatch.setattr(hierarchy, "rewrap_material", failing)
    with pytest.raises(KeyMaterialCorrupt):
        services.roots.rotate()
    monkeypatch.setattr(hierarchy, "rewrap_material", original)
    new_root = hierarchy.active_root()
    left = services.repository.keys_wrapped_outside(new_root, 10, None)
    assert left == ["k3", "k4", "k5"]
    resumed = services.roots.rotate()
    assert (resumed.created, resumed.root_key_id, resumed.keys) == (False, new_root, 3)
    assert services.repository.keys_wrapped_outside(new_root, 10, None) == []
    assert len(hierarchy.roots()) == 2  # no third root was made


def test_an_old_root_is_retired_only_when_nothing_is_wrapped_under_it(sqlite_services):
    services = sqlite_services
    services.keys.create_key(Call(), "orders")
    old_root = services.master_keys.hierarchy.active_root()
    with pytest.raises(FailedPrecondition, match="active root"):
        services.roots.retire(old_root)
    services.master_keys.hierarchy.create_root()  # a new root, nothing re-wrapped yet
    with pytest.raises(FailedPrecondition, match="still wrapped"):
        services.roots.retire(old_root)
    services.roots.rotate()
    services.roots.retire(old_root)


def test_an_untrustworthy_root_is_never_used_and_no_other_is_created_over_it(sqlite_services, label_prefix):
    services = sqlite_services
    hierarchy = KeyHierarchy(
        services.pool,
        services.clock.now,
        label_prefix + "x",
        services.sealer.seal,
        services.sealer.check,
        creation_lock=lambda: threading.Lock(),
    )
    services.pool.run(
        lambda pooled: pooled.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: b"\x07" * 32,
                Attribute.LABEL: hierarchy.root_label,
                Attribute.ID: b"\x01" * 16,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.WRAP: True,
                Attribute.UNWRAP: True,
            }
        )
    )
    try:
        with pytest.raises(RootKeyUntrusted):
            hierarchy.generate()
        assert len(_secret_keys(services, label_prefix + "x")) == 1
    finally:
        services.pool.run(
            lambda pooled: [
                o.destroy()
                for o in pooled.session.get_objects(
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: hierarchy.root_label}
                )
            ]
        )


def test_the_handle_cache_stays_bounded_and_correct_under_concurrency(sqlite_services):
    services = sqlite_services
    store = Pkcs11MasterKeyStore(
        services.pool,
        services.clock,
        services.settings.pkcs11_label_prefix,
        hierarchy=services.master_keys.hierarchy,
        handle_capacity=4,
    )
    versions = [services.keys.create_key(Call(), f"k{n}").version(1) for n in range(20)]
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                version = rng.choice(versions)
                iv, sealed = store.encrypt(version, b"d" * 32, version.key_id.encode())
                assert store.decrypt(version, iv, sealed, version.key_id.encode()) == b"d" * 32
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert store.cached_handles <= 4


def test_a_key_moves_into_the_hierarchy_by_changing_its_storage_and_rotating(services):
    keys = services.keys
    keys.create_key(Call(), "legacy", storage=Storage.HSM_OBJECT)
    old = services.data_keys.generate_data_key(Call(), "legacy", CONTEXT)
    services.lifecycle.update_key(Call(), "legacy", storage=Storage.WRAPPED)
    moved = keys.rotate_key(Call(), "legacy")
    assert [v.storage for v in moved.versions] == [Storage.HSM_OBJECT, Storage.WRAPPED]
    assert services.data_keys.decrypt(Call(), old.wrapped_key, CONTEXT).plaintext == old.plaintext
    assert services.data_keys.generate_data_key(Call(), "legacy", CONTEXT).key_version == 2
