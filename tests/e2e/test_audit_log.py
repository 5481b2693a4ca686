"""The audit log, on SQLite and PostgreSQL: every call recorded, tampering found and located,
results withheld when records cannot be written."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text

import kms_client
from kms.crypto.context import encode_context
from kms.domain.audit import AuditEntry, chain_hash
from kms.store.tables import AuditRecordRow

CONTEXT = {"tenant": "acme", "secret-ish": "value-never-logged"}


@pytest.fixture
def audited(server_on_each_database):
    """A server with some history: keys created, data keys issued and opened, a denial."""
    app = server_on_each_database
    with kms_client.KmsClient(app.target) as client:
        client.create_key("orders")
        issued = [client.generate_data_key("orders", CONTEXT) for _ in range(3)]
        client.decrypt_data_key(issued[0].wrapped_key, CONTEXT)
        client.generate_data_keys([("orders", CONTEXT), ("missing", {})])
        with pytest.raises(kms_client.InvalidCiphertext):
            client.decrypt_data_key(b"\x01junk", CONTEXT)
        yield app, client, issued


def _sql(app, statement: str, **params) -> None:
    app.services.audit_log.flush()  # tamper with a settled chain, not one the writer is extending
    with app.services.engine.begin() as connection:
        connection.execute(text(statement), params)


def test_every_call_and_every_batch_item_is_recorded_without_secrets(audited):
    _app, client, issued = audited
    events = list(client.audit_events())
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    rpcs = [(e.rpc, e.item, e.outcome) for e in events]
    assert rpcs[:8] == [
        ("CreateKey", -1, "OK"),
        ("GenerateDataKey", -1, "OK"),
        ("GenerateDataKey", -1, "OK"),
        ("GenerateDataKey", -1, "OK"),
        ("Decrypt", -1, "OK"),
        ("BatchGenerateDataKey", 0, "OK"),
        ("BatchGenerateDataKey", 1, "NOT_FOUND"),
        ("BatchGenerateDataKey", -1, "OK"),  # the batch call itself
    ]
    assert ("Decrypt", -1, "INVALID_ARGUMENT") in rpcs
    decrypt = next(e for e in events if e.rpc == "Decrypt" and e.outcome == "OK")
    assert (decrypt.key_id, decrypt.key_version, decrypt.identity) == ("orders", 1, "local")
    # The context is recorded as a keyed digest: equal contexts match, guesses cannot be tested.
    assert decrypt.context_digest != hashlib.sha256(encode_context(CONTEXT)).hexdigest()
    with_context = [e for e in client.audit_events(context=CONTEXT) if e.rpc != "ListAuditEvents"]
    assert {e.context_digest for e in with_context} == {decrypt.context_digest}
    assert [(e.rpc, e.item) for e in with_context][:4] == [("GenerateDataKey", -1)] * 3 + [("Decrypt", -1)]
    assert decrypt.request_id and decrypt.peer.startswith("ipv4:127.0.0.1")
    dumped = repr(events)
    assert "value-never-logged" not in dumped
    for data_key in issued:
        assert data_key.plaintext.hex() not in dumped and repr(data_key.plaintext) not in dumped
    assert client.verify_audit_log().intact


def test_stream_items_are_recorded_and_a_stream_without_items_still_leaves_a_record(audited):
    _app, client, issued = audited
    results = list(client.stream_rewrap([(issued[1].wrapped_key, CONTEXT), (b"junk", {})]))
    assert len(results) == 2
    assert list(client.stream_rewrap([])) == []
    streamed = [
        (e.rpc, e.item, e.outcome, e.key_id, e.detail) for e in client.audit_events() if e.rpc == "StreamReWrap"
    ]
    assert streamed == [
        ("StreamReWrap", 0, "OK", "orders", "to orders v1"),
        ("StreamReWrap", 1, "INVALID_ARGUMENT", "", ""),
        ("StreamReWrap", -1, "OK", "", "2 items"),  # every stream: the call itself
        ("StreamReWrap", -1, "OK", "", ""),  # the empty stream
    ]


def _last_seq(app) -> int:
    app.services.audit_log.flush()
    with app.services.engine.connect() as connection:
        return connection.execute(text("SELECT max(seq) FROM audit_records")).scalar()


def _record(app, seq: int):
    app.services.audit_log.flush()
    table = AuditRecordRow.__table__
    with app.services.engine.connect() as connection:
        return connection.execute(select(table).where(table.c.seq == seq)).one()


def test_a_changed_record_is_found_and_located(audited):
    app, client, _ = audited
    _sql(app, "UPDATE audit_records SET identity = 'someone-else' WHERE seq = 3")
    result = client.verify_audit_log()
    assert (result.intact, result.problem_seq, result.problem) == (False, 3, "record 3 was changed")


def test_a_removed_record_is_found_and_located(audited):
    app, client, _ = audited
    _sql(app, "DELETE FROM audit_records WHERE seq = 4")
    result = client.verify_audit_log()
    assert (result.problem_seq, result.problem) == (4, "record 4 is missing (removed)")


def test_records_removed_from_the_end_are_found(audited):
    app, client, _ = audited
    last = _last_seq(app)
    _sql(app, "DELETE FROM audit_records WHERE seq >= :s", s=last - 1)
    result = client.verify_audit_log()
    assert not result.intact and result.problem_seq == last - 1 and "missing" in result.problem


def test_reordered_records_are_found_and_located(audited):
    app, client, _ = audited
    third, fourth = _record(app, 3), _record(app, 4)
    columns = [c for c in third._fields if c != "seq"]
    swap = ", ".join(f"{c} = :{c}" for c in columns)
    _sql(app, "UPDATE audit_records SET origin = 'moving' WHERE seq = 3")  # origins are unique
    _sql(app, f"UPDATE audit_records SET {swap} WHERE seq = 4", **{c: getattr(third, c) for c in columns})
    _sql(app, f"UPDATE audit_records SET {swap} WHERE seq = 3", **{c: getattr(fourth, c) for c in columns})
    result = client.verify_audit_log()
    assert (result.problem_seq, result.problem) == (
        3,
        "record 3 does not follow record 2 (inserted, removed or reordered)",
    )


def test_an_inserted_record_is_found_even_with_a_valid_hash(audited):
    """Whoever can write the database can compute SHA-256, but not the HSM's checkpoint MAC."""
    app, client, _ = audited
    last = _record(app, _last_seq(app))
    forged = AuditEntry(
        time=last.time, identity="spiffe://intruder", rpc="Decrypt", outcome="OK", key_id="orders", key_version=1
    )
    seq = last.seq + 1
    with app.services.engine.begin() as connection:
        connection.execute(
            AuditRecordRow.__table__.insert(),
            {
                "seq": seq,
                "time": forged.time,
                "identity": forged.identity,
                "rpc": forged.rpc,
                "key_id": "orders",
                "key_version": 1,
                "outcome": "OK",
                "reason": "",
                "request_id": "",
                "peer": "",
                "context_digest": "",
                "item": -1,
                "detail": "",
                "origin": "forged:1",
                "prev_hash": last.hash,
                "hash": chain_hash(seq, forged, "forged:1", last.hash),
            },
        )
        connection.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h"),
            {"s": seq, "h": chain_hash(seq, forged, "forged:1", last.hash)},
        )
    result = client.verify_audit_log()
    assert not result.intact
    assert result.problem_seq == seq and "not sealed by any checkpoint" in result.problem
    # The service will not extend a chain whose head it did not seal (that would seal the
    # forgery): as soon as its writer sees the head, calls fail closed.
    with pytest.raises(kms_client.AuditUnavailable, match="audit log cannot be written"):
        for _ in range(1000):
            client.generate_data_key("orders", CONTEXT)
            time.sleep(0.01)


