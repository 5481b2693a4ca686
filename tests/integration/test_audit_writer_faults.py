"""The audit writer fails closed whatever stops it, on SQLite and PostgreSQL, and recovers without
losing or repeating a record.

- Writes that hang (another connection holds the audit table: PostgreSQL ``LOCK TABLE ... ACCESS
  EXCLUSIVE``, SQLite a write transaction): calls go on while the oldest record not yet chained is
  younger than KMS_AUDIT_MAX_LAG, then fail UNAVAILABLE (AuditUnavailable); once the lock is gone
  every journaled record reaches the chain exactly once.
- A commit whose acknowledgement is lost (the append commits, then raises): the writer is not
  wedged, and the records are not chained twice (replay asks which origins the chain holds).

The lag is measured on a hand-moved monotonic clock, so "older than the bound" is a step of the
test, not a wait.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import grpc
import psycopg
import pytest
from sqlalchemy import text

from kms.errors import DatabaseUnavailable
from kms.store.audit import SqlAuditRepository
from kms.store.audit_journal import FileAuditJournal
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc
from tests.support.attack import ManualMonotonic, reason, refused, start

MAX_LAG = 2.0


@pytest.fixture
def journaled(monkeypatch) -> list[str]:
    """Every origin the journal hands out, in order."""
    origins: list[str] = []
    append = FileAuditJournal.append

    def recording(self, entries):
        made = append(self, entries)
        origins.extend(made)
        return made

    monkeypatch.setattr(FileAuditJournal, "append", recording)
    return origins


@pytest.fixture
def lag_clock() -> ManualMonotonic:
    return ManualMonotonic()


@pytest.fixture
def app(settings, monkeypatch, lag_clock, journaled):
    started = start(
        settings.model_copy(update={"audit_max_lag": timedelta(seconds=MAX_LAG)}),
        monkeypatch,
        audit_monotonic=lag_clock,
    )
    yield started
    started.stop(grace=1)


class Caller:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.keys = kms_pb2_grpc.KeyManagementServiceStub(self.channel)
        self.audit = kms_pb2_grpc.AuditServiceStub(self.channel)
        self.answered: list[str] = []

    def generate(self) -> pb.GenerateDataKeyResponse:
        request_id = f"w-{uuid.uuid4().hex[:12]}"
        response = self.keys.GenerateDataKey(
            pb.GenerateDataKeyRequest(key_id="orders"), timeout=30, metadata=(("x-request-id", request_id),)
        )
        self.answered.append(request_id)
        return response


@pytest.fixture
def caller(app):
    made = Caller(app.target)
    made.keys.CreateKey(pb.CreateKeyRequest(key_id="orders"), timeout=10)
    yield made
    made.channel.close()


def _chained(app, attempts: int = 400) -> None:
    """Until everything journaled is in the chain (flush answers at once while the writer is
    between failed attempts, so ask again)."""
    pause = threading.Event()
    for _ in range(attempts):
        if app.services.audit_log.flush(timeout=5):
            return
        pause.wait(0.05)
    raise AssertionError("the audit writer never caught up")


def _every_record_chained_exactly_once(app, caller: Caller, journaled: list[str]) -> None:
    _chained(app)
    with app.services.engine.connect() as connection:
        origins = connection.execute(text("SELECT origin FROM audit_records")).scalars().all()
        issued = (
            connection.execute(
                text("SELECT request_id FROM audit_records WHERE rpc = 'GenerateDataKey' AND outcome = 'OK'")
            )
            .scalars()
            .all()
        )
    assert len(origins) == len(set(origins))
    assert set(journaled) <= set(origins), "journaled records missing from the chain"
    assert sorted(issued) == sorted(caller.answered), "an answered call without exactly one record"
    verified = caller.audit.VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=60)
    assert verified.intact, verified.problem


@contextlib.contextmanager
def _audit_table_held(app) -> Iterator[None]:
    """Another connection holds the audit table, so the writer's insert waits (it does not fail)."""
    url = app.services.engine.url
    if url.get_backend_name() == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as holder:
            holder.execute("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                holder.rollback()
    else:
        holder = sqlite3.connect(url.database, isolation_level=None, timeout=30)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock: the writer's BEGIN IMMEDIATE waits
            try:
                yield
            finally:
                holder.execute("ROLLBACK")
        finally:
            holder.close()


def test_when_audit_writes_hang_calls_fail_closed_after_the_lag_bound_and_recover_with_nothing_lost_or_repeated(
    app, caller, lag_clock, journaled, monkeypatch
):
    caller.generate()
    _chained(app)
    entered = threading.Event()
    append = SqlAuditRepository.append

    def watched(self, entries, sealer, now):
        entered.set()
        return append(self, entries, sealer, now)

    monkeypatch.setattr(SqlAuditRepository, "append", watched)
    with _audit_table_held(app):
        caller.generate()
        assert entered.wait(30), "the writer never tried to chain"  # and now waits on the lock
        lag_clock.advance(MAX_LAG - 0.5)
        caller.generate()  # the oldest unchained record is younger than the bound: still answered
        lag_clock.advance(1)
        error = refused(caller.generate)
        assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "AuditUnavailable")
        assert "audit log cannot be written" in error.details()
        assert not app.health.run_once() and "audit" in app.health.problems
    _chained(app)
    caller.generate()
    _every_record_chained_exactly_once(app, caller, journaled)
    assert app.health.run_once()


