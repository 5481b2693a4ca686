"""KeyRepository on SQLAlchemy: SQLite for one process, PostgreSQL for several replicas."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    case,
    insert,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import sessionmaker

from kms.domain.keys import Key, KeyVersion, Purpose, Storage, VersionState, VersionUsage
from kms.domain.ledger import KEY, Change, LedgerEntry, key_digest
from kms.domain.usage import UsageDelta
from kms.errors import DatabaseUnavailable, KeyAlreadyExists, KeyNotFound
from kms.store.database import WRITE_OPTION, exclusive
from kms.store.tables import KeyRow, KeyVersionRow

if TYPE_CHECKING:
    from kms.store.ledger import SqlLedger

_KEYS = KeyRow.__table__
_VERSIONS = KeyVersionRow.__table__


@contextmanager
def database_errors() -> Iterator[None]:
    """Turns the database being unreachable or locked into DatabaseUnavailable."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise DatabaseUnavailable(f"database is unavailable ({type(cause).__name__})") from None
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable("database connection lost") from None
        raise


class SqlKeyRepository:
    """Keys and their versions. Every saved change increments the key's revision and appends
    its digest to the metadata ledger in the same transaction (kms.domain.ledger)."""

    def __init__(self, engine: Engine, ledger: SqlLedger) -> None:
        self._engine = engine
        self._ledger = ledger
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def get(self, key_id: str) -> Key:
        with database_errors(), self._engine.connect() as connection:
            found = _read_keys(connection, _KEYS.c.key_id == key_id)
        if not found:
            raise KeyNotFound(key_id)
        return found[0]

    def list_keys(self, limit: int, after_key_id: str | None) -> Sequence[Key]:
        after = _KEYS.c.key_id > after_key_id if after_key_id is not None else true()
        with database_errors(), self._engine.connect() as connection:
            return _read_keys(connection, after, limit)

    @contextmanager
    def transaction(self, key_id: str) -> Iterator[_KeyTransaction]:
        with self._transaction(key_id, wait=True) as transaction:
            assert transaction is not None
            yield transaction

    @contextmanager
    def preparation_lock(self, key_id: str) -> Iterator[None]:
        """Serializes the making of ``key_id``'s next token object across replicas, without
        holding any database lock: an advisory lock of its own on PostgreSQL, a file lock
        (one of 256, by the id's hash) beside the SQLite file."""
        if self._engine.dialect.name == "postgresql":
            name = f"key-prep:{key_id}"
        else:
            name = f"key-prep-{hashlib.blake2b(key_id.encode(), digest_size=1).digest()[0]:03d}"
        with exclusive(self._engine, name):
            yield

    @contextmanager
    def try_transaction(self, key_id: str) -> Iterator[_KeyTransaction | None]:
        """As ``transaction``, but yields None at once when another replica holds the key."""
        with self._transaction(key_id, wait=False) as transaction:
            yield transaction

    @contextmanager
    def _transaction(self, key_id: str, wait: bool) -> Iterator[_KeyTransaction | None]:
        with database_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                locked = _lock_key(connection, key_id, wait)
                yield _KeyTransaction(connection, key_id, self._ledger) if locked else None

    def due_for_rotation(self, now: datetime, limit: int, max_wraps: int | None = None) -> list[str]:
        scheduled = (
            select(KeyRow.key_id)
            .where(KeyRow.next_rotation_time <= now)  # set by a rotation period or an erasure cadence
            .order_by(KeyRow.next_rotation_time)
            .limit(limit)
        )
        with database_errors(), self._sessions() as session:
            due = list(session.scalars(scheduled))
            if max_wraps is not None:
                worn = (
                    select(KeyRow.key_id)
                    .join(
                        KeyVersionRow,
                        and_(KeyVersionRow.key_id == KeyRow.key_id, KeyVersionRow.version == KeyRow.primary_version),
                    )
                    .where(KeyVersionRow.data_keys_issued >= max_wraps)
                    .order_by(KeyRow.key_id)
                    .limit(limit)
                )
                already = set(due)
                due += [key_id for key_id in session.scalars(worn) if key_id not in already]
            return due[:limit]

    def keys_wrapped_outside(self, root_key_id: str, limit: int, after_key_id: str | None) -> list[str]:
        query = (
            select(KeyVersionRow.key_id)
            .distinct()
            .where(
                KeyVersionRow.storage == Storage.WRAPPED.value,
                KeyVersionRow.root_key_id != root_key_id,
                KeyVersionRow.state != VersionState.DESTROYED.value,
            )
            .order_by(KeyVersionRow.key_id)
            .limit(limit)
        )
        if after_key_id is not None:
            query = query.where(KeyVersionRow.key_id > after_key_id)
        with database_errors(), self._sessions() as session:
            return list(session.scalars(query))

    def keys_wrapped_under(self, root_key_id: str, limit: int) -> list[str]:
        query = (
            select(KeyVersionRow.key_id)
            .distinct()
            .where(
                KeyVersionRow.storage == Storage.WRAPPED.value,
                KeyVersionRow.root_key_id == root_key_id,
                KeyVersionRow.state != VersionState.DESTROYED.value,
            )
            .order_by(KeyVersionRow.key_id)
            .limit(limit)
        )
        with database_errors(), self._sessions() as session:
            return list(session.scalars(query))

    def due_for_destruction(self, now: datetime, limit: int) -> list[tuple[str, int]]:
        query = (
            select(KeyVersionRow.key_id, KeyVersionRow.version)
            .where(KeyVersionRow.state == VersionState.DESTROY_SCHEDULED.value, KeyVersionRow.destroy_time <= now)
            .order_by(KeyVersionRow.destroy_time)
            .limit(limit)
        )
        with database_errors(), self._sessions() as session:
            return [(row.key_id, row.version) for row in session.execute(query)]

    def add_usage(self, deltas: Mapping[tuple[str, int], UsageDelta]) -> dict[tuple[str, int], int]:
        """Adds counted uses to the versions' totals (concurrent replicas add, never overwrite)
        and returns the wraps (data keys issued) each of those versions now has in all."""
        if not deltas:
            return {}
        table = KeyVersionRow.__table__
        statement = (
            update(table)
            .where(table.c.key_id == bindparam("k"), table.c.version == bindparam("v"))
            .values(
                data_keys_issued=table.c.data_keys_issued + bindparam("wraps"),
                decrypts=table.c.decrypts + bindparam("unwraps"),
                last_used_time=case(
                    (
                        or_(table.c.last_used_time.is_(None), table.c.last_used_time < bindparam("used")),
                        bindparam("used"),
                    ),
                    else_=table.c.last_used_time,
                ),
            )
        )
        rows = [
            {"k": key_id, "v": version, "wraps": d.wraps, "unwraps": d.unwraps, "used": d.last_used}
            for (key_id, version), d in sorted(deltas.items())
        ]
        with database_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                connection.execute(statement, rows)
                totals: dict[tuple[str, int], int] = {}
                slots = sorted(deltas)
                for start in range(0, len(slots), 200):
                    chunk = slots[start : start + 200]
                    query = select(table.c.key_id, table.c.version, table.c.data_keys_issued).where(
                        tuple_(table.c.key_id, table.c.version).in_(chunk)
                    )
                    totals.update(
                        {(row.key_id, row.version): row.data_keys_issued for row in connection.execute(query)}
                    )
        return totals

    def unledgered(self) -> list[Change]:
        """The ledger entries every stored key would have (sealing a database that predates
        the ledger: kms.service.integrity.MetadataIntegrity.catch_up)."""
        return [Change(KEY, key.key_id, key.revision, key_digest(key)) for key in self.all_keys()]

    def all_keys(self) -> Iterator[Key]:
        after = None
        while True:
            page = self.list_keys(500, after)
            yield from page
            if len(page) < 500:
                return
            after = page[-1].key_id

    def ping(self) -> None:
        with database_errors(), self._engine.connect() as connection:
            connection.execute(text("SELECT 1"))


