"""Many threads on the HSM at once: the hazard python-pkcs11's C_Initialize(NULL) creates with
SoftHSM (locking off, then races and crashes) must not reach a threaded server."""

from __future__ import annotations

import threading

from kms.hsm.module import Pkcs11Module
from kms.service.calls import Call


def test_module_is_initialized_with_os_locking_shared_with_python_pkcs11(hsm_token):
    module = Pkcs11Module.load(hsm_token.module_path)
    # python-pkcs11's own C_Initialize(NULL) found the module already initialized by ours.
    assert module.shared_instance is True


def test_threads_hammering_the_hsm_see_zero_errors(sqlite_services):
    keys, data_keys, store = sqlite_services.keys, sqlite_services.data_keys, sqlite_services.master_keys
    keys.create_key(Call(), "hammer")
    errors: list[str] = []
    done = []

    def worker(number: int) -> None:
        try:
            for i in range(150):
                issued = data_keys.generate_data_key(Call(), "hammer", {"worker": str(number)})
                opened = data_keys.decrypt(Call(), issued.wrapped_key, {"worker": str(number)})
                assert opened.plaintext == issued.plaintext
                if i % 50 == 0:
                    # Object creation and search touch SoftHSM's shared object store.
                    store.find("hammer", 1)
                    store.random_bytes(32)
            done.append(number)
        except Exception as error:  # noqa: BLE001 - the assertion below reports them all
            errors.append(repr(error))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    rotator = threading.Thread(target=lambda: [keys.rotate_key(Call(), "hammer") for _ in range(5)])
    for thread in [*threads, rotator]:
        thread.start()
    for thread in [*threads, rotator]:
        thread.join()
    assert errors == []
    assert len(done) == 24  # 24 x 150 x 2 = 7,200 HSM operations plus rotations
    assert keys.get_key(Call(), "hammer").primary_version == 6
