"""SubjectRepository on SQLAlchemy: subjects' wrapped keys and the receipts of erasures.

A first use is one INSERT ... SELECT ... WHERE NOT EXISTS (an erasure) ON CONFLICT DO NOTHING:
two replicas racing on a new subject agree on the row that won, and a subject whose erasure is
recorded is not given a key again. An erasure deletes the row, records the receipt and appends
its ledger entry in one transaction holding the key's lock (the lock rotations take too, so the
version that last wrapped the deleted key is the one it had). Carrying rows onto a new version is
compare-and-set per row, so an erasure (or another replica carrying) meanwhile always wins.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from kms.crashpoints import crash_point
from kms.domain.ledger import ERASURE, Change, LedgerEntry, erasure_digest, erasure_name
from kms.domain.privacy import Erasure, SubjectKey
from kms.store.database import WRITE_OPTION
from kms.store.ledger import SqlLedger
from kms.store.repository import _advisory_lock_id, database_errors
from kms.store.tables import AuditRecordRow, ErasureRow, KeyRow, SubjectKeyRow

_IV = 12
_SUBJECTS = SubjectKeyRow.__table__
_ERASURES = ErasureRow.__table__
_KEYS = KeyRow.__table__
_AUDIT = AuditRecordRow.__table__
_RECEIPT_WINDOW = timedelta(minutes=10)


class SqlSubjectRepository:
    def __init__(self, engine: Engine, ledger: SqlLedger) -> None:
        self._engine = engine
        self._ledger = ledger
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(_SUBJECTS)

    # -- subjects --------------------------------------------------------------------------

    def get(self, key_id: str, subject_digest: str) -> SubjectKey | None:
        query = select(_SUBJECTS).where(
            _SUBJECTS.c.key_id == key_id, _SUBJECTS.c.subject_digest == bytes.fromhex(subject_digest)
        )
        with database_errors(), self._engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else _subject(row)

    def add(self, subject: SubjectKey) -> SubjectKey | None:
        digest = bytes.fromhex(subject.subject_digest)
        erased = exists().where(
            _ERASURES.c.key_id == subject.key_id, _ERASURES.c.subject_digest == subject.subject_digest
        )
        values = select(
            literal(subject.key_id, _SUBJECTS.c.key_id.type),
            literal(digest, _SUBJECTS.c.subject_digest.type),
            literal(subject.version, _SUBJECTS.c.version.type),
            literal(subject.iv + subject.sealed, _SUBJECTS.c.wrapped.type),
            literal(subject.create_time, _SUBJECTS.c.create_time.type),
        ).where(~erased)
        statement = self._insert.from_select(
            ["key_id", "subject_digest", "version", "wrapped", "create_time"], values
        ).on_conflict_do_nothing(index_elements=["key_id", "subject_digest"])
        # SQLAlchemy keeps an INSERT's rowcount only when asked (psycopg reports -1 otherwise),
        # and without it every first use would read its own row back.
        statement = statement.execution_options(preserve_rowcount=True)
        with database_errors(), self._write() as connection:
            inserted = connection.execute(statement).rowcount
        if inserted == 1:
            return subject
        return self.get(subject.key_id, subject.subject_digest)  # the winner, or None: erased

    def wrapped_below(
        self, key_id: str, version: int, limit: int, after: tuple[int, str] | None = None
    ) -> list[SubjectKey]:
        query = select(_SUBJECTS).where(_SUBJECTS.c.key_id == key_id, _SUBJECTS.c.version < version)
        if after is not None:
            query = query.where(
                tuple_(_SUBJECTS.c.version, _SUBJECTS.c.subject_digest) > (after[0], bytes.fromhex(after[1]))
            )
        query = query.order_by(_SUBJECTS.c.version, _SUBJECTS.c.subject_digest).limit(limit)
        with database_errors(), self._engine.connect() as connection:
            return [_subject(row) for row in connection.execute(query)]

    def wraps_any(self, key_id: str, version: int) -> bool:
        query = select(literal(1)).where(exists().where(_SUBJECTS.c.key_id == key_id, _SUBJECTS.c.version == version))
        with database_errors(), self._engine.connect() as connection:
            return connection.execute(query).scalar() is not None

    def carry(self, moves: Sequence[tuple[SubjectKey, SubjectKey]]) -> int:
        if not moves:
            return 0
        # One statement executed for the whole batch (psycopg pipelines it): a statement built and
        # sent per row cost five times the HSM's re-wrap of that row.
        statement = (
            update(_SUBJECTS)
            .where(*_SAME_ROW)
            .values(version=bindparam("new_version"), wrapped=bindparam("new_wrapped"))
            .execution_options(preserve_rowcount=True)
        )
        parameters = [
            {**_row_parameters(old), "new_version": new.version, "new_wrapped": new.iv + new.sealed}
            for old, new in moves
        ]
        with database_errors(), self._write() as connection:
            carried = _rows_matched(connection, statement, parameters)
            crash_point("carry_subjects.before_commit")
        return carried

    def remove(self, subjects: Sequence[SubjectKey]) -> int:
        if not subjects:
            return 0
        statement = delete(_SUBJECTS).where(*_SAME_ROW).execution_options(preserve_rowcount=True)
        with database_errors(), self._write() as connection:
            return _rows_matched(connection, statement, [_row_parameters(subject) for subject in subjects])

    def privacy_keys(self) -> list[str]:
        query = (
            select(_KEYS.c.key_id)
            .where(or_(_KEYS.c.subject_field != "", _KEYS.c.retention_period_seconds.is_not(None)))
            .order_by(_KEYS.c.key_id)
        )
        with database_errors(), self._engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def count(self, key_id: str) -> int:
        """Subjects of ``key_id`` with a key (benchmarks and operators)."""
        query = select(func.count()).select_from(_SUBJECTS).where(_SUBJECTS.c.key_id == key_id)
        with database_errors(), self._engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    # -- erasures --------------------------------------------------------------------------

    def erase(
        self, key_id: str, subject_digest: str, erased_by: str, now: datetime, primary_version: int
    ) -> tuple[Erasure, list[LedgerEntry]]:
        digest = bytes.fromhex(subject_digest)
        with database_errors(), self._write() as connection:
            _lock_key(connection, key_id)
            recorded = connection.execute(
                select(_ERASURES).where(_ERASURES.c.key_id == key_id, _ERASURES.c.subject_digest == subject_digest)
            ).one_or_none()
            if recorded is not None:
                return _erasure(recorded), []
            row = connection.execute(
                _for_update(
                    connection,
                    select(_SUBJECTS.c.version).where(
                        _SUBJECTS.c.key_id == key_id, _SUBJECTS.c.subject_digest == digest
                    ),
                )
            ).one_or_none()
            if row is None:
                stored_primary = connection.execute(
                    select(_KEYS.c.primary_version).where(_KEYS.c.key_id == key_id)
                ).scalar()
                final_after = max(primary_version, stored_primary or 0)
            else:
                final_after = row.version
            erasure = Erasure(key_id, subject_digest, now, erased_by, row is not None, final_after)
            connection.execute(
                delete(_SUBJECTS).where(_SUBJECTS.c.key_id == key_id, _SUBJECTS.c.subject_digest == digest)
            )
            crash_point("erase_subject.after_delete")
            connection.execute(
                insert(_ERASURES).values(
                    key_id=key_id,
                    subject_digest=subject_digest,
                    erase_time=now,
                    erased_by=erased_by,
                    subject_known=erasure.subject_known,
                    final_after_version=final_after,
                )
            )
            entries = self._ledger.append(
                connection, [Change(ERASURE, erasure_name(key_id, subject_digest), 1, erasure_digest(erasure))]
            )
            crash_point("erase_subject.before_commit")
        return erasure, entries

    def erasure(self, key_id: str, subject_digest: str) -> Erasure | None:
        query = select(_ERASURES).where(_ERASURES.c.key_id == key_id, _ERASURES.c.subject_digest == subject_digest)
        with database_errors(), self._engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return None if row is None else _erasure(row)

    def erasures(self, key_id: str, limit: int, before: tuple[datetime, str] | None) -> list[Erasure]:
        query = select(_ERASURES).where(_ERASURES.c.key_id == key_id)
        if before is not None:
            time, digest = before
            query = query.where(
                or_(
                    _ERASURES.c.erase_time < time,
                    and_(_ERASURES.c.erase_time == time, _ERASURES.c.subject_digest < digest),
                )
            )
        query = query.order_by(_ERASURES.c.erase_time.desc(), _ERASURES.c.subject_digest.desc()).limit(limit)
        with database_errors(), self._engine.connect() as connection:
            return [_erasure(row) for row in connection.execute(query)]

    def receipt_seq(self, key_id: str, subject_digest: str, erase_time: datetime) -> int:
        """The seq of the EraseSubject audit record of an erasure (recorded as the call ended,
        so within minutes of its time), 0 until it is chained."""
        query = (
            select(_AUDIT.c.seq)
            .where(
                _AUDIT.c.time >= erase_time,
                _AUDIT.c.time < erase_time + _RECEIPT_WINDOW,
                _AUDIT.c.key_id == key_id,
                _AUDIT.c.rpc == "EraseSubject",
                _AUDIT.c.outcome == "OK",
                _AUDIT.c.detail.like(f"subject {subject_digest} %"),
            )
            .order_by(_AUDIT.c.seq)
            .limit(1)
        )
        with database_errors(), self._engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    def all_erasures(self) -> Iterator[Erasure]:
        after: tuple[str, str] | None = None
        while True:
            query = select(_ERASURES).order_by(_ERASURES.c.key_id, _ERASURES.c.subject_digest).limit(1000)
            if after is not None:
                query = query.where(tuple_(_ERASURES.c.key_id, _ERASURES.c.subject_digest) > after)
            with database_errors(), self._engine.connect() as connection:
                page = [_erasure(row) for row in connection.execute(query)]
            yield from page
            if len(page) < 1000:
                return
            after = (page[-1].key_id, page[-1].subject_digest)

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                yield connection


def _lock_key(connection: Connection, key_id: str) -> None:
    """The key's write lock (kms.store.repository): on SQLite, BEGIN IMMEDIATE holds it already."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_advisory_lock_id(key_id))))