@pytest.mark.parametrize(
    "lost",
    [DatabaseUnavailable("connection lost"), ConnectionResetError(104, "reset")],
    ids=["service error", "driver error"],
)
def test_a_commit_whose_acknowledgement_is_lost_neither_wedges_the_writer_nor_chains_records_twice(
    app, caller, journaled, monkeypatch, lost
):
    _chained(app)
    fired = threading.Event()
    sent: list[str] = []
    append = SqlAuditRepository.append

    def commit_then_fail(self, entries, sealer, now):
        records = append(self, entries, sealer, now)
        sent.extend(origin for origin, _ in entries)
        if not fired.is_set():
            fired.set()
            raise lost
        return records

    monkeypatch.setattr(SqlAuditRepository, "append", commit_then_fail)
    for _ in range(5):
        caller.generate()
    assert fired.wait(30)
    _chained(app)
    for _ in range(5):
        caller.generate()
    _every_record_chained_exactly_once(app, caller, journaled)
    assert sent and len(sent) == len(set(sent)), "a committed record was sent to the chain again"


@contextlib.contextmanager
def _audit_inserts_fail(app) -> Iterator[None]:
    """As a full disk or a revoked privilege would: every insert into the audit table fails."""
    _chained(app)
    dialect = app.services.engine.dialect.name
    statements = (
        ["CREATE TRIGGER audit_full BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'disk full'); END"]
        if dialect == "sqlite"
        else [
            "CREATE FUNCTION audit_full() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ "
            "LANGUAGE plpgsql",
            "CREATE TRIGGER audit_full BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION audit_full()",
        ]
    )
    with app.services.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with app.services.engine.begin() as connection:
            connection.execute(text("DROP TRIGGER audit_full" + ("" if dialect == "sqlite" else " ON audit_records")))
            if dialect != "sqlite":
                connection.execute(text("DROP FUNCTION audit_full()"))


def test_a_change_attempted_while_the_audit_log_is_unavailable_is_either_refused_before_it_happens_or_recorded(
    app, caller, lag_clock
):
    from kms_proto.kms.v1 import kms_pb2_grpc as grpc_stubs

    policy = grpc_stubs.PolicyServiceStub(caller.channel)
    with _audit_inserts_fail(app):
        caller.generate()  # journaled; the writer cannot chain it
        lag_clock.advance(MAX_LAG + 1)
        attempts = {
            "CreateKey": lambda: caller.keys.CreateKey(pb.CreateKeyRequest(key_id="sneaky"), timeout=10),
            "RotateKey": lambda: caller.keys.RotateKey(pb.RotateKeyRequest(key_id="orders"), timeout=10),
            "GrantPermissions": lambda: policy.GrantPermissions(
                pb.GrantPermissionsRequest(principal="spiffe://kms.dev/sneaky", resource="*", permissions=["decrypt"]),
                timeout=10,
            ),
        }
        for rpc, attempt in attempts.items():
            error = refused(attempt)
            assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "AuditUnavailable"), rpc
    _chained(app)

    repository, grants = app.services.repository, app.services.policy_cache.all_grants()
    changed = {
        "CreateKey": "sneaky" in {k.key_id for k in repository.list_keys(100, None)},
        "RotateKey": repository.get("orders").primary_version == 2,
        "GrantPermissions": any(g.principal == "spiffe://kms.dev/sneaky" for g in grants),
    }
    recorded = {
        "CreateKey": _recorded(app, "rpc = 'CreateKey' AND key_id = 'sneaky'"),
        "RotateKey": _recorded(app, "rpc = 'RotateKey' AND key_id = 'orders' AND key_version = 2"),
        "GrantPermissions": _recorded(app, "rpc = 'GrantPermissions' AND detail LIKE 'spiffe://kms.dev/sneaky %'"),
    }
    unrecorded = sorted(rpc for rpc in attempts if changed[rpc] and not recorded[rpc])
    assert not unrecorded, f"changed without a record while the audit log was unavailable: {unrecorded}"


def _recorded(app, where: str) -> bool:
    with app.services.engine.connect() as connection:
        query = text(f"SELECT count(*) FROM audit_records WHERE outcome = 'OK' AND {where}")
        return bool(connection.execute(query).scalar())
