"""Stored values in a column of a relational table (any SQLAlchemy URL).

Rows are read in primary-key order with keyset pagination (``WHERE pk > :last ORDER BY pk
LIMIT n``), so each batch costs one indexed query however large the table, and rows inserted
behind the cursor are simply not this run's business (they were written under the current
primary version). Writes are compare-and-set: ``UPDATE ... WHERE pk = :pk AND value = :read``,
a batch's rows in one transaction as one executemany (one round trip's worth on PostgreSQL:
psycopg pipelines it). When fewer rows changed than were sent, the transaction reads the batch's
rows back, after its own updates and with their locks held: a row holds its new value exactly
when this write stored it (the new wrapped key has a fresh IV, so the application cannot have
written the same bytes).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import MetaData, Table, and_, bindparam, create_engine, func, select
from sqlalchemy.engine import Engine, make_url

from kms.rewrap.job import Item, Replacement, Unreadable
from kms.rewrap.values import UnreadableHeader, Unrecognized, read_value

_READ_BACK_CHUNK = 500  # keys per IN list, well under every database's parameter limit


class TableSource:
    def __init__(
        self,
        url: str,
        table: str,
        column: str,
        primary_key: str,
        *,
        context: Mapping[str, str] | None = None,
        context_columns: Mapping[str, str] | None = None,
        engine: Engine | None = None,
    ) -> None:
        """``context`` is added to every raw wrapped key's encryption context; each entry of
        ``context_columns`` (context key -> column) takes its value from the row. SDK
        ciphertexts carry their context themselves."""
        self._url = url
        self._engine = engine or create_engine(url)
        schema, _, name = table.rpartition(".")
        self._table = Table(name, MetaData(), schema=schema or None, autoload_with=self._engine)
        for needed in (column, primary_key, *(context_columns or {}).values()):
            if needed not in self._table.c:
                raise ValueError(f"table {table} has no column {needed!r}")
        self._value = self._table.c[column]
        self._pk = self._table.c[primary_key]
        # Parameter names no column is likely to have (SQLAlchemy reserves a column's own name).
        self._compare_and_set = (
            self._table.update()
            .where(
                and_(
                    self._pk == bindparam("kms_rewrap_key", type_=self._pk.type),
                    self._value == bindparam("kms_rewrap_read", type_=self._value.type),
                )
            )
            .values({self._value.name: bindparam("kms_rewrap_new", type_=self._value.type)})
        )
        self._context = dict(context or {})
        self._context_columns = dict(context_columns or {})

    def describe(self) -> str:
        url = make_url(self._url).render_as_string(hide_password=True)
        return (
            f"table|{url}|{self._table.fullname}|{self._value.name}|{self._pk.name}"
            f"|{sorted(self._context.items())}|{sorted(self._context_columns.items())}"
        )

    def count(self) -> int | None:
        with self._engine.connect() as connection:
            return connection.execute(
                select(func.count()).select_from(self._table).where(self._value.is_not(None))
            ).scalar()

    def batches(self, after: Any, size: int) -> Iterator[Sequence[Item | Unreadable]]:
        columns = [self._pk, self._value, *(self._table.c[c] for c in self._context_columns.values())]
        while True:
            query = select(*columns).where(self._value.is_not(None)).order_by(self._pk).limit(size)
            if after is not None:
                query = query.where(self._pk > after)
            with self._engine.connect() as connection:
                rows = connection.execute(query).all()
            if not rows:
                return
            yield [self._item(row) for row in rows]
            after = rows[-1][0]

    def write(self, replacements: Sequence[Replacement]) -> list[bool]:
        if not replacements:
            return []
        # The column value exactly as read, and the new one in the same form.
        rows = [
            {
                "kms_rewrap_key": r.item.position,
                "kms_rewrap_read": r.item.payload,
                "kms_rewrap_new": _in_stored_form(r.value, like=r.item.payload),
            }
            for r in replacements
        ]
        with self._engine.begin() as connection:
            changed = connection.execute(self._compare_and_set, rows).rowcount
            if changed == len(rows) and self._engine.dialect.supports_sane_multi_rowcount:
                return [True] * len(rows)
            now: dict[Any, Any] = {}
            keys = [row["kms_rewrap_key"] for row in rows]
            for start in range(0, len(keys), _READ_BACK_CHUNK):
                chunk = keys[start : start + _READ_BACK_CHUNK]
                query = select(self._pk, self._value).where(self._pk.in_(chunk))
                now.update((key, _comparable(value)) for key, value in connection.execute(query))
        return [now.get(row["kms_rewrap_key"]) == _comparable(row["kms_rewrap_new"]) for row in rows]

    def _item(self, row: Any) -> Item | Unreadable:
        position, raw = row[0], row[1]
        context = dict(self._context)
        for offset, name in enumerate(self._context_columns):
            value = row[2 + offset]
            if value is not None:
                context[name] = str(value)
        try:
            stored = read_value(_as_bytes(raw))
        except Unrecognized as error:
            return Unreadable(position, str(error))
        except UnreadableHeader as error:
            return Unreadable(position, str(error), version_unknown=True)
        return Item(position, stored, stored.context_for_reading(context), raw)


def _as_bytes(raw: Any) -> bytes:
    """Values are stored as binary, or as base64 text in a text column."""
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise Unrecognized("text value is not base64") from None
    raise Unrecognized(f"unsupported column value type {type(raw).__name__}")


def _comparable(value: Any) -> Any:
    """A column value as compared with what was written (drivers may hand back memoryviews)."""
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


def _in_stored_form(value: bytes, like: Any) -> Any:
    """``value`` as the column holds values: base64 text where the value read was text."""
    return base64.b64encode(value).decode("ascii") if isinstance(like, str) else value
