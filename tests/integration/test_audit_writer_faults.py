"""The audit writer process fails closed whatever stops it, on SQLite and PostgreSQL, and recovers
without losing or repeating a record. The server runs in this process; its audit writer is the
real subprocess (kms.audit_writer), so every fault is made from outside it, as an operator or a
crash would make it:

- Writes that hang (the test holds the audit table: PostgreSQL ``LOCK TABLE ... ACCESS
  EXCLUSIVE``, SQLite a write transaction): calls are answered while the oldest record not yet
  chained is younger than KMS_AUDIT_MAX_LAG, then fail UNAVAILABLE (AuditUnavailable); once the
  lock is gone every journaled record reaches the chain exactly once.
- A writer killed after its commit and before its report (crash point "audit.after_chain"): the
  next writer finds those records in the chain and does not chain them again. Only that one
  writer run crashes: the next one starts without the crash point, so what is tested is one
  crash, not a crash loop.
- A change attempted while the chain cannot be written is either refused before it happens
  (past the lag bound) or answered and recorded once the chain recovers (within it).

The lag is measured on a hand-moved monotonic clock, so "older than the bound" is a step of the
test, not a wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from sqlalchemy import text

import kms.app
from kms.audit_writer import WriterProcess
from kms.store.audit_journal import FileAuditJournal
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc
from tests.support.attack import ManualMonotonic, reason, refused, start

MAX_LAG = 2.0
CRASH_POINT = "audit.after_chain"


@pytest.fixture
def journaled(monkeypatch) -> list[str]:
    """The origin of every record the server journals, in order (the journal's documented
    form: <the file's hex id>:<line number>)."""
    origins: list[str] = []
    append = FileAuditJournal.append

    def recording(self, entries):
        name, last = append(self, entries)
        file_id = Path(name).stem.rpartition("-")[2]
        origins.extend(f"{file_id}:{line}" for line in range(last - len(entries) + 1, last + 1))
        return name, last

    monkeypatch.setattr(FileAuditJournal, "append", recording)
    return origins


@pytest.fixture
def writers(monkeypatch) -> list[WriterProcess]:
    """The audit writer the server starts (one per journal), for its pid and restart count."""
    made: list[WriterProcess] = []

    def making(*args, **kwargs) -> WriterProcess:
        writer = WriterProcess(*args, **kwargs)
        made.append(writer)
        return writer

    monkeypatch.setattr(kms.app, "WriterProcess", making)
    return made


@pytest.fixture
def lag_clock() -> ManualMonotonic:
    return ManualMonotonic()


@pytest.fixture
def app(settings, monkeypatch, lag_clock, journaled, writers):
    # The writer subprocess inherits this process's environment when it is started: no crash
    # point unless a test sets one for exactly one writer run.
    monkeypatch.delenv("KMS_CRASH_AT", raising=False)
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
        self.policy = kms_pb2_grpc.PolicyServiceStub(self.channel)
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
    assert len(origins) == len(set(origins)), "a record chained twice"
    assert sorted(origins) == sorted(journaled), "journaled records missing from the chain, or records from nowhere"
    assert sorted(issued) == sorted(caller.answered), "an answered call without exactly one record"
    verified = caller.audit.VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=60)
    assert verified.intact, verified.problem


@contextlib.contextmanager
def _audit_table_held(app) -> Iterator[Callable[[], None]]:
    """Another connection holds the audit table, so the writer's statements wait on it (they do
    not fail). Yields a function that waits until the writer is seen waiting, where the database
    shows it (PostgreSQL: an ungranted lock on the table; SQLite shows no waiters, and its writer
    waits in BEGIN IMMEDIATE for up to its busy timeout, retrying after that)."""
    url = app.services.engine.url
    if url.get_backend_name() == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as holder:
            holder.execute("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE")

            def writer_waits() -> None:
                pause = threading.Event()
                for _ in range(600):
                    waiting = holder.execute(
                        "SELECT count(*) FROM pg_locks JOIN pg_class ON pg_class.oid = pg_locks.relation"
                        " WHERE pg_class.relname = 'audit_records' AND NOT pg_locks.granted"
                    ).fetchone()
                    if waiting and waiting[0]:
                        return
                    pause.wait(0.05)
                raise AssertionError("the audit writer never tried to chain")

            try:
                yield writer_waits
            finally:
                holder.rollback()
    else:
        holder = sqlite3.connect(url.database, isolation_level=None, timeout=30)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock: the writer's BEGIN IMMEDIATE waits
            try:
                yield lambda: None
            finally:
                holder.execute("ROLLBACK")
        finally:
            holder.close()


