"""HSM objects are trusted by what their attributes prove, never by their label or CKA_ID.

The attacker here once held the user PIN and planted objects on the token (or can still use a
planted key whose value they know), and can write the database. The service must neither seal
with nor accept MACs from a planted audit seal key, and must never wrap or unwrap with a planted
master key. Objects are planted through python-pkcs11 on the sessions of the service's own pool
(SoftHSM reads its configuration once per process).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from sqlalchemy import text

from kms.domain.audit import AuditEntry, chain_hash, checkpoint_message, verify
from kms.errors import MasterKeyUntrusted, SealKeyUntrusted
from kms.hsm.audit_seal import Pkcs11AuditSealer
from kms.hsm.object_ids import new_object_id
from kms.service.calls import Call
from kms.store.audit import SqlAuditRepository
from tests.support.process import clean_env, kms_command

LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)  # an id that sorts before any key the service made


# -- planting, as an attacker with the PIN would ------------------------------------------


@pytest.fixture
def settings(settings):
    """Keys here live as HSM objects, one token object per version: the subject of these tests."""
    return settings.model_copy(update={"key_storage": "hsm_object"})


@pytest.fixture
def sqlite_settings(sqlite_settings):
    return sqlite_settings.model_copy(update={"key_storage": "hsm_object"})


def _plant(services, make: Callable):
    """Runs ``make(session)`` on one of the pool's (logged-in) sessions, with object creation
    serialized against searches as the service does it (SoftHSM quirk, kms.hsm.pool)."""
    with services.pool.objects.exclusive():
        return services.pool.run(lambda pooled: make(pooled.session))


def _labelled(services, label: str) -> list[tuple[object, bytes]]:
    def search(pooled):
        described = []
        for found in pooled.session.get_objects({Attribute.LABEL: label}):
            values = found.get_attributes([Attribute.CLASS, Attribute.ID])
            described.append((values[Attribute.CLASS], bytes(values.get(Attribute.ID, b""))))
        return described

    with services.pool.objects.shared():
        return services.pool.run(search)


def _secret_key(services, object_id: bytes):
    return services.pool.run(lambda pooled: pooled.session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id))


def _destroy(services, object_id: bytes) -> None:
    def destroy(session) -> None:
        for found in list(session.get_objects({Attribute.ID: object_id})):
            found.destroy()

    _plant(services, destroy)


def _generated_seal_key(label: str, template: dict | None = None, bits: int = 256) -> Callable:
    """A key generated in the HSM under the seal key's label, sound unless ``template`` says."""

    def make(session):
        object_id = new_object_id(LONG_AGO)
        session.generate_key(
            KeyType.GENERIC_SECRET,
            bits,
            id=object_id,
            label=label,
            store=True,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                **(template or {}),
            },
        )
        return object_id

    return make


def _imported_seal_key(label: str, value: bytes, object_id: bytes | None = None) -> Callable:
    """A key whose value the planter knows, imported by C_CreateObject, looking as strict as ours."""

    def make(session):
        planted_id = object_id or new_object_id(LONG_AGO)
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: value,
                Attribute.ID: planted_id,
                Attribute.LABEL: label,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.DECRYPT: False,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            }
        )
        return planted_id

    return make


def _chain_some_records(services, batches: int = 3) -> None:
    for batch in range(batches):
        services.audit_log.record(
            [
                AuditEntry(
                    time=datetime.now(UTC), identity=f"caller-{batch}-{n}", rpc="GetKey", outcome="OK", key_id="orders"
                )
                for n in range(2)
            ]
        )
        assert services.audit_log.flush(timeout=10)


def _wait_until_chained(services, timeout: float = 15) -> None:
    """flush() answers at once while the writer is failing; it retries within two seconds."""
    deadline = time.monotonic() + timeout
    while not services.audit_log.flush(timeout=0.5):
        assert time.monotonic() < deadline, "journaled records did not reach the chain"
        time.sleep(0.1)


def _checkpoints(services) -> list:
    return list(SqlAuditRepository(services.engine).checkpoints())


