"""Engines and migrations.

SQLite runs in WAL mode with full synchronous commits, so a committed key version survives a
kill -9 of the process (and power loss). Write transactions on SQLite begin IMMEDIATE, taking
the database write lock up front: that is SQLite's form of SELECT ... FOR UPDATE. Within a
process, writers queue for that lock in arrival order first (kms.store.sqlite_writers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from alembic.config import Config

from kms.errors import DatabaseUnavailable
from kms.store import sqlite_writers

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key that serializes migrations of replicas starting together.
_MIGRATION_LOCK = 0x6B6D735F6D6967  # "kms_mig"
WRITE_OPTION = "kms_write"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'kms.db').resolve()}"


def make_engine(url: str, pool_size: int = 8) -> Engine:
    if url.startswith("sqlite"):
        connect_args: dict[str, object] = {"check_same_thread": False, "timeout": 30}
        database = make_url(url).database
        if database and database != ":memory:":
            connect_args["factory"] = sqlite_writers.connection_class(os.path.realpath(database))
        # No cap on connections (``max_overflow=-1``): writers wait for the write lock holding
        # a connection (kms.store.sqlite_writers), and the writer holding it may need one more
        # for a read (the ledger, when a key changed since it was last read). With a capped
        # pool, 24 callers waiting for the lock took every connection, the holder waited for
        # one until the pool's 30 s timeout, and every write stopped meanwhile (the audit
        # writer's too, so calls failed closed). A SQLite connection is a file handle, and
        # there are never more than threads.
        engine = create_engine(url, connect_args=connect_args, pool_size=pool_size, max_overflow=-1)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001, ANN202
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # noqa: ANN001, ANN202
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        raw = connection.connection.dbapi_connection
        if not (immediate and hasattr(raw, "queue_for_write")):
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
            return
        # Behind this process's other writers first (kms.store.sqlite_writers).
        if not raw.queue_for_write():
            locked = sqlite3.OperationalError("database is locked")
            raise sa_exc.OperationalError("BEGIN IMMEDIATE", None, locked)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            raw.write_not_begun()
            raise


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[None]:
    """A lock every process on this database respects, held for the block, and independent of
    the database's own locks (it may be taken while a transaction is open elsewhere in the same
    thread): PostgreSQL's session advisory lock on the name's hash; for SQLite an flock on a
    file beside the database."""
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.blake2b(b"kms-lock:" + name.encode(), digest_size=8).digest(), "big", signed=True)
        try:
            connection = _lock_engine(engine).connect()
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise DatabaseUnavailable(f"database is unavailable ({type(exc).__name__})") from None
        with connection:
            try:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            except sa_exc.DBAPIError as exc:
                raise DatabaseUnavailable(f"database is unavailable ({type(exc).__name__})") from None
            try:
                yield
            finally:
                # A connection lost meanwhile (a database restart) took its session's lock along.
                with contextlib.suppress(sa_exc.DBAPIError):
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
        return
    database = engine.url.database
    path = Path(f"{database}.{name}.lock") if database and database != ":memory:" else None
    if path is None:
        yield
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


_lock_engines: dict[str, Engine] = {}
_lock_engines_lock = threading.Lock()


def _lock_engine(engine: Engine) -> Engine:
    """Where ``exclusive`` takes its connection on PostgreSQL: not from ``engine``'s pool. A
    caller holds that connection while it waits for the lock, and the holder of the lock needs
    connections from the pool for its work (a key's token object is made under one, then
    recorded); with the lock's waiters holding the pool's last connections, the holder waited
    for the pool's 30 s timeout, time after time. Unpooled: one connection per lock taken."""
    url = engine.url.render_as_string(hide_password=False)
    with _lock_engines_lock:
        found = _lock_engines.get(url)
        if found is None:
            found = _lock_engines[url] = create_engine(engine.url, poolclass=NullPool)
        return found


def alembic_config(engine: Engine | None = None) -> Config:
    # Imported here: the audit writer process, started with every server, never migrates, and
    # Alembic is a quarter of its start-up.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine) -> None:
    """Brings the schema to the newest revision. Safe when several replicas start at once."""
    config = alembic_config()
    with engine.connect() as connection:
        connection = connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = connection
            from alembic import command

            command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
