"""The HSM going away and coming back: calls fail with HsmUnavailable (UNAVAILABLE at the
edge) while it is gone, and work again without a restart once it returns."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from kms.clock import SystemClock
from kms.errors import HsmUnavailable
from kms.hsm.master_keys import Pkcs11MasterKeyStore
from kms.hsm.pool import SessionPool
from kms.service.calls import Call


@pytest.fixture
def settings(settings):
    """Keys here live as HSM objects, one token object per version: the subject of these tests."""
    return settings.model_copy(update={"key_storage": "hsm_object"})


@pytest.fixture
def sqlite_settings(sqlite_settings):
    return sqlite_settings.model_copy(update={"key_storage": "hsm_object"})


def test_session_loss_is_repaired_transparently(sqlite_services):
    sqlite_services.keys.create_key(Call(), "sessions")
    data_keys, pool = sqlite_services.data_keys, sqlite_services.pool
    issued = data_keys.generate_data_key(Call(), "sessions", {})
    # Every session of this process closes, and with the last one the login.
    pool.module.close_all_sessions(pool.slot_id)
    assert data_keys.decrypt(Call(), issued.wrapped_key, {}).plaintext == issued.plaintext
    pool.module.close_all_sessions(pool.slot_id)
    assert data_keys.generate_data_key(Call(), "sessions", {}).key_version == 1


def test_module_reset_is_repaired_transparently(sqlite_services):
    sqlite_services.keys.create_key(Call(), "reset")
    data_keys, pool = sqlite_services.data_keys, sqlite_services.pool
    issued = data_keys.generate_data_key(Call(), "reset", {})
    pool.module.finalize()  # what a device reset does to every handle
    assert data_keys.decrypt(Call(), issued.wrapped_key, {}).plaintext == issued.plaintext


@pytest.fixture
def own_token(hsm_token):
    """A token of its own in the shared token directory, so it can vanish alone."""
    from kms.hsm import softhsm
    from kms.hsm.module import Pkcs11Module

    module = Pkcs11Module.load(hsm_token.module_path)
    tokens_dir = hsm_token.config_file.parent / "tokens"
    before = set(tokens_dir.iterdir())
    label = "outage-" + uuid.uuid4().hex[:8]
    pin = "outage-pin-" + uuid.uuid4().hex[:8]
    softhsm._initialize_token(module, label, "so-" + pin, pin)
    [directory] = set(tokens_dir.iterdir()) - before
    yield module, label, pin, directory
    shutil.rmtree(directory, ignore_errors=True)
    module.reinitialize()  # so that SoftHSM forgets the token it can no longer read


def test_outage_gives_unavailable_then_recovers_without_restart(own_token):
    module, label, pin, directory = own_token
    pool = SessionPool(module.path, label, pin, size=4, retry_interval=0.05)
    store = Pkcs11MasterKeyStore(pool, SystemClock(), "outage", hierarchy=_hierarchy(pool))
    version = store.create("k", 1)
    iv, sealed = store.encrypt(version, b"d" * 32, b"")

    hidden = directory.parent.parent / ("away-" + directory.name)  # outside the token directory
    directory.rename(hidden)
    module.finalize()  # the device resets; when it comes back up, the token is not there
    try:
        for _ in range(3):
            with pytest.raises(HsmUnavailable):
                store.decrypt(version, iv, sealed, b"")
        with pytest.raises(HsmUnavailable):
            store.check()
    finally:
        hidden.rename(directory)
    # Back: the next attempt after retry_interval reconnects by itself.
    time.sleep(0.1)
    store.check()
    assert store.decrypt(version, iv, sealed, b"") == b"d" * 32
    store.destroy(version)
    pool.close()


def _hierarchy(pool):
    """A key hierarchy for the store; this test uses token objects only, so it is never asked."""
    import threading

    from kms.hsm.hierarchy import KeyHierarchy

    def unused(*_args: object) -> object:
        raise AssertionError("the key hierarchy is not used here")

    return KeyHierarchy(pool, SystemClock().now, "outage", unused, unused, creation_lock=threading.Lock)