def _hsm_check(hsm_env, sqlite_url: str, label_prefix: str, data_dir) -> dict:
    env = clean_env({**hsm_env, "KMS_PKCS11_LABEL_PREFIX": label_prefix, "KMS_DATABASE_URL": sqlite_url})
    result = subprocess.run(
        kms_command("hsm", "check", "--json", "--data-dir", str(data_dir)),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    report["exit_code"] = result.returncode
    return report


def _critical(caplog, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno == logging.CRITICAL]


# -- the audit seal key -------------------------------------------------------------------


def test_a_second_seal_key_planted_after_first_use_stops_sealing_and_checking_until_removed(
    sqlite_services, sqlite_url, label_prefix, hsm_env, tmp_path, caplog
):
    services, sealer = sqlite_services, sqlite_services.sealer
    label = f"{label_prefix}:audit-seal"
    _chain_some_records(services)
    genuine_mac = sealer.seal(b"before")
    sealed_before = len(_checkpoints(services))
    planted = _plant(services, _generated_seal_key(label))  # sound attributes, and the "oldest"

    with caplog.at_level(logging.INFO):
        with pytest.raises(SealKeyUntrusted, match="2 objects labelled"):
            sealer.verify_pins()  # the health monitor's periodic re-check
        for _ in range(3):
            with pytest.raises(SealKeyUntrusted):
                sealer.seal(b"after")
            with pytest.raises(SealKeyUntrusted):
                sealer.check(b"before", genuine_mac)
            with pytest.raises(SealKeyUntrusted):
                sealer.derive(b"anything")
        with pytest.raises(SealKeyUntrusted):
            sealer.verify_pins()
        assert len(_critical(caplog, "kms.hsm.audit_seal")) == 1  # once, however often it is asked

        # The audit log keeps its records in the journal; nothing new is sealed.
        services.audit_log.record([AuditEntry(time=datetime.now(UTC), identity="x", rpc="GetKey", outcome="OK")])
        assert not services.audit_log.flush(timeout=2)
        assert len(_checkpoints(services)) == sealed_before
        # A replica starting now finds both and picks neither.
        with pytest.raises(SealKeyUntrusted, match="2 objects labelled"):
            Pkcs11AuditSealer(services.pool, services.clock, label_prefix).seal(b"after")

        planted_key = _secret_key(services, planted)
        for checkpoint in _checkpoints(services):
            message = checkpoint_message(checkpoint.seq, checkpoint.hash)
            assert not planted_key.verify(message, bytes.fromhex(checkpoint.mac), mechanism=Mechanism.SHA256_HMAC)

        report = _hsm_check(hsm_env, sqlite_url, label_prefix, tmp_path / "cli")
        assert report["exit_code"] == 1
        assert report["seal_key"]["state"] == "untrusted" and "2 objects labelled" in report["seal_key"]["problem"]

        # An operator removes the planted key: the pinned one is trusted again, and the
        # journaled records reach the chain.
        _destroy(services, planted)
        sealer.verify_pins()
        assert sealer.check(b"before", genuine_mac)
        _wait_until_chained(services)
        assert len(_checkpoints(services)) > sealed_before


def test_an_imported_key_under_the_seal_label_is_refused_and_no_other_key_is_created(sqlite_services, label_prefix):
    prefix = label_prefix + "-fresh"  # no key exists under it yet: the plant comes before first use
    label = f"{prefix}:audit-seal"
    value = b"known to the planter".ljust(32, b".")
    planted = _plant(sqlite_services, _imported_seal_key(label, value))
    sealer = Pkcs11AuditSealer(sqlite_services.pool, sqlite_services.clock, prefix)

    with pytest.raises(SealKeyUntrusted, match="CKA_LOCAL"):
        sealer.seal(b"message")
    with pytest.raises(SealKeyUntrusted):
        sealer.check(b"message", hmac.new(value, b"message", hashlib.sha256).hexdigest())
    with pytest.raises(SealKeyUntrusted):
        sealer.derive(b"audit-context-digest")
    assert _labelled(sqlite_services, label) == [(ObjectClass.SECRET_KEY, planted)]  # none created beside it
    assert sealer.pinned_key_id is None


@pytest.mark.parametrize(
    "plant, unmet",
    [
        (
            lambda label: _generated_seal_key(label, {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}),
            "CKA_SENSITIVE",
        ),
        # Locked down after generation: it looks sensitive now, but its value was readable once.
        (
            lambda label: _then(
                _generated_seal_key(label, {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}),
                {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            ),
            "CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE",
        ),
        (lambda label: _generated_seal_key(label, {Attribute.PRIVATE: False}), "CKA_PRIVATE"),
        (lambda label: _generated_seal_key(label, {Attribute.DERIVE: True}), "CKA_DERIVE"),
        (lambda label: _generated_seal_key(label, bits=128), "CKA_VALUE_LEN"),
        (
            lambda label: (
                lambda session: session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.LABEL: label,
                        Attribute.VALUE: b"not a key",
                    }
                )
            ),
            "not a secret key",
        ),
    ],
    ids=["extractable", "extractable-then-locked-down", "public", "can-derive", "128-bit", "data-object"],
)
def test_a_planted_object_that_does_not_prove_in_hsm_generation_is_refused(sqlite_services, label_prefix, plant, unmet):
    prefix = label_prefix + "-fresh"
    label = f"{prefix}:audit-seal"
    _plant(sqlite_services, plant(label))
    sealer = Pkcs11AuditSealer(sqlite_services.pool, sqlite_services.clock, prefix)
    with pytest.raises(SealKeyUntrusted, match=unmet):
        sealer.seal(b"message")
    with pytest.raises(SealKeyUntrusted, match=unmet):
        sealer.verify_pins()
    assert len(_labelled(sqlite_services, label)) == 1


