"""Stored values in a column of a relational table (any SQLAlchemy URL).

Rows are read in primary-key order with keyset pagination (``WHERE pk > :last ORDER BY pk
LIMIT n``), so each batch costs one indexed query however large the table, and rows inserted
behind the cursor are simply not this run's business (they were written under the current
primary version). Writes are compare-and-set: ``UPDATE ... WHERE pk = :pk AND value = :read``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import MetaData, Table, and_, create_engine, func, select
from sqlalchemy.engine import Engine, make_url

from kms.rewrap.job import Item, Replacement, Unreadable
from kms.rewrap.values import UnreadableHeader, Unrecognized, read_value


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
        self._context = dict(context or {})
        self._context_columns = dict(context_columns or {})

    def describe(self) -> str:
        url = make_url(self._url).render_as_string(hide_password=True)
        return f"table|{url}|{self._table.fullname}|{self._value.name}|{self._pk.name}|{sorted(self._context.items())}|{sorted(self._context_columns.items())}"

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
        written = []
        with self._engine.begin() as connection:
            for replacement in replacements:
                as_read = replacement.item.payload  # the column value exactly as read
                result = connection.execute(
                    self._table.update()
                    .where(and_(self._pk == replacement.item.position, self._value == as_read))
                    .values({self._value.name: _in_stored_form(replacement.value, like=as_read)})
                )
                written.append(result.rowcount == 1)
        return written

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


def _in_stored_form(value: bytes, like: Any) -> Any:
    """``value`` as the column holds values: base64 text where the value read was text."""
    return base64.b64encode(value).decode("ascii") if isinstance(like, str) else value
