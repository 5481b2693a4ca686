"""Equality search over encrypted SQLAlchemy columns: a blind index stored beside the ciphertext
(docs/searchable-columns.md).

    from kms_client.blind_index import IndexKeyRing
    from kms_client.sqlalchemy import EncryptedString
    from kms_client.sqlalchemy_search import BlindIndex, index_key_table, load_index_keys, search

    keys = load_index_keys(engine, index_keys, client, "customers")     # an IndexKeyRing

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(EncryptedString("pii", client))
        email_index: Mapped[bytes] = mapped_column(BlindIndex(keys, "email"), index=True)

    Customer(id=1, email="ada@example.com")          # email_index is set from email
    search(session, Customer.email_index, "ada@example.com")   # -> [the matching customers]

The index column holds ``blind_index.blind_index`` of the source column's value: computed in this
process with an index key the service unwrapped once, so neither the value nor the index key
ever reaches the service or the database. Setting the source attribute of a mapped object sets
the index attribute (an ORM attribute event); with Core, give ``BlindIndex.compute(value)``
yourself. ``search`` selects the rows whose index is one of the value's candidates (one per index
key in the ring) and keeps those whose decrypted value is equal: a truncated index also matches
some other values (docs/searchable-columns.md, "Truncation"), which the re-check drops.

Rotating: ``rewrap_column`` for the ciphertexts and ``kms rewrap table`` for the stored index keys
when the KMS key rotates (indexes stay valid); a new index key (a new version in the ring) and
``reindex_column`` to replace the index secret itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    from sqlalchemy import (
        Column,
        ColumnElement,
        Integer,
        LargeBinary,
        MetaData,
        String,
        Table,
        and_,
        event,
        insert,
        inspect,
        select,
        tuple_,
        type_coerce,
        update,
    )
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Mapper, Session
    from sqlalchemy.types import TypeDecorator
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "kms_client.sqlalchemy_search needs SQLAlchemy: pip install 'kms-client[sqlalchemy]'"
    ) from missing

from kms_client.blind_index import DEFAULT_SIZE, MAX_SIZE, IndexKey, IndexKeyRing, version_of
from kms_client.client import KmsClient
from kms_client.errors import KmsError
from kms_client.sqlalchemy import MAX_ERRORS_KEPT, _column_of, _EncryptedColumn, _transaction

RingSource = IndexKeyRing | Callable[[], IndexKeyRing]


class BlindIndex(TypeDecorator[bytes]):
    """A column of blind indexes of the column named ``source`` in the same table, under the
    index keys of ``keys`` (an IndexKeyRing, or a function returning one), keeping ``size`` bytes
    of each MAC (1-32; see docs/searchable-columns.md for the trade between leakage and false
    matches). Values are ``size + 1`` bytes (the index key version first). Each column needs its
    own instance (a shared one is copied per column)."""

    impl = LargeBinary
    cache_ok = True  # the cache key is (keys, source, size); the column is in the SQL

    def __init__(self, keys: RingSource, source: str, size: int = DEFAULT_SIZE) -> None:
        if not 1 <= size <= MAX_SIZE:
            raise ValueError(f"size must be 1 to {MAX_SIZE} bytes")
        super().__init__(length=size + 1)
        self.keys = keys
        self.source = source
        self.size = size
        self.bound_to: tuple[str, str] | None = None  # (table's full name, source column)
        self._table: Table | None = None

    def bind(self, table: Table) -> None:
        self.bound_to = (table.fullname, self.source)
        self._table = table

    def ring(self) -> IndexKeyRing:
        return self.keys if isinstance(self.keys, IndexKeyRing) else self.keys()

    def compute(self, value: Any) -> bytes:
        """The index of a source value under the ring's current key."""
        table, column = self._where()
        return self.ring().index(table, column, self._bytes(value), self.size)

    def candidates(self, value: Any) -> list[bytes]:
        """The indexes a row holding ``value`` may have (one per key of the ring)."""
        table, column = self._where()
        return self.ring().candidates(table, column, self._bytes(value), self.size)

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None or isinstance(value, bytes | bytearray | memoryview):
            return None if value is None else bytes(value)
        raise TypeError(
            "a BlindIndex column holds indexes (BlindIndex.compute); search with blind_index_matches or search"
        )

    def _where(self) -> tuple[str, str]:
        if self.bound_to is None:
            raise ValueError("BlindIndex must belong to a table column: its indexes are bound to the table")
        return self.bound_to

    def _bytes(self, value: Any) -> bytes:
        """The bytes the source column encrypts (so an index is of exactly what is stored)."""
        source = self._table.c.get(self.source) if self._table is not None else None
        if source is None:
            raise ValueError(f"table {self.bound_to and self.bound_to[0]} has no column {self.source!r}")
        if isinstance(source.type, _EncryptedColumn):
            return source.type.to_bytes(value)
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)


