"""The metadata ledger's storage (kms.domain.ledger): entries appended inside the transaction
that changes the protected rows, and read back in order.

Appending holds the head row's lock for the rest of the transaction (SQLite: the database lock
of BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE), so replicas extend one chain. Before
extending, the head is checked against its seal, unless it is the head this process wrote last:
a head someone else wrote outside the service must never be sealed over.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, Engine, create_engine, insert, select, update

from kms.domain.ledger import GENESIS, Change, LedgerEntry, LedgerHead, extend, head_message
from kms.errors import LedgerTampered
from kms.ports import AuditSeal
from kms.store.database import WRITE_OPTION
from kms.store.repository import database_errors
from kms.store.tables import LedgerEntryRow, LedgerHeadRow

_PAGE = 5000


class SqlLedger:
    def __init__(self, engine: Engine, seal: AuditSeal) -> None:
        self._engine = engine
        self._seal = seal
        self._last_written: tuple[int, str] | None = None
        # Reads on PostgreSQL come from connections of their own. A write transaction holding a
        # key's lock may have to read the ledger (a change committed since the last read), and
        # the reader holds the ledger's follower lock meanwhile; from the shared pool, that read
        # waited for a connection held by callers waiting for that key's lock, and every key
        # change stopped until the pool's 30 s timeout. These connections serve ledger reads
        # only, which wait for no lock. (SQLite's pool has no cap: kms.store.database.)
        self._reader = (
            create_engine(engine.url, pool_size=1, max_overflow=2, pool_pre_ping=True, pool_recycle=1800)
            if engine.dialect.name == "postgresql"
            else engine
        )

    def close(self) -> None:
        """Closes the connections of its own (the engine it was given is its owner's)."""
        if self._reader is not self._engine:
            self._reader.dispose()

    def append(self, connection: Connection, changes: Sequence[Change]) -> list[LedgerEntry]:
        """Appends ``changes`` within the caller's write transaction on ``connection`` and seals
        the new head. Raises LedgerTampered when the current head is not one the service sealed."""
        if not changes:
            return []
        head_table = LedgerHeadRow.__table__
        query = select(head_table.c.seq, head_table.c.hash, head_table.c.mac).where(head_table.c.id == 1)
        if connection.dialect.name == "postgresql":
            query = query.with_for_update()
        seq, hash_, mac = connection.execute(query).one()
        if seq and (seq, hash_) != self._last_written and not self._seal.check(head_message(seq, hash_), mac):
            raise LedgerTampered(f"the metadata ledger's head (entry {seq}) is not sealed by the HSM")
        entries = extend(seq, hash_, changes)
        connection.execute(
            insert(LedgerEntryRow.__table__),
            [
                {
                    "seq": e.seq,
                    "kind": e.change.kind,
                    "name": e.change.name,
                    "revision": e.change.revision,
                    "digest": e.change.digest,
                    "prev_hash": e.prev_hash,
                    "hash": e.hash,
                }
                for e in entries
            ],
        )
        last = entries[-1]
        connection.execute(
            update(head_table)
            .where(head_table.c.id == 1)
            .values(seq=last.seq, hash=last.hash, mac=self._seal.seal(head_message(last.seq, last.hash)))
        )
        self._last_written = (last.seq, last.hash)
        return entries

    def seal_existing(self, changes: Sequence[Change]) -> int:
        """Appends ``changes`` in one transaction if the ledger is still empty (another replica
        may have sealed the same rows first); returns how many were appended."""
        with database_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                table = LedgerHeadRow.__table__
                query = select(table.c.seq).where(table.c.id == 1)
                if connection.dialect.name == "postgresql":
                    query = query.with_for_update()
                if connection.execute(query).scalar():
                    return 0
                return len(self.append(connection, changes))

    def head(self) -> LedgerHead:
        with database_errors(), self._reader.connect() as connection:
            return _head(connection)

    def read(self, after_seq: int, limit: int = _PAGE) -> tuple[list[LedgerEntry], LedgerHead]:
        """Up to ``limit`` entries after ``after_seq``, and the head, read in one snapshot (so
        the head is never ahead of entries committed with it)."""
        table = LedgerEntryRow.__table__
        with database_errors(), self._reader.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                head = _head(connection)
                rows = connection.execute(
                    select(table)
                    .where(table.c.seq > after_seq, table.c.seq <= head.seq)
                    .order_by(table.c.seq)
                    .limit(limit)
                ).all()
        return [_entry(row) for row in rows], head

    def entries(self, after_seq: int = 0) -> Iterator[LedgerEntry]:
        """Every entry after ``after_seq``, in order, read in pages (``kms db verify``)."""
        while True:
            page, head = self.read(after_seq)
            yield from page
            if not page or page[-1].seq >= head.seq:
                return
            after_seq = page[-1].seq


def _head(connection: Connection) -> LedgerHead:
    table = LedgerHeadRow.__table__
    row = connection.execute(select(table.c.seq, table.c.hash, table.c.mac).where(table.c.id == 1)).one_or_none()
    if row is None:
        return LedgerHead(0, GENESIS, "")
    return LedgerHead(row.seq, row.hash, row.mac)


def _entry(row) -> LedgerEntry:  # noqa: ANN001 - a SQLAlchemy Row
    return LedgerEntry(row.seq, Change(row.kind, row.name, row.revision, row.digest), row.prev_hash, row.hash)