def _advisory_lock_id(key_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(b"kms-key:" + key_id.encode(), digest_size=8).digest(), "big", signed=True)


def _lock_key(connection: Connection, key_id: str, wait: bool) -> bool:
    """Takes the key's write lock for the transaction; without ``wait``, gives up (False) when
    another transaction holds it. On SQLite, BEGIN IMMEDIATE has already locked the database."""
    if connection.dialect.name != "postgresql":
        return True
    # Row locks cannot cover a key that does not exist yet; a transaction-scoped advisory lock on
    # the id serializes creation too, and SELECT ... FOR UPDATE below then never waits.
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    acquired = connection.execute(text(f"SELECT {function}(:id)"), {"id": _advisory_lock_id(key_id)}).scalar()
    return wait or bool(acquired)


class _KeyTransaction:
    """Reads the key under its lock and writes only what a save changed, with SQLAlchemy Core:
    the ORM's unit of work cost more than the rest of a CreateKey together."""

    def __init__(self, connection: Connection, key_id: str, ledger: SqlLedger) -> None:
        self._connection = connection
        self._ledger = ledger
        found = _read_keys(connection, _KEYS.c.key_id == key_id, for_update=True)
        self._key = found[0] if found else None
        # The ledger entries this transaction appended (valid once it has committed).
        self.appended: list[LedgerEntry] = []

    @property
    def key(self) -> Key | None:
        return self._key

    def save(self, key: Key) -> Key:
        before = self._key
        stored = replace(key, revision=(before.revision if before is not None else 0) + 1)
        existing = {v.version: _version_values(v) for v in before.versions} if before is not None else {}
        added = []
        try:
            if before is None:
                self._connection.execute(insert(_KEYS).values(key_id=stored.key_id, **_key_values(stored)))
            else:
                self._connection.execute(
                    update(_KEYS).where(_KEYS.c.key_id == stored.key_id).values(**_key_values(stored))
                )
            for version in stored.versions:
                values = _version_values(version)
                if version.version not in existing:
                    added.append({"key_id": stored.key_id, "version": version.version, **values})
                elif values != existing[version.version]:
                    self._connection.execute(
                        update(_VERSIONS)
                        .where(_VERSIONS.c.key_id == stored.key_id, _VERSIONS.c.version == version.version)
                        .values(**values)
                    )
            if added:
                self._connection.execute(insert(_VERSIONS), added)
        except sa_exc.IntegrityError:
            raise KeyAlreadyExists(key.key_id) from None
        self.appended += self._ledger.append(
            self._connection, [Change(KEY, stored.key_id, stored.revision, key_digest(stored))]
        )
        self._key = stored
        return stored