@event.listens_for(Column, "after_parent_attach")
def _bind_blind_index(column: Column[Any], table: Any) -> None:
    if not isinstance(column.type, BlindIndex) or not isinstance(table, Table):
        return
    if column.type.bound_to not in (None, (table.fullname, column.type.source)):
        column.type = column.type.copy()
    column.type.bind(table)


@event.listens_for(Mapper, "mapper_configured")
def _keep_indexes_in_step(mapper: Mapper[Any], class_: type) -> None:
    """Setting a mapped object's source attribute sets its index attribute."""
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if not isinstance(column.type, BlindIndex) or not isinstance(column, Column):
            continue
        source = column.table.c.get(column.type.source)
        if source is None:
            raise ValueError(f"BlindIndex {prop.key!r}: table {column.table} has no column {column.type.source!r}")
        source_key = mapper.get_property_by_column(source).key
        event.listen(getattr(class_, source_key), "set", _Refresh(prop.key, column.type))


class _Refresh:
    def __init__(self, index_key: str, index_type: BlindIndex) -> None:
        self.index_key = index_key
        self.index_type = index_type

    def __call__(self, target: Any, value: Any, oldvalue: Any, initiator: Any) -> None:
        setattr(target, self.index_key, None if value is None else self.index_type.compute(value))


# -- searching ------------------------------------------------------------------------------------


def blind_index_matches(index: Any, value: Any) -> ColumnElement[bool]:
    """``index IN (candidates of value)``, for a Core query (or an ORM one): the rows it selects
    include every row holding ``value`` and, the index being truncated, possibly a few others.
    Re-check the decrypted value (``search`` does)."""
    column = _column_of(index)
    return column.in_(_index_type(column).candidates(value))


def search(session: Session, index: Any, value: Any) -> list[Any]:
    """The objects of ``index``'s mapped class whose source attribute equals ``value``: found by
    the index, then re-checked on the decrypted value, so exactly the matching rows."""
    column = _column_of(index)
    entity = index.class_
    source = inspect(entity).get_property_by_column(column.table.c[_index_type(column).source]).key
    found = session.scalars(select(entity).where(blind_index_matches(column, value))).all()
    return [row for row in found if getattr(row, source) == value]


def _index_type(column: Column[Any]) -> BlindIndex:
    if not isinstance(column.type, BlindIndex):
        raise TypeError(f"{column} is not a BlindIndex column")
    return column.type


# -- re-indexing under a new index key --------------------------------------------------------------


@dataclass
class ReindexReport:
    """What ``reindex_column`` did, counting rows whose source column is not NULL."""

    rows: int = 0
    reindexed: int = 0
    current: int = 0  # already under the ring's current key
    skipped: int = 0  # changed by another writer between read and update: left as it was written
    failed: int = 0  # the source value could not be decrypted
    errors: list[tuple[tuple[Any, ...], KmsError]] = field(default_factory=list)


