"""The audit log's storage: append a batch to the one chain, read records back in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from kms.domain.audit import AuditEntry, AuditRecord, Checkpoint, checkpoint_message, clipped, extend
from kms.errors import AuditTampered
from kms.ports import AuditSeal
from kms.store.database import WRITE_OPTION
from kms.store.repository import database_errors
from kms.store.tables import AuditCheckpointRow, AuditRecordRow

_PAGE = 2000


class _DriverSql:
    """The append path's statements in the driver's own parameter style."""

    _COLUMNS = (
        "seq",
        "time",
        "identity",
        "rpc",
        "key_id",
        "key_version",
        "outcome",
        "reason",
        "request_id",
        "peer",
        "context_digest",
        "item",
        "detail",
        "origin",
        "prev_hash",
        "hash",
    )

    def __init__(self, engine: Engine) -> None:
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._sqlite = engine.dialect.name == "sqlite"
        lock = "" if self._sqlite else " FOR UPDATE"  # SQLite's BEGIN IMMEDIATE has locked already
        self.lock_head = f"SELECT seq, hash FROM audit_head WHERE id = 1{lock}"
        self.checkpoint_at = f"SELECT hash, mac FROM audit_checkpoints WHERE seq = {mark}"
        self.insert_record = (
            f"INSERT INTO audit_records ({', '.join(self._COLUMNS)}) VALUES ({', '.join([mark] * len(self._COLUMNS))})"
        )
        self.insert_checkpoint = (
            f"INSERT INTO audit_checkpoints (seq, hash, time, mac) VALUES ({mark}, {mark}, {mark}, {mark})"
        )
        self.update_head = f"UPDATE audit_head SET seq = {mark}, hash = {mark} WHERE id = 1"

    def time(self, value: datetime) -> object:
        # As kms.store.types.UtcDateTime stores it: naive UTC text on SQLite, aware on PostgreSQL.
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") if self._sqlite else value

    def record_row(self, record: AuditRecord) -> tuple:
        e = record.entry
        return (
            record.seq,
            self.time(e.time),
            e.identity,
            e.rpc,
            e.key_id,
            e.key_version,
            e.outcome,
            e.reason,
            e.request_id,
            e.peer,
            e.context_digest,
            e.item,
            e.detail,
            record.origin,
            record.prev_hash,
            record.hash,
        )


class SqlAuditRepository:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sql = _DriverSql(engine)
        self._last_written: tuple[int, str] | None = None

    def append(self, entries: Sequence[tuple[str, AuditEntry]], sealer: AuditSeal, now: datetime) -> list[AuditRecord]:
        """Appends ``entries`` after the current head and seals them with a checkpoint, in one
        transaction that holds the head's lock (so concurrent replicas extend one chain).

        The head must be the one a checkpoint sealed: otherwise someone wrote records outside
        the service, and extending the chain would seal them. Raises AuditTampered. (A head this
        repository wrote itself needs no second look.)

        This is the hot path of every audited call, so it speaks the driver's SQL directly."""
        sql = self._sql
        with database_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                head_seq, head_hash = connection.exec_driver_sql(sql.lock_head).one()
                if head_seq and (head_seq, head_hash) != self._last_written:
                    sealed = connection.exec_driver_sql(sql.checkpoint_at, (head_seq,)).one_or_none()
                    if (
                        sealed is None
                        or sealed[0] != head_hash
                        or not sealer.check(checkpoint_message(head_seq, head_hash), sealed[1])
                    ):
                        raise AuditTampered(head_seq)
                # Clipped again: a journal written by an older build may hold longer values.
                records = extend(head_seq, head_hash, [(origin, clipped(entry)) for origin, entry in entries])
                connection.exec_driver_sql(sql.insert_record, [sql.record_row(r) for r in records])
                last = records[-1]
                mac = sealer.seal(checkpoint_message(last.seq, last.hash))
                connection.exec_driver_sql(sql.insert_checkpoint, (last.seq, last.hash, sql.time(now), mac))
                connection.exec_driver_sql(sql.update_head, (last.seq, last.hash))
        self._last_written = (last.seq, last.hash)
        return records

    def records(
        self,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: str | None = None,
        identity: str | None = None,
        context_digest: str | None = None,
        through_seq: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Records in seq order, read in pages so any size streams in bounded memory."""
        table = AuditRecordRow.__table__
        while True:
            query = select(table).where(table.c.seq > after_seq).order_by(table.c.seq).limit(_PAGE)
            if through_seq is not None:
                query = query.where(table.c.seq <= through_seq)
            if since is not None:
                query = query.where(table.c.time >= since)
            if until is not None:
                query = query.where(table.c.time < until)
            if key_id is not None:
                query = query.where(table.c.key_id == key_id)
            if identity is not None:
                query = query.where(table.c.identity == identity)
            if context_digest is not None:
                query = query.where(table.c.context_digest == context_digest)
            with database_errors(), self._engine.connect() as connection:
                rows = connection.execute(query).all()
            for row in rows:
                yield _record(row)
            if len(rows) < _PAGE:
                return
            after_seq = rows[-1].seq

    def recorded_origins(self, origins: Sequence[str]) -> set[str]:
        """Which of ``origins`` are in the chain already."""
        table = AuditRecordRow.__table__
        found: set[str] = set()
        with database_errors(), self._engine.connect() as connection:
            for start in range(0, len(origins), 500):
                chunk = list(origins[start : start + 500])
                found.update(connection.execute(select(table.c.origin).where(table.c.origin.in_(chunk))).scalars())
        return found

    def checkpoints(self, *, through_seq: int | None = None) -> Iterator[Checkpoint]:
        table = AuditCheckpointRow.__table__
        after = -1
        while True:
            query = select(table).where(table.c.seq > after).order_by(table.c.seq).limit(_PAGE)
            if through_seq is not None:
                query = query.where(table.c.seq <= through_seq)
            with database_errors(), self._engine.connect() as connection:
                rows = connection.execute(query).all()
            for row in rows:
                yield Checkpoint(row.seq, row.hash, row.time, row.mac)
            if len(rows) < _PAGE:
                return
            after = rows[-1].seq

    def last_seq(self) -> int:
        # One statement, so both maxima are of one instant: an append commits its records and
        # their checkpoint together, and a walk bounded here sees all of an append or none of it.
        records, checkpoints = AuditRecordRow.__table__, AuditCheckpointRow.__table__
        query = select(
            select(func.max(records.c.seq)).scalar_subquery(), select(func.max(checkpoints.c.seq)).scalar_subquery()
        )
        with database_errors(), self._engine.connect() as connection:
            highest_record, highest_checkpoint = connection.execute(query).one()
        return max(highest_record or 0, highest_checkpoint or 0)


def _record(row) -> AuditRecord:  # noqa: ANN001 - a SQLAlchemy Row
    entry = AuditEntry(
        time=row.time,
        identity=row.identity,
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
    return AuditRecord(row.seq, entry, row.origin, row.prev_hash, row.hash)