def _read_keys(
    connection: Connection, where: ColumnElement[bool], limit: int | None = None, *, for_update: bool = False
) -> list[Key]:
    """The keys matching ``where`` in id order (at most ``limit``), each with its versions."""
    query = select(_KEYS).where(where).order_by(_KEYS.c.key_id)
    if limit is not None:
        query = query.limit(limit)
    if for_update:
        query = query.with_for_update()
    rows = connection.execute(query).all()
    if not rows:
        return []
    versions: dict[str, list[KeyVersion]] = defaultdict(list)
    in_range = _VERSIONS.c.key_id.between(rows[0].key_id, rows[-1].key_id)
    for version_row in connection.execute(
        select(_VERSIONS).where(in_range).order_by(_VERSIONS.c.key_id, _VERSIONS.c.version)
    ):
        versions[version_row.key_id].append(_to_version(version_row))
    return [_to_key(row, versions.get(row.key_id, [])) for row in rows]


def _to_key(row: Row[Any], versions: Sequence[KeyVersion]) -> Key:
    return Key(
        key_id=row.key_id,
        description=row.description,
        primary_version=row.primary_version,
        versions=tuple(versions),
        create_time=row.create_time,
        update_time=row.update_time,
        rotation_period=(
            timedelta(seconds=row.rotation_period_seconds) if row.rotation_period_seconds is not None else None
        ),
        next_rotation_time=row.next_rotation_time,
        min_decryption_version=row.min_decryption_version,
        revision=row.revision or 0,
        storage=Storage(row.storage or "HSM_OBJECT"),
        purpose=Purpose(row.purpose or "ENCRYPT_DECRYPT"),
        subject_field=row.subject_field or "",
        retention_period=_seconds(row.retention_period_seconds),
        erasure_finality=_seconds(row.erasure_finality_seconds),
    )


def _seconds(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def _to_version(row: Row[Any]) -> KeyVersion:
    return KeyVersion(
        key_id=row.key_id,
        version=row.version,
        state=VersionState(row.state),
        master_key_id=row.master_key_id,
        master_key_label=row.master_key_label,
        create_time=row.create_time,
        destroy_time=row.destroy_time,
        usage=VersionUsage(row.data_keys_issued or 0, row.decrypts or 0, row.last_used_time),
        storage=Storage(row.storage or "HSM_OBJECT"),
        wrapped_material=bytes(row.wrapped_material or b""),
        root_key_id=row.root_key_id or "",
        material_mac=row.material_mac or "",
    )


def _key_values(key: Key) -> dict[str, object]:
    """The keys row of ``key`` (but its id)."""
    return {
        "description": key.description,
        "primary_version": key.primary_version,
        "min_decryption_version": key.min_decryption_version,
        "rotation_period_seconds": int(key.rotation_period.total_seconds()) if key.rotation_period else None,
        "next_rotation_time": key.next_rotation_time,
        "create_time": key.create_time,
        "update_time": key.update_time,
        "revision": key.revision,
        "storage": key.storage.value,
        "purpose": key.purpose.value,
        "subject_field": key.subject_field,
        "retention_period_seconds": int(key.retention_period.total_seconds()) if key.retention_period else None,
        "erasure_finality_seconds": int(key.erasure_finality.total_seconds()) if key.erasure_finality else None,
    }


def _version_values(version: KeyVersion) -> dict[str, object]:
    """The key_versions row of ``version`` (but its key id and number) as a save writes it:
    usage counts are only ever added to (SqlKeyRepository.add_usage), never written here."""
    return {
        "state": version.state.value,
        "master_key_id": version.master_key_id,
        "master_key_label": version.master_key_label,
        "create_time": version.create_time,
        "destroy_time": version.destroy_time,
        "storage": version.storage.value,
        "wrapped_material": version.wrapped_material or None,
        "root_key_id": version.root_key_id,
        "material_mac": version.material_mac,
    }