def test_a_rewritten_stretch_of_the_chain_is_found_by_its_checkpoint(audited):
    """Change a record and recompute every later hash: the chain is consistent again, but it
    no longer matches the HSM-sealed checkpoint."""
    app, client, _ = audited
    previous = _record(app, 2).hash
    for seq in range(3, _last_seq(app) + 1):
        row = _record(app, seq)
        entry = AuditEntry(
            time=row.time,
            identity="rewritten" if seq == 3 else row.identity,
            rpc=row.rpc,
            outcome=row.outcome,
            key_id=row.key_id,
            key_version=row.key_version,
            reason=row.reason,
            request_id=row.request_id,
            peer=row.peer,
            context_digest=row.context_digest,
            item=row.item,
            detail=row.detail,
        )
        digest = chain_hash(seq, entry, row.origin, previous)
        _sql(
            app,
            "UPDATE audit_records SET identity = :i, prev_hash = :p, hash = :h WHERE seq = :s",
            i=entry.identity,
            p=previous,
            h=digest,
            s=seq,
        )
        previous = digest
    result = client.verify_audit_log()
    assert not result.intact and "do not match their checkpoint (rewritten)" in result.problem
    first, last = map(int, result.problem.split()[1].split("-"))  # "records A-B do not match ..."
    assert first <= 3 <= last == result.problem_seq


