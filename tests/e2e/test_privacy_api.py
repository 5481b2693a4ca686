"""Erasure per subject and retention through a real server: the gRPC contract (statuses and
reasons), the SDK, the kms command, permissions over mutual TLS, kms rewrap, and an attacker who
can write to the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, select, text

import kms_client
from kms.rewrap.job import JobOptions, RewrapJob
from kms.rewrap.table import TableSource
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc
from tests.support.fixtures import APP
from tests.support.process import clean_env, kms_command

ALICE = {"user_id": "alice", "table": "orders"}
BOB = {"user_id": "bob", "table": "orders"}


def kms(*args: str, target: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        kms_command(*args, "--target", target),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def _reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("kms-error-reason", "")


def test_the_grpc_contract_of_erasure(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
        created = stub.CreateKey(pb.CreateKeyRequest(key_id="people", subject_field="user_id"))
        assert created.subject_field == "user_id" and created.erasure_finality.seconds == 30 * 86400
        assert created.storage == pb.Key.HSM_OBJECT
        issued = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="people", encryption_context=ALICE))
        with pytest.raises(grpc.RpcError) as missing:
            stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="people", encryption_context={"table": "x"}))
        assert (missing.value.code(), _reason(missing.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "SubjectMissing")

        erasure = stub.EraseSubject(pb.EraseSubjectRequest(key_id="people", subject="alice"))
        assert erasure.subject_known and erasure.final_after_version == 1 and not erasure.final
        assert erasure.erased_by == "local" and len(erasure.subject_digest) == 64
        with pytest.raises(grpc.RpcError) as erased:
            stub.Decrypt(pb.DecryptRequest(wrapped_key=issued.wrapped_key, encryption_context=ALICE))
        assert (erased.value.code(), _reason(erased.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "SubjectErased")
        assert erasure.subject_digest in erased.value.details() and "alice" not in erased.value.details()
        tampered = bytearray(issued.wrapped_key)
        tampered[-1] ^= 1
        bob = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id="people", encryption_context=BOB))
        tampered = bytearray(bob.wrapped_key)
        tampered[-1] ^= 1
        with pytest.raises(grpc.RpcError) as invalid:
            stub.Decrypt(pb.DecryptRequest(wrapped_key=bytes(tampered), encryption_context=BOB))
        assert _reason(invalid.value) == "InvalidCiphertext"  # a tampered input is not an erasure

        listed = stub.ListErasures(pb.ListErasuresRequest(key_id="people"))
        assert [e.subject_digest for e in listed.erasures] == [erasure.subject_digest]
        assert listed.erasures[0].audit_seq > 0
        with pytest.raises(grpc.RpcError) as not_a_subject_key:
            stub.CreateKey(pb.CreateKeyRequest(key_id="plain"))
            stub.EraseSubject(pb.EraseSubjectRequest(key_id="plain", subject="alice"))
        assert not_a_subject_key.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as empty:
            stub.EraseSubject(pb.EraseSubjectRequest(key_id="people", subject=""))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_receipt_is_an_audit_record_with_the_digest_and_never_the_subject(server, client):
    client.create_key("people", subject_field="user_id")
    client.generate_data_key("people", ALICE)
    receipt = client.erase_subject("people", "alice")
    (listed,) = client.list_erasures("people")[0]
    events = list(client.audit_events(key_id="people"))
    record = next(e for e in events if e.seq == listed.audit_seq)
    assert (record.rpc, record.identity, record.outcome) == ("EraseSubject", "local", "OK")
    assert receipt.subject_digest in record.detail
    assert all("alice" not in f"{e.detail}{e.reason}{e.key_id}" for e in events)
    # Every use of the subject's data carries its digest too, so an officer finds them all.
    uses = [e for e in events if e.rpc == "GenerateDataKey"]
    assert uses and all(receipt.subject_digest in e.detail for e in uses)


def test_the_sdk_envelope_encryption_works_per_subject_and_stops_at_the_erasure(server, client):
    client.create_key("people", subject_field="user_id")
    for_alice = client.encrypt(b"alice's order", key_id="people", context=ALICE)
    for_bob = client.encrypt(b"bob's order", key_id="people", context=BOB)
    assert client.decrypt(for_alice, context=ALICE) == b"alice's order"
    with pytest.raises(kms_client.SubjectMissing):
        client.encrypt(b"x", key_id="people", context={"table": "orders"})
    receipt = client.erase_subject("people", "alice")
    assert isinstance(receipt, kms_client.Erasure) and receipt.subject_known
    with pytest.raises(kms_client.SubjectErased):
        client.decrypt(for_alice, context=ALICE)
    assert client.decrypt(for_bob, context=BOB) == b"bob's order"
    key = client.get_key("people")
    assert (key.subject_field, key.erasure_finality, key.storage) == ("user_id", timedelta(days=30), "HSM_OBJECT")


def test_erasing_drops_the_subjects_cached_data_keys_in_the_sdk(server, client):
    client.create_key("people", subject_field="user_id")
    with kms_client.KmsClient(server.target, data_key_caching=kms_client.DataKeyCaching()) as caching:
        caching.encrypt(b"1", key_id="people", context=ALICE)
        caching.encrypt(b"2", key_id="people", context=BOB)
        cached = len(caching._data_key_cache.entries())  # type: ignore[union-attr]
        caching.erase_subject("people", "alice")
        assert len(caching._data_key_cache.entries()) == cached - 1  # type: ignore[union-attr]
        with pytest.raises(kms_client.SubjectErased):
            caching.encrypt(b"3", key_id="people", context=ALICE)


def test_the_kms_command_erases_and_shows_the_status(server):
    assert kms("keys", "create", "people", "--subject-field", "user_id", target=server.target).returncode == 0
    erased = kms("erase", "people", "alice", "--json", target=server.target)
    assert erased.returncode == 0, erased.stderr
    receipt = json.loads(erased.stdout)
    assert (receipt["key_id"], receipt["subject_known"], receipt["final_after_version"]) == ("people", False, 1)
    from_stdin = kms("erase", "people", "-", "--json", target=server.target, stdin="bob\n")
    assert json.loads(from_stdin.stdout)["subject_digest"] != receipt["subject_digest"]
    status = kms("erase", "status", "people", target=server.target)
    assert status.returncode == 0 and receipt["subject_digest"] in status.stdout
    assert "FINAL AFTER VERSION" in status.stdout and "2 erasures, 2 not final yet" in status.stdout
    listed = json.loads(kms("erase", "status", "people", "--json", target=server.target).stdout)
    assert [e["final"] for e in listed] == [False, False] and all(e["final_time"] for e in listed)
    update = kms("keys", "update", "people", "--erasure-finality", "10d", "--json", target=server.target)
    assert json.loads(update.stdout)["erasure_finality"] == 10 * 86400
    plain = kms("erase", "nope", "alice", target=server.target)
    assert plain.returncode == 1 and "NOT_FOUND" in plain.stderr
    created = kms(
        "keys",
        "create",
        "daily",
        "--rotation-period",
        "1d",
        "--retention-period",
        "90d",
        "--json",
        target=server.target,
    )
    assert json.loads(created.stdout)["retention_period"] == 90 * 86400


def test_erasing_needs_the_erase_permission(mtls_server, connect):
    admin, app = connect(mtls_server, "admin"), connect(mtls_server, "app")
    admin.create_key("people", subject_field="user_id")
    admin.grant_permissions(APP, "people", ["encrypt", "decrypt"])
    app.generate_data_key("people", ALICE)
    with pytest.raises(kms_client.PermissionDenied, match="erase"):
        app.erase_subject("people", "alice")
    admin.grant_permissions(APP, "people", ["erase"])
    assert app.erase_subject("people", "alice").erased_by == APP


def test_kms_rewrap_leaves_subject_data_keys_as_they_are_and_refuses_keys_with_a_retention(server, client, tmp_path):
    client.create_key("people", subject_field="user_id")
    client.create_key("daily", retention_period=timedelta(days=90))
    client.create_key("orders")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    table = Table(
        "secrets",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String(16)),
        Column("user_id", String(16)),
        Column("wrapped", LargeBinary),
    )
    table.metadata.create_all(engine)
    rows = []
    for n, key_id in enumerate(["people", "daily", "orders"] * 3):
        context = {"tenant": "acme", "user_id": f"u{n}"}
        rows.append({"id": n, **context, "wrapped": client.generate_data_key(key_id, context).wrapped_key})
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    for key_id in ("people", "daily", "orders"):
        client.rotate_key(key_id)
    source = TableSource(url, "secrets", "wrapped", "id", context_columns={"tenant": "tenant", "user_id": "user_id"})
    report = RewrapJob(client, source, JobOptions(batch_size=4)).run()
    assert (report.scanned, report.rewrapped, report.already_current, report.refused) == (9, 3, 3, 3)
    (reason,) = [r for r in report.failures if "retention_period" in r]
    assert "key daily has a retention_period of 90 days" in reason and report.failures[reason] == 3
    with engine.connect() as connection:
        stored = {row.id: row.wrapped for row in connection.execute(select(table))}
    assert all(stored[r["id"]] == r["wrapped"] for r in rows if r["id"] % 3 != 2)  # people and daily untouched
    assert all(stored[r["id"]] != r["wrapped"] for r in rows if r["id"] % 3 == 2)  # orders moved to v2

    # The command itself: the same refusal, said in its report, and a failing exit status.
    command = kms(
        "rewrap",
        "table",
        "--database-url",
        url,
        "--table",
        "secrets",
        "--column",
        "wrapped",
        "--primary-key",
        "id",
        "--context-column",
        "tenant=tenant",
        "--context-column",
        "user_id=user_id",
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        target=server.target,
    )
    assert command.returncode == 1, command.stderr
    assert "key daily has a retention_period of 90 days" in command.stdout
    assert "a key with a retention_period is never re-wrapped" in " ".join(command.stdout.split())
    # And the RPC: FAILED_PRECONDITION with its own reason, never a generic failure.
    daily = next(r for r in rows if r["id"] % 3 == 1)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as refused:
        kms_pb2_grpc.KeyManagementServiceStub(channel).ReWrap(
            pb.ReWrapRequest(
                wrapped_key=daily["wrapped"], encryption_context={"tenant": "acme", "user_id": daily["user_id"]}
            )
        )
    assert (refused.value.code(), _reason(refused.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RewrapDefeatsRetention",
    )
    assert "retention_period" in refused.value.details()


# -- someone who can write to the database ---------------------------------------------------


def _sql(app, statement: str, **params) -> list:
    with app.services.engine.begin() as connection:
        result = connection.execute(text(statement), params)
        return [dict(row._mapping) for row in result] if result.returns_rows else []


def test_an_erasure_reaches_a_replica_that_holds_the_subjects_key_with_its_ledger_poll(deployment):
    app, replica, connect = deployment
    admin = connect(app, "admin")
    admin.create_key("people", subject_field="user_id")
    for_alice, for_bob = admin.generate_data_key("people", ALICE), admin.generate_data_key("people", BOB)
    second = connect(replica(), "admin")
    assert second.decrypt_data_key(for_alice.wrapped_key, ALICE).plaintext == for_alice.plaintext  # now cached there
    receipt = admin.erase_subject("people", "alice")
    # The second replica learns of it from its next ledger poll (KMS_POLICY_POLL_INTERVAL, 250 ms
    # here); the deadline only keeps a broken build from hanging, it is not what is tested.
    deadline = time.monotonic() + 30
    while True:
        try:
            second.decrypt_data_key(for_alice.wrapped_key, ALICE)
        except kms_client.SubjectErased as error:
            refused = error
            break
        assert time.monotonic() < deadline, "the erasure never reached the second replica"
        time.sleep(0.05)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and refused.reason == "SubjectErased"
    assert receipt.subject_digest in str(refused) and "alice" not in str(refused)
    assert second.decrypt_data_key(for_bob.wrapped_key, BOB).plaintext == for_bob.plaintext


def test_a_subject_key_row_restored_after_its_erasure_is_refused(deployment):
    app, replica, connect = deployment
    admin = connect(app, "admin")
    admin.create_key("people", subject_field="user_id")
    issued = admin.generate_data_key("people", ALICE)
    saved = _sql(app, "SELECT * FROM subject_keys WHERE key_id = 'people'")
    admin.erase_subject("people", "alice")
    for row in saved:  # the writer puts alice's key back, exactly as it was
        _sql(
            app,
            "INSERT INTO subject_keys (key_id, subject_digest, version, wrapped, create_time) "
            "VALUES (:key_id, :subject_digest, :version, :wrapped, :create_time)",
            **row,
        )
    for server in (app, replica()):
        with pytest.raises(kms_client.SubjectErased):
            connect(server, "admin").decrypt_data_key(issued.wrapped_key, ALICE)
        with pytest.raises(kms_client.SubjectErased):
            connect(server, "admin").generate_data_key("people", ALICE)


def test_a_deleted_erasure_record_changes_nothing_and_is_reported(deployment, hsm_env):
    app, replica, connect = deployment
    admin = connect(app, "admin")
    admin.create_key("people", subject_field="user_id")
    issued = admin.generate_data_key("people", ALICE)
    admin.erase_subject("people", "alice")
    _sql(app, "DELETE FROM erasures")
    second = replica()
    with pytest.raises(kms_client.SubjectErased):
        connect(second, "admin").decrypt_data_key(issued.wrapped_key, ALICE)
    with pytest.raises(kms_client.SubjectErased):
        connect(second, "admin").generate_data_key("people", ALICE)  # no new key for alice either
    services = second.services
    problems = services.integrity.verify_rows(
        services.repository.all_keys(), services.policies.stored(), services.subject_repository.all_erasures()
    )
    assert [(p.kind, p.problem) for p in problems] == [("erasure", "row missing (deleted outside the service)")]
    # What an operator runs: kms db verify, in a process of its own, says the same and fails.
    settings = services.settings
    env = clean_env({**hsm_env, "KMS_PKCS11_LABEL_PREFIX": settings.pkcs11_label_prefix})
    verify = subprocess.run(
        kms_command(
            "db",
            "verify",
            "--json",
            "--data-dir",
            str(settings.data_dir / "verify"),
            "--database-url",
            settings.database_url,
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 1, verify.stderr
    reported = json.loads(verify.stdout)["problems"]
    assert [(p["kind"], p["problem"]) for p in reported] == [("erasure", "row missing (deleted outside the service)")]


def test_a_subject_key_moved_to_another_subject_does_not_open(deployment):
    app, replica, connect = deployment
    admin = connect(app, "admin")
    admin.create_key("people", subject_field="user_id")
    admin.generate_data_key("people", ALICE)
    for_bob = admin.generate_data_key("people", BOB)
    alice = bytes.fromhex(app.services.subjects.digest("people", "alice"))
    (alice_row,) = [
        r for r in _sql(app, "SELECT subject_digest, wrapped FROM subject_keys") if r["subject_digest"] == alice
    ]
    # Bob's row gets alice's wrapped key: a key bound (by its associated data) to another subject.
    _sql(app, "UPDATE subject_keys SET wrapped = :w WHERE subject_digest != :a", w=alice_row["wrapped"], a=alice)
    with pytest.raises(kms_client.KeyMaterialCorrupt):
        connect(replica(), "admin").decrypt_data_key(for_bob.wrapped_key, BOB)


def test_reading_the_database_does_not_reveal_subjects(server, client):
    client.create_key("people", subject_field="user_id")
    client.generate_data_key("people", ALICE)
    client.erase_subject("people", "bob")
    engine = server.services.engine
    with engine.connect() as connection:
        dumped = repr(
            [
                list(connection.execute(text(f"SELECT * FROM {t}")))
                for t in ("subject_keys", "erasures", "ledger_entries")
            ]
        )
    assert "alice" not in dumped and "bob" not in dumped
