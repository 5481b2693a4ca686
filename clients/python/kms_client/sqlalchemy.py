"""SQLAlchemy column types that encrypt on write and decrypt on read, and a bulk rewrap helper.

    from kms_client.sqlalchemy import EncryptedBytes, EncryptedJSON, EncryptedString, rewrap_column

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(EncryptedString("pii", client))
        profile: Mapped[dict] = mapped_column(EncryptedJSON("pii", client, {"tenant": "acme"}))

Each value is an envelope ciphertext (docs/envelope-format.md) in a binary column (BYTEA on
PostgreSQL, BLOB on SQLite), under a data key of ``key_id`` and the encryption context
``{**context, "table": <schema.>table, "column": column}``. The table and column enter the
context automatically: when a column with one of these types is attached to its table,
SQLAlchemy's ``after_parent_attach`` event (a listener this module registers on ``Column``)
binds the type to that column, so a value copied to another column or table fails to decrypt
(EncryptionContextMismatch). Each column needs its own type instance; a shared instance, as in
a mixin's column copied to several tables, is copied once per column.

``client`` is a KmsClient or a function returning one (when models are declared before the
client exists). With ``DataKeyCaching`` on that client, inserting many rows costs a handful of
service calls.

Limits: values are randomized, so an encrypted column cannot be filtered, joined, sorted or
indexed by value; the context does not include the row, so values can be swapped between rows
of the same column unless the application binds the row itself (for instance by keeping the
row's key inside the encrypted JSON); EncryptedJSON does not track in-place mutation (assign a
new value, or wrap it with sqlalchemy.ext.mutable).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

try:
    from sqlalchemy import Column, LargeBinary, Table, event, select, tuple_, type_coerce, update
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.types import TypeDecorator
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError("kms_client.sqlalchemy needs SQLAlchemy: pip install 'kms-client[sqlalchemy]'") from missing

from kms_client.client import KmsClient
from kms_client.envelope import DEFAULT_FRAME_SIZE
from kms_client.errors import KmsError

RESERVED_CONTEXT_KEYS = ("table", "column")
MAX_ERRORS_KEPT = 100

ClientSource = KmsClient | Callable[[], KmsClient]


class _EncryptedColumn(TypeDecorator[Any]):  # each subclass has its own Python type
    impl = LargeBinary
    cache_ok = True

    def __init__(
        self,
        key_id: str,
        client: ClientSource,
        context: Mapping[str, str] | None = None,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ) -> None:
        super().__init__()
        clash = [k for k in RESERVED_CONTEXT_KEYS if k in (context or {})]
        if clash:
            raise ValueError(f"context keys {clash} are filled in from the column; choose other names")
        self.key_id = key_id
        self.client = client
        self.context = tuple(sorted((context or {}).items()))  # hashable: part of the statement cache key
        self.frame_size = frame_size
        self.bound_to: tuple[str, str] | None = None

    # -- binding to a column ------------------------------------------------------------------

    def bind(self, table: Table, column: Column[Any]) -> None:
        self.bound_to = (table.fullname, column.name)

    def column_context(self) -> dict[str, str]:
        if self.bound_to is None:
            raise ValueError(
                f"{type(self).__name__} must belong to a table column: its context names the table and column"
            )
        table, column = self.bound_to
        return {**dict(self.context), "table": table, "column": column}

    def kms_client(self) -> KmsClient:
        return self.client if isinstance(self.client, KmsClient) else self.client()

    # -- values -------------------------------------------------------------------------------

    def to_bytes(self, value: Any) -> bytes:
        raise NotImplementedError

    def from_bytes(self, data: bytes) -> Any:
        raise NotImplementedError

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None:
            return None
        return self.kms_client().encrypt(
            self.to_bytes(value), key_id=self.key_id, context=self.column_context(), frame_size=self.frame_size
        )

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        return self.from_bytes(self.kms_client().decrypt(bytes(value), context=self.column_context()))


class EncryptedBytes(_EncryptedColumn):
    """``bytes`` values, encrypted."""

    cache_ok = True  # the cache key is (key_id, client, context, frame_size); the column is in the SQL

    def to_bytes(self, value: Any) -> bytes:
        return bytes(value)

    def from_bytes(self, data: bytes) -> bytes:
        return data


class EncryptedString(_EncryptedColumn):
    """``str`` values, encrypted as UTF-8."""

    cache_ok = True  # the cache key is (key_id, client, context, frame_size); the column is in the SQL

    def to_bytes(self, value: Any) -> bytes:
        return str(value).encode("utf-8")

    def from_bytes(self, data: bytes) -> str:
        return data.decode("utf-8")


class EncryptedJSON(_EncryptedColumn):
    """JSON-serializable values, encrypted as compact UTF-8 JSON."""

    cache_ok = True  # the cache key is (key_id, client, context, frame_size); the column is in the SQL

    def to_bytes(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")

    def from_bytes(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


@event.listens_for(Column, "after_parent_attach")
def _bind_encrypted_column(column: Column[Any], table: Any) -> None:
    if not isinstance(column.type, _EncryptedColumn) or not isinstance(table, Table):
        return
    if column.type.bound_to not in (None, (table.fullname, column.name)):
        column.type = column.type.copy()
    column.type.bind(table, column)


# -- bulk rewrap ----------------------------------------------------------------------------------


@dataclass
class RewrapReport:
    """What ``rewrap_column`` did: counts of non-NULL values, and the first errors by primary key."""

    rows: int = 0
    rewrapped: int = 0
    unchanged: int = 0
    skipped: int = 0  # changed by another writer between read and update: left as the writer left it
    failed: int = 0
    errors: list[tuple[tuple[Any, ...], KmsError]] = field(default_factory=list)


def rewrap_column(
    bind: Engine | Connection, column: Any, *, batch_size: int = 500, client: KmsClient | None = None
) -> RewrapReport:
    """Re-wraps every value of an encrypted column under the primary version of its key.

    ``column`` is a Column or an ORM attribute whose type is one of this module's types; its
    table needs a primary key. Rows are read in primary key order, ``batch_size`` at a time
    (memory stays bounded), their wrapped keys re-wrapped with BatchReWrap (the data keys never
    reach this process; values that share a wrapped key cost one item), and each changed row is
    updated only if it still holds the value that was read. With an Engine each batch commits
    on its own, so an interrupted run keeps its progress and can simply be started again; with a
    Connection everything runs in the caller's transaction.
    """
    column = _column_of(column)
    column_type = column.type
    if not isinstance(column_type, _EncryptedColumn):
        raise TypeError(f"{column} is not an encrypted column")
    primary_key = list(column.table.primary_key.columns)
    if not primary_key:
        raise ValueError(f"table {column.table.fullname} has no primary key to page through")
    client = client or column_type.kms_client()
    context = column_type.column_context()
    raw = type_coerce(column, LargeBinary)  # the stored ciphertext, not the decrypted value
    report = RewrapReport()
    after: tuple[Any, ...] | None = None
    while True:
        query = select(*primary_key, raw).where(raw.is_not(None)).order_by(*primary_key).limit(batch_size)
        if after is not None:
            query = query.where(tuple_(*primary_key) > tuple_(*after))
        with _transaction(bind) as connection:
            rows = [(tuple(row[: len(primary_key)]), bytes(row[-1])) for row in connection.execute(query)]
            if not rows:
                return report
            results = client.rewrap_many([(value, context) for _, value in rows])
            for (key, old), new in zip(rows, results, strict=True):
                _apply(connection, column, primary_key, key, old, new, report)
        after = rows[-1][0]


def _apply(
    connection: Connection,
    column: Column[Any],
    primary_key: list[Column[Any]],
    key: tuple[Any, ...],
    old: bytes,
    new: bytes | KmsError,
    report: RewrapReport,
) -> None:
    report.rows += 1
    if isinstance(new, KmsError):
        report.failed += 1
        if len(report.errors) < MAX_ERRORS_KEPT:
            report.errors.append((key, new))
        return
    if new == old:
        report.unchanged += 1
        return
    raw = type_coerce(column, LargeBinary)
    statement = (
        update(column.table)
        .where(*(c == v for c, v in zip(primary_key, key, strict=True)))
        .where(raw == type_coerce(old, LargeBinary))
        .values({column: type_coerce(new, LargeBinary)})
    )
    if connection.execute(statement).rowcount == 1:
        report.rewrapped += 1
    else:
        report.skipped += 1


def _column_of(column: Any) -> Column[Any]:
    prop = getattr(column, "property", None)
    found: Column[Any] = prop.columns[0] if prop is not None and hasattr(prop, "columns") else column
    return found


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction per batch on an Engine; the caller's own on a Connection."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as connection:
            yield connection


__all__ = ["EncryptedBytes", "EncryptedJSON", "EncryptedString", "RewrapReport", "rewrap_column"]