def test_when_audit_writes_hang_calls_fail_closed_after_the_lag_bound_and_recover_with_nothing_lost_or_repeated(
    app, caller, lag_clock, journaled
):
    caller.generate()
    _chained(app)
    with _audit_table_held(app) as writer_waits:
        caller.generate()
        writer_waits()
        lag_clock.advance(MAX_LAG - 0.5)
        caller.generate()  # the oldest unchained record is younger than the bound: still answered
        assert app.health.run_once()
        lag_clock.advance(1)
        error = refused(caller.generate)
        assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "AuditUnavailable")
        assert "audit log cannot be written" in error.details()
        assert not app.health.run_once() and "audit" in app.health.problems
    _chained(app)
    caller.generate()
    _every_record_chained_exactly_once(app, caller, journaled)
    assert app.health.run_once()


def _wait_until(predicate, what: str, attempts: int = 600) -> None:
    pause = threading.Event()
    for _ in range(attempts):
        if predicate():
            return
        pause.wait(0.05)
    raise AssertionError(f"never: {what}")


def test_a_writer_killed_after_its_commit_and_before_its_report_neither_loses_nor_repeats_a_record(
    app, caller, journaled, writers, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="kms.audit_writer.process")
    caller.generate()
    _chained(app)
    (writer,) = writers
    with _audit_table_held(app) as writer_waits:
        # Records the running writer cannot chain yet...
        for _ in range(5):
            caller.generate()
        writer_waits()
        # ...and a writer that has not committed them is killed; the one started in its place,
        # and only that one, carries the crash point (the environment at its start).
        monkeypatch.setenv("KMS_CRASH_AT", CRASH_POINT)
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait_until(lambda: writer.pid not in (None, first), "a writer started in place of the killed one")
        monkeypatch.delenv("KMS_CRASH_AT")
        crashing = writer.pid
    # With the lock gone, the crashing writer's first batch holds all five records (they were
    # journaled before it started): it commits them and dies at the crash point before it can
    # report them. The next writer finds them in the chain.
    _wait_until(lambda: writer.pid not in (None, crashing), "a writer started in place of the crashed one")
    _chained(app)
    for _ in range(5):
        caller.generate()
    _every_record_chained_exactly_once(app, caller, journaled)
    exits = [
        r.fields["exit_code"] for r in caplog.records if r.getMessage() == "audit writer exited; starting it again"
    ]
    assert exits == [-signal.SIGKILL, -signal.SIGKILL], "the killed writer and the crashed one, and no other"
    assert writer.restarts == 2


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


def _changes(caller: Caller, key_id: str, principal: str, rotated_to: int) -> dict:
    """Three changes, each as (attempt, whether it happened, whether its record is chained)."""
    return {
        "CreateKey": (
            lambda: caller.keys.CreateKey(pb.CreateKeyRequest(key_id=key_id), timeout=10),
            lambda app: key_id in {k.key_id for k in app.services.repository.list_keys(100, None)},
            f"rpc = 'CreateKey' AND key_id = '{key_id}'",
        ),
        "RotateKey": (
            lambda: caller.keys.RotateKey(pb.RotateKeyRequest(key_id="orders"), timeout=10),
            lambda app: app.services.repository.get("orders").primary_version >= rotated_to,
            f"rpc = 'RotateKey' AND key_id = 'orders' AND key_version = {rotated_to}",
        ),
        "GrantPermissions": (
            lambda: caller.policy.GrantPermissions(
                pb.GrantPermissionsRequest(principal=principal, resource="*", permissions=["decrypt"]), timeout=10
            ),
            lambda app: any(g.principal == principal for g in app.services.policy_cache.all_grants()),
            f"rpc = 'GrantPermissions' AND detail LIKE '{principal} %'",
        ),
    }


def test_a_change_attempted_while_the_audit_log_is_unavailable_is_refused_before_it_happens_or_recorded(
    app, caller, lag_clock
):
    within = _changes(caller, "early", "spiffe://kms.dev/early", rotated_to=2)
    past = _changes(caller, "sneaky", "spiffe://kms.dev/sneaky", rotated_to=3)
    with _audit_inserts_fail(app):
        caller.generate()  # journaled; the writer cannot chain it
        for attempt, _, _ in within.values():
            attempt()  # within the lag bound: answered, its record waits in the journal
        lag_clock.advance(MAX_LAG + 1)
        for rpc, (attempt, _, _) in past.items():
            error = refused(attempt)
            assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "AuditUnavailable"), rpc
    _chained(app)

    outcome = {
        (when, rpc): (happened(app), _recorded(app, where))
        for when, changes in (("within", within), ("past", past))
        for rpc, (_, happened, where) in changes.items()
    }
    unrecorded = sorted(change for change, (happened, recorded) in outcome.items() if happened and not recorded)
    assert not unrecorded, f"changed without a record while the audit log was unavailable: {unrecorded}"
    assert all(outcome["within", rpc][0] for rpc in within), outcome  # answered, so they happened
    assert not any(outcome["past", rpc][0] for rpc in past), outcome  # refused before they happened


def _recorded(app, where: str) -> bool:
    with app.services.engine.connect() as connection:
        query = text(f"SELECT count(*) FROM audit_records WHERE outcome = 'OK' AND {where}")
        return bool(connection.execute(query).scalar())