def _then(make: Callable, changes: dict) -> Callable:
    def make_and_change(session):
        object_id = make(session)
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id)
        for attribute, value in changes.items():
            key[attribute] = value
        return object_id

    return make_and_change


def test_the_pinned_key_replaced_under_its_id_by_another_generated_key_is_refused(sqlite_services, label_prefix):
    services, sealer = sqlite_services, sqlite_services.sealer
    label = f"{label_prefix}:audit-seal"
    sealer.seal(b"pin it")
    [(_, pinned)] = _labelled(services, label)

    def replace_keeping_the_id(session) -> None:
        session.get_key(object_class=ObjectClass.SECRET_KEY, id=pinned).destroy()
        session.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            id=pinned,
            label=label,
            store=True,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            },
        )

    _plant(services, replace_keeping_the_id)
    with pytest.raises(SealKeyUntrusted, match="replaced"):
        sealer.seal(b"after")
    with pytest.raises(SealKeyUntrusted, match="replaced"):
        sealer.verify_pins()


@pytest.mark.parametrize("planted_key", ["imported-with-a-known-value", "generated-and-used-through-the-hsm"])
def test_a_chain_rewritten_and_resealed_with_a_planted_key_never_verifies_intact(
    sqlite_services, label_prefix, planted_key
):
    services = sqlite_services
    label = f"{label_prefix}:audit-seal"
    _chain_some_records(services)
    if planted_key == "imported-with-a-known-value":
        value = b"the planter knows this".ljust(32, b"!")
        _plant(services, _imported_seal_key(label, value))

        def forge(message: bytes) -> str:
            return hmac.new(value, message, hashlib.sha256).hexdigest()
    else:
        planted = _plant(services, _generated_seal_key(label))
        planted_key = _secret_key(services, planted)

        def forge(message: bytes) -> str:
            return bytes(planted_key.sign(message, mechanism=Mechanism.SHA256_HMAC)).hex()

    # The database writer rewrites record 2, recomputes every later hash, and re-seals every
    # checkpoint with the planted key.
    repository = SqlAuditRepository(services.engine)
    records = list(repository.records())
    previous = records[0].hash
    rewritten = {}
    with services.engine.begin() as connection:
        for record in records[1:]:
            entry = record.entry
            if record.seq == 2:
                entry = AuditEntry(**{**{f: getattr(entry, f) for f in entry.__slots__}, "identity": "rewritten"})
            digest = chain_hash(record.seq, entry, record.origin, previous)
            connection.execute(
                text("UPDATE audit_records SET identity = :i, prev_hash = :p, hash = :h WHERE seq = :s"),
                {"i": entry.identity, "p": previous, "h": digest, "s": record.seq},
            )
            rewritten[record.seq] = previous = digest
        for checkpoint in repository.checkpoints():
            new_hash = rewritten.get(checkpoint.seq, checkpoint.hash)
            mac = forge(checkpoint_message(checkpoint.seq, new_hash))
            connection.execute(
                text("UPDATE audit_checkpoints SET hash = :h, mac = :m WHERE seq = :s"),
                {"h": new_hash, "m": mac, "s": checkpoint.seq},
            )
        connection.execute(text("UPDATE audit_head SET hash = :h"), {"h": previous})

    def verdict(sealer):
        return verify(repository.records(), repository.checkpoints(), sealer.check)

    # A restarted service finds both keys under the label, and trusts neither.
    with pytest.raises(SealKeyUntrusted, match="2 objects labelled"):
        verdict(Pkcs11AuditSealer(services.pool, services.clock, label_prefix))
    # The running one pinned its own key before the plant: the forged MACs do not verify, and
    # its periodic re-check finds the plant.
    result = verdict(services.sealer)
    assert not result.intact and "forged" in result.problem
    with pytest.raises(SealKeyUntrusted, match="2 objects labelled"):
        services.sealer.verify_pins()
    with pytest.raises(SealKeyUntrusted):
        services.audit.verify(Call())