def _for_update(connection: Connection, query):  # noqa: ANN001, ANN202 - a Select
    return query.with_for_update() if connection.dialect.name == "postgresql" else query


# A row exactly as it was read (compare-and-set), for statements executed once per batch.
_SAME_ROW = (
    _SUBJECTS.c.key_id == bindparam("old_key_id"),
    _SUBJECTS.c.subject_digest == bindparam("old_digest"),
    _SUBJECTS.c.version == bindparam("old_version"),
    _SUBJECTS.c.wrapped == bindparam("old_wrapped"),
)


def _row_parameters(subject: SubjectKey) -> dict[str, object]:
    return {
        "old_key_id": subject.key_id,
        "old_digest": bytes.fromhex(subject.subject_digest),
        "old_version": subject.version,
        "old_wrapped": subject.iv + subject.sealed,
    }


def _rows_matched(connection: Connection, statement: Executable, parameters: list[dict[str, object]]) -> int:
    """Rows an UPDATE or DELETE executed once per parameter set changed, in all. Both drivers
    report the sum for executemany (SQLAlchemy's supports_sane_multi_rowcount); should one not,
    the rows are executed one by one instead, so that compare-and-set is never miscounted."""
    if connection.dialect.supports_sane_multi_rowcount:
        return connection.execute(statement, parameters).rowcount
    return sum(connection.execute(statement, row).rowcount for row in parameters)


def _subject(row: Row) -> SubjectKey:
    wrapped = bytes(row.wrapped)
    return SubjectKey(
        key_id=row.key_id,
        subject_digest=bytes(row.subject_digest).hex(),
        version=row.version,
        iv=wrapped[:_IV],
        sealed=wrapped[_IV:],
        create_time=row.create_time,
    )


def _erasure(row: Row) -> Erasure:
    return Erasure(
        key_id=row.key_id,
        subject_digest=row.subject_digest,
        erase_time=row.erase_time,
        erased_by=row.erased_by,
        subject_known=bool(row.subject_known),
        final_after_version=row.final_after_version,
    )