def reindex_column(bind: Engine | Connection, index: Any, *, batch_size: int = 500) -> ReindexReport:
    """Recomputes, under the ring's current index key, every index of ``index``'s column that is
    under another key (or missing): each source value is decrypted here (it needs ``decrypt``
    on its key) and the row is updated only if neither its ciphertext nor its index changed
    since it was read. Rows are read in primary key order, ``batch_size`` at a time; with an
    Engine each batch commits on its own, so an interrupted run can simply be started again."""
    column = _column_of(index)
    index_type = _index_type(column)
    source = column.table.c[index_type.source]
    if not isinstance(source.type, _EncryptedColumn):
        raise TypeError(f"{source} is not an encrypted column")
    primary_key = list(column.table.primary_key.columns)
    if not primary_key:
        raise ValueError(f"table {column.table.fullname} has no primary key to page through")
    work = _Reindexing(column, index_type, source, primary_key, index_type.ring().current)
    stored, stored_index = type_coerce(source, LargeBinary), type_coerce(column, LargeBinary)
    report = ReindexReport()
    after: tuple[Any, ...] | None = None
    while True:
        query = select(*primary_key, stored, stored_index).where(stored.is_not(None)).order_by(*primary_key)
        if after is not None:
            query = query.where(tuple_(*primary_key) > tuple_(*after))
        with _transaction(bind) as connection:
            rows = connection.execute(query.limit(batch_size)).all()
            if not rows:
                return report
            for row in rows:
                work.row(connection, tuple(row[: len(primary_key)]), bytes(row[-2]), row[-1], report)
        after = tuple(rows[-1][: len(primary_key)])


@dataclass
class _Reindexing:
    column: Column[Any]
    index_type: BlindIndex
    source: Column[Any]
    primary_key: list[Column[Any]]
    current: int

    def row(
        self, connection: Connection, key: tuple[Any, ...], ciphertext: bytes, old: bytes | None, report: ReindexReport
    ) -> None:
        report.rows += 1
        if old is not None and version_of(bytes(old)) == self.current:
            report.current += 1
            return
        try:
            decoder = self.source.type
            assert isinstance(decoder, TypeDecorator)
            value = decoder.process_result_value(ciphertext, connection.dialect)
        except KmsError as error:
            report.failed += 1
            if len(report.errors) < MAX_ERRORS_KEPT:
                report.errors.append((key, error))
            return
        stored_index = type_coerce(self.column, LargeBinary)
        unchanged = stored_index.is_(None) if old is None else stored_index == type_coerce(bytes(old), LargeBinary)
        statement = (
            update(self.column.table)
            .where(*(c == v for c, v in zip(self.primary_key, key, strict=True)))
            .where(and_(type_coerce(self.source, LargeBinary) == type_coerce(ciphertext, LargeBinary), unchanged))
            .values({self.column.name: self.index_type.compute(value)})
        )
        if connection.execute(statement).rowcount == 1:
            report.reindexed += 1
        else:
            report.skipped += 1


# -- where the application keeps its index keys -------------------------------------------------------


def index_key_table(metadata: MetaData, name: str = "kms_index_keys") -> Table:
    """A table for wrapped index keys, one row per (ring, version), keyed by "ring:vN" so that
    ``kms rewrap table --table kms_index_keys --column wrapped_key --primary-key id
    --context-column blind_index=ring`` re-wraps them when the KMS key rotates."""
    return Table(
        name,
        metadata,
        Column("id", String(80), primary_key=True),
        Column("ring", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("wrapped_key", LargeBinary, nullable=False),
    )


def store_index_key(bind: Engine | Connection, table: Table, ring: str, key: IndexKey) -> None:
    with _transaction(bind) as connection:
        connection.execute(
            insert(table).values(
                id=f"{ring}:v{key.version}", ring=ring, version=key.version, wrapped_key=key.wrapped_key
            )
        )


def load_index_keys(
    bind: Engine | Connection, table: Table, client: KmsClient | Callable[[], KmsClient], ring: str
) -> IndexKeyRing:
    """The ring's keys as stored, the newest version current."""
    with _transaction(bind) as connection:
        rows = connection.execute(select(table.c.version, table.c.wrapped_key).where(table.c.ring == ring)).all()
    if not rows:
        raise LookupError(f"no index keys stored for ring {ring!r}")
    return IndexKeyRing(client, ring, [IndexKey(version, bytes(wrapped)) for version, wrapped in rows])


__all__ = [
    "BlindIndex",
    "ReindexReport",
    "blind_index_matches",
    "index_key_table",
    "load_index_keys",
    "reindex_column",
    "search",
    "store_index_key",
]