def test_when_the_chain_cannot_be_written_calls_fail_closed_and_no_record_is_lost(settings):
    """The database refuses audit records: calls go on only while the records wait in the
    journal for less than KMS_AUDIT_MAX_LAG, then fail closed; once the database accepts them
    again, every record journaled meanwhile reaches the chain."""
    from tests.support.fixtures import _running

    app = _running(settings.model_copy(update={"audit_max_lag": timedelta(seconds=0.3)}))
    dialect = app.services.engine.dialect.name
    try:
        with kms_client.KmsClient(app.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client:
            client.create_key("orders")
            _make_audit_unwritable(app, dialect)
            answered = 0
            try:
                deadline = time.monotonic() + 30
                with pytest.raises(kms_client.AuditUnavailable, match="audit log cannot be written"):
                    while time.monotonic() < deadline:
                        client.generate_data_key("orders", CONTEXT)
                        answered += 1
                with pytest.raises(kms_client.Unavailable):
                    client.create_key("another")
            finally:
                _make_audit_writable(app, dialect)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    client.generate_data_key("orders", CONTEXT)
                    break
                except kms_client.Unavailable:
                    time.sleep(0.05)  # the writer is backing off; it retries within two seconds
            issued = [e for e in client.audit_events() if e.rpc == "GenerateDataKey" and e.outcome == "OK"]
            assert len(issued) == answered + 1  # none of the answered calls lost its record
            assert client.verify_audit_log().intact
    finally:
        app.stop(grace=1)


def test_when_the_journal_cannot_be_written_no_result_is_released(sqlite_settings, monkeypatch):
    """The disk fills up: the journal's next file cannot be allocated (journal files are small
    here, so that a next one is needed after a few calls). The call whose records find no room
    is refused and its result withheld; once there is room again calls go on, and every answered
    call has its record in an intact chain."""
    from kms.store import audit_journal
    from tests.support.fixtures import _running

    monkeypatch.setattr(audit_journal, "FILE_BYTES", 4096)
    full = threading.Event()
    fallocate = os.posix_fallocate

    def fallocate_on_a_disk_that_may_be_full(descriptor: int, offset: int, length: int) -> None:
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fallocate(descriptor, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate_on_a_disk_that_may_be_full)
    app = _running(sqlite_settings)
    try:
        with kms_client.KmsClient(app.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client:
            client.create_key("orders")
            full.set()
            answered = 0
            with pytest.raises(kms_client.AuditUnavailable, match="audit log cannot be written"):
                for _ in range(1000):
                    client.generate_data_key("orders", CONTEXT)
                    answered += 1
            full.clear()
            assert client.generate_data_key("orders", CONTEXT).key_id == "orders"
            app.services.audit_log.flush()
            issued = [e for e in client.audit_events() if e.rpc == "GenerateDataKey" and e.outcome == "OK"]
            assert len(issued) == answered + 1
            assert client.verify_audit_log().intact
    finally:
        app.stop(grace=1)


def test_fail_open_lets_calls_go_on_while_the_chain_cannot_be_written_and_loses_no_record(settings, caplog):
    from tests.support.fixtures import _running

    app = _running(settings.model_copy(update={"audit_fail_open": True, "audit_max_lag": timedelta(seconds=0.2)}))
    try:
        dialect = app.services.engine.dialect.name
        with kms_client.KmsClient(app.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client:
            client.create_key("orders")
            _make_audit_unwritable(app, dialect)
            issued = []
            try:
                with caplog.at_level(logging.ERROR, logger="kms.service.recording"):
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and not _logged_instead(caplog):
                        issued.append(client.generate_data_key("orders", CONTEXT).wrapped_key)
                        time.sleep(0.02)
            finally:
                _make_audit_writable(app, dialect)
            assert _logged_instead(caplog)
            deadline = time.monotonic() + 30  # the writer retries with a backoff of up to 2 s
            while not app.services.audit_log.flush(timeout=1) and time.monotonic() < deadline:
                time.sleep(0.1)
            recorded = [e for e in client.audit_events() if e.rpc == "GenerateDataKey"]
            assert len(recorded) == len(issued)  # every call that went on is in the chain after all
            assert client.verify_audit_log().intact
    finally:
        app.stop(grace=1)


def _logged_instead(caplog) -> bool:
    return any("calls go on (fail-open)" in r.getMessage() for r in caplog.records)


def _make_audit_unwritable(app, dialect: str) -> None:
    """As a full disk or a revoked grant would: every insert into the audit table fails."""
    if dialect == "sqlite":
        _sql(
            app, "CREATE TRIGGER audit_full BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    else:
        _sql(
            app,
            "CREATE FUNCTION audit_full() RETURNS trigger AS"
            " $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql",
        )
        _sql(app, "CREATE TRIGGER audit_full BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION audit_full()")


def _make_audit_writable(app, dialect: str) -> None:
    if dialect == "sqlite":
        _sql(app, "DROP TRIGGER audit_full")
    else:
        _sql(app, "DROP TRIGGER audit_full ON audit_records")
        _sql(app, "DROP FUNCTION audit_full()")


def test_no_request_can_produce_a_record_the_log_cannot_store(audited):
    """Caller-supplied text lands in records unvalidated (the key id of a refused call, say):
    too long, or with a NUL that PostgreSQL text cannot hold, it is clipped, never left to
    block the chain (which would fail every later call closed)."""
    import grpc

    from kms_proto.kms.v1 import kms_pb2 as pb
    from kms_proto.kms.v1 import kms_pb2_grpc

    app, client, _ = audited
    with grpc.insecure_channel(app.target) as channel:
        stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
        for key_id in ("x" * 65, "a\x00b", "é" * 10_000):
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetKey(pb.GetKeyRequest(key_id=key_id), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    app.services.recorder.flush_repeats(everything=True)  # the repeats' summary, at once
    assert app.services.audit_log.flush(timeout=10)
    refused = [e for e in client.audit_events() if e.rpc == "GetKey"]
    # The first refusal in full; the two identical ones after it folded into a summary.
    assert refused[-2].key_id == "x" * 64
    assert refused[-1].key_id == "" and refused[-1].detail.startswith("2 more like this")
    assert "a\ufffdb" in refused[-1].detail and "é" * 64 in refused[-1].detail and "é" * 65 not in refused[-1].detail
    assert client.get_key("orders").key_id == "orders"  # the log still takes records
    assert client.verify_audit_log().intact
