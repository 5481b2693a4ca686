"""Encrypted SQLAlchemy columns and the bulk rewrap helper, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from kms_client import DataKeyCaching, EncryptionContextMismatch, KmsClient, parse_header_bytes
from kms_client.sqlalchemy import EncryptedBytes, EncryptedJSON, EncryptedString, rewrap_column
from tests.support import postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def app_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The application's own database (the server keeps its SQLite file apart)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    if not postgres.available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432")
    with postgres.temporary_database("kms_sdk_test") as url:
        yield url


@pytest.fixture
def engine(app_database):
    engine = create_engine(app_database)
    yield engine
    engine.dispose()


def models(client: KmsClient):
    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        email: Mapped[str | None] = mapped_column(EncryptedString("pii", client, {"app": "shop"}))
        notes: Mapped[str | None] = mapped_column(EncryptedString("pii", lambda: client, {"app": "shop"}))
        avatar: Mapped[bytes | None] = mapped_column(EncryptedBytes("pii", client))
        profile: Mapped[dict | None] = mapped_column(EncryptedJSON("pii", client))

    class Supplier(Base):
        __tablename__ = "suppliers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str | None] = mapped_column(EncryptedString("pii", client, {"app": "shop"}))

    return Base, Customer, Supplier


@pytest.fixture
def pii(client: KmsClient) -> str:
    client.create_key("pii")
    return "pii"


def test_values_are_encrypted_on_write_and_decrypted_on_read(engine, client, pii):
    Base, Customer, _ = models(client)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(
            Customer(
                id=1,
                name="Ada",
                email="ada@example.com",
                notes="likes ☕",
                avatar=b"\x89PNG",
                profile={"tier": "gold", "tags": ["a", "b"]},
            )
        )
        session.add(Customer(id=2, name="Bob", email=None, notes=None, avatar=None, profile=None))
        session.commit()
    with Session(engine) as session:
        ada = session.get(Customer, 1)
        assert (ada.email, ada.notes, ada.avatar, ada.profile) == (
            "ada@example.com",
            "likes ☕",
            b"\x89PNG",
            {"tier": "gold", "tags": ["a", "b"]},
        )
        bob = session.get(Customer, 2)
        assert (bob.email, bob.notes, bob.avatar, bob.profile) == (None, None, None, None)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT email FROM customers WHERE id = 1")).scalar_one()
    header = parse_header_bytes(bytes(stored))
    assert b"ada@example.com" not in bytes(stored)
    assert header.key_id == pii
    assert dict(header.context) == {"app": "shop", "table": "customers", "column": "email"}


def test_a_value_copied_to_another_column_or_table_fails_to_decrypt(engine, client, pii):
    Base, Customer, Supplier = models(client)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Customer(id=1, name="Ada", email="ada@example.com"))
        session.add(Supplier(id=1))
        session.commit()
    with engine.begin() as connection:
        connection.execute(text("UPDATE customers SET notes = email WHERE id = 1"))
        stolen = connection.execute(text("SELECT email FROM customers WHERE id = 1")).scalar_one()
        connection.execute(
            update(Supplier.__table__).values({Supplier.__table__.c.email: type_coerce(bytes(stolen), LargeBinary)})
        )
    with Session(engine) as session:
        with pytest.raises(EncryptionContextMismatch):
            session.execute(select(Customer.notes)).scalar_one()
        with pytest.raises(EncryptionContextMismatch):
            session.execute(select(Supplier.email)).scalar_one()
        assert session.execute(select(Customer.email)).scalar_one() == "ada@example.com"


def test_core_tables_and_a_type_shared_by_two_tables_get_their_own_context(engine, client, pii):
    shared = EncryptedString("pii", client)
    metadata = MetaData()
    first = Table("first", metadata, Column("id", Integer, primary_key=True), Column("secret", shared))
    second = Table(
        "second",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("first_id", ForeignKey("first.id")),
        Column("secret", shared),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(first), [{"id": 1, "secret": "one"}])
        connection.execute(insert(second), [{"id": 1, "first_id": 1, "secret": "two"}])
        assert connection.execute(select(first.c.secret)).scalar_one() == "one"
        assert connection.execute(select(second.c.secret)).scalar_one() == "two"
        raw = connection.execute(select(type_coerce(second.c.secret, LargeBinary))).scalar_one()
    assert first.c.secret.type is not second.c.secret.type
    assert dict(parse_header_bytes(bytes(raw)).context)["table"] == "second"


def test_a_type_outside_a_table_column_refuses_to_guess_a_context(client, pii):
    with pytest.raises(ValueError, match="table column"):
        EncryptedString("pii", client).process_bind_param("x", None)
    with pytest.raises(ValueError, match="filled in from the column"):
        EncryptedString("pii", client, {"table": "mine"})


def test_bulk_rewrap_moves_every_row_to_the_primary_version_in_batches(engine, server, client, pii, counter):
    raw_channel = grpc.insecure_channel(server.target)
    caching = KmsClient(channel=grpc.intercept_channel(raw_channel, counter), data_key_caching=DataKeyCaching())
    Base, Customer, _ = models(caching)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Customer(id=i, name=f"c{i}", email=f"c{i}@example.com") for i in range(1, 251))
        session.add(Customer(id=251, name="nobody", email=None))
        session.commit()
    client.rotate_key(pii)
    counter.calls.clear()
    report = rewrap_column(engine, Customer.email, batch_size=40)
    assert (report.rows, report.rewrapped, report.unchanged, report.failed) == (250, 250, 0, 0)
    assert counter.calls["BatchReWrap"] == 7 and "Decrypt" not in counter.calls  # ceil(250 / 40) batches
    with engine.connect() as connection:
        stored = (
            connection.execute(select(type_coerce(Customer.email, LargeBinary)).where(Customer.id <= 250))
            .scalars()
            .all()
        )
    assert {
        client.decrypt_data_key(
            parse_header_bytes(bytes(v)).wrapped_key, parse_header_bytes(bytes(v)).context
        ).key_version
        for v in stored
    } == {2}
    caching.clear_data_key_cache()
    with Session(engine) as session:
        assert session.get(Customer, 17).email == "c17@example.com"
    again = rewrap_column(engine, Customer.__table__.c.email, batch_size=100)
    assert (again.rows, again.rewrapped, again.unchanged) == (250, 0, 250)
    raw_channel.close()


def test_bulk_rewrap_reports_rows_that_fail_and_continues(engine, client, pii):
    Base, Customer, _ = models(client)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Customer(id=i, name=f"c{i}", email=f"c{i}@example.com") for i in range(1, 4))
        session.commit()
    with engine.begin() as connection:
        connection.execute(text("UPDATE customers SET notes = email WHERE id = 2"))
    client.rotate_key(pii)
    report = rewrap_column(engine, Customer.notes)
    assert (report.rows, report.failed, report.rewrapped) == (1, 1, 0)
    assert report.errors[0][0] == (2,) and isinstance(report.errors[0][1], EncryptionContextMismatch)
    with engine.connect() as connection:
        report = rewrap_column(connection, Customer.email)
        connection.commit()
    assert report.rewrapped == 3