def test_replicas_starting_together_create_exactly_one_seal_key(sqlite_services, label_prefix):
    prefix = label_prefix + "-race"
    shared = threading.Lock()  # what the database advisory lock is to replicas
    taken: list[int] = []

    def creation_lock() -> threading.Lock:
        taken.append(1)
        return shared

    sealers = [
        Pkcs11AuditSealer(sqlite_services.pool, sqlite_services.clock, prefix, creation_lock=creation_lock)
        for _ in range(4)
    ]
    barrier = threading.Barrier(len(sealers))
    macs: list[str] = []
    errors: list[str] = []

    def start(sealer: Pkcs11AuditSealer) -> None:
        try:
            barrier.wait()
            macs.append(sealer.seal(b"first record"))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=start, args=(sealer,)) for sealer in sealers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(_labelled(sqlite_services, f"{prefix}:audit-seal")) == 1
    assert len(set(macs)) == 1 and len({sealer.pinned_key_id for sealer in sealers}) == 1
    assert taken  # creation went through the caller's lock


# -- master keys --------------------------------------------------------------------------


def test_a_master_key_object_replaced_by_an_imported_key_with_its_id_is_never_used(
    sqlite_services, sqlite_url, label_prefix, hsm_env, tmp_path, caplog
):
    services = sqlite_services
    services.keys.create_key(Call(), "orders")
    issued = services.data_keys.generate_data_key(Call(), "orders", {"tenant": "a"})
    version = services.keys.get_key(Call(), "orders").versions[0]
    object_id = bytes.fromhex(version.master_key_id)
    value = b"known to the planter, 32 bytes!!"

    def replace(session) -> None:
        session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id).destroy()
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: value,
                Attribute.ID: object_id,
                Attribute.LABEL: version.master_key_label,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            }
        )

    _plant(services, replace)
    store = services.master_keys
    iv = b"\x01" * 12
    chosen_by_the_planter = AESGCM(value).encrypt(iv, b"a data key the planter chose", b"")
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            with pytest.raises(MasterKeyUntrusted, match="key 'orders' version 1"):
                services.data_keys.generate_data_key(Call(), "orders", {"tenant": "a"})  # would wrap under a known key
            with pytest.raises(MasterKeyUntrusted):
                services.data_keys.decrypt(Call(), issued.wrapped_key, {"tenant": "a"})
            with pytest.raises(MasterKeyUntrusted):
                store.decrypt(version, iv, chosen_by_the_planter, b"")
            with pytest.raises(MasterKeyUntrusted):
                store.encrypt(version, b"k" * 32, b"")
        assert len(_critical(caplog, "kms.hsm.master_keys")) == 1  # once per object, not per call

    report = _hsm_check(hsm_env, sqlite_url, label_prefix, tmp_path / "cli")
    assert report["exit_code"] == 1
    assert [v["master_key_id"] for v in report["untrusted"]] == [version.master_key_id]


def test_a_master_key_is_vetted_once_per_object_not_per_call(sqlite_services, monkeypatch):
    from kms.hsm import master_keys

    vetted: list[int] = []
    original = master_keys.unmet_any
    monkeypatch.setattr(master_keys, "unmet_any", lambda found, tables: vetted.append(1) or original(found, tables))
    services = sqlite_services
    services.keys.create_key(Call(), "often")

    def worker() -> None:
        for _ in range(25):
            issued = services.data_keys.generate_data_key(Call(), "often", {})
            services.data_keys.decrypt(Call(), issued.wrapped_key, {})

    threads = [threading.Thread(target=worker) for _ in range(4)]  # several sessions of the pool
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(vetted) == 1
