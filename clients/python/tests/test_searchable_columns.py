"""Equality-searchable encrypted columns (kms_client.sqlalchemy_search) on SQLite and PostgreSQL:
search finds exactly the matching rows, the plaintext and the index key stay in the
application, indexes are bound to their table and column, and the index key rotates with the
rewrap tooling, end to end."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from kms_client import DataKeyCaching, KmsClient
from kms_client.blind_index import CONTEXT_KEY, blind_index, generate_index_key, version_of
from kms_client.sqlalchemy import EncryptedString, rewrap_column
from kms_client.sqlalchemy_search import (
    BlindIndex,
    blind_index_matches,
    index_key_table,
    load_index_keys,
    reindex_column,
    search,
    store_index_key,
)
from kms_proto.kms.v1 import kms_pb2 as pb
from tests.support import postgres
from tests.support.process import clean_env, kms_command

RING = "customers"


@pytest.fixture(params=["sqlite", "postgresql"])
def app_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The application's own database (the server keeps its SQLite file apart)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    if not postgres.available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432")
    with postgres.temporary_database("kms_sdk_search") as url:
        yield url


@pytest.fixture
def engine(app_database):
    engine = create_engine(app_database)
    yield engine
    engine.dispose()


class Recorder(grpc.UnaryUnaryClientInterceptor):
    """Keeps every request the SDK sends, serialized, and counts them by method."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []

    def intercept_unary_unary(self, continuation, details, request):
        self.requests.append((details.method.rsplit("/", 1)[-1], request.SerializeToString()))
        return continuation(details, request)

    def index_key_unwraps(self) -> int:
        return sum(
            1
            for method, raw in self.requests
            if method == "Decrypt" and CONTEXT_KEY in pb.DecryptRequest.FromString(raw).encryption_context
        )


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def app_client(server, recorder) -> Iterator[KmsClient]:
    """The application's client: its calls recorded, data keys cached (as an application would)."""
    raw = grpc.insecure_channel(server.target)
    client = KmsClient(channel=grpc.intercept_channel(raw, recorder), data_key_caching=DataKeyCaching())
    yield client
    client.close()
    raw.close()


@pytest.fixture
def keys_table(engine, client):
    """The application's table of wrapped index keys, with a first key of the "pii" KMS key."""
    client.create_key("pii")
    metadata = MetaData()
    table = index_key_table(metadata)
    metadata.create_all(engine)
    store_index_key(engine, table, RING, generate_index_key(client, "pii", RING, 1))
    return table


def models(client: KmsClient, keys, size: int = 8):
    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str | None] = mapped_column(EncryptedString("pii", client))
        email_index: Mapped[bytes | None] = mapped_column(BlindIndex(keys, "email", size=size), index=True)
        backup_email: Mapped[str | None] = mapped_column(EncryptedString("pii", client))
        backup_email_index: Mapped[bytes | None] = mapped_column(BlindIndex(keys, "backup_email", size=size))

    return Base, Customer


def _fill(engine, Customer, emails: list[str]) -> None:
    with Session(engine) as session:
        session.add_all(Customer(id=n, email=email) for n, email in enumerate(emails, start=1))
        session.commit()


def test_search_finds_exactly_the_matching_rows_even_with_a_one_byte_index(engine, app_client, keys_table):
    keys = load_index_keys(engine, keys_table, app_client, RING)
    Base, Customer = models(app_client, keys, size=1)
    Base.metadata.create_all(engine)
    emails = [f"user{n % 120}@example.com" for n in range(360)]  # 120 values, 3 rows each
    _fill(engine, Customer, emails)
    false_matches = 0
    with Session(engine) as session:
        for n in range(120):
            value = f"user{n}@example.com"
            found = search(session, Customer.email_index, value)
            assert sorted(c.id for c in found) == [i + 1 for i, e in enumerate(emails) if e == value]
            by_index = session.scalars(select(Customer.id).where(blind_index_matches(Customer.email_index, value)))
            false_matches += len(list(by_index)) - 3
        assert search(session, Customer.email_index, "nobody@example.com") == []
    # 120 values in 256 one-byte buckets: some share one, which only the re-check tells apart.
    assert false_matches > 0


def test_a_full_size_index_selects_exactly_the_rows_with_the_value_and_follows_updates(engine, app_client, keys_table):
    keys = load_index_keys(engine, keys_table, app_client, RING)
    Base, Customer = models(app_client, keys)
    Base.metadata.create_all(engine)
    _fill(engine, Customer, ["ada@example.com", "bob@example.com", "ada@example.com", None])
    with Session(engine) as session:
        ids = session.scalars(select(Customer.id).where(blind_index_matches(Customer.email_index, "ada@example.com")))
        assert sorted(ids) == [1, 3]
        bob = session.get(Customer, 2)
        bob.email = "ada@example.com"
        session.get(Customer, 3).email = None
        session.commit()
    with Session(engine) as session:
        assert sorted(c.id for c in search(session, Customer.email_index, "ada@example.com")) == [1, 2]
        assert session.get(Customer, 3).email_index is None and session.get(Customer, 4).email_index is None
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT email_index FROM customers WHERE id = 1")).scalar_one()
    assert len(bytes(stored)) == 9 and version_of(bytes(stored)) == 1


def test_plaintext_and_index_key_stay_in_the_application_and_the_key_is_unwrapped_once(
    engine, app_client, keys_table, recorder
):
    keys = load_index_keys(engine, keys_table, app_client, RING)
    Base, Customer = models(app_client, keys)
    Base.metadata.create_all(engine)
    emails = [f"secret-{n}@example.com" for n in range(40)]
    _fill(engine, Customer, emails)
    with Session(engine) as session:
        for email in emails[:10]:
            assert len(search(session, Customer.email_index, email)) == 1
    sent = b"".join(raw for _, raw in recorder.requests)
    assert not any(email.encode() in sent for email in emails)
    with engine.connect() as connection:
        indexes = [bytes(v) for v in connection.execute(text("SELECT email_index FROM customers")).scalars()]
    assert not any(index[1:] in sent for index in indexes)
    assert recorder.index_key_unwraps() == 1
    keys.close()  # zeroed; the next use unwraps again
    with Session(engine) as session:
        assert len(search(session, Customer.email_index, emails[0])) == 1
    assert recorder.index_key_unwraps() == 2


def test_an_index_is_bound_to_its_table_and_column(engine, app_client, keys_table):
    keys = load_index_keys(engine, keys_table, app_client, RING)
    Base, Customer = models(app_client, keys)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Customer(id=1, email="ada@example.com", backup_email="ada@example.com"))
        session.commit()
        ada = session.get(Customer, 1)
        assert ada.email_index != ada.backup_email_index
        assert search(session, Customer.backup_email_index, "ada@example.com") == [ada]
    metadata = MetaData()
    others = Table(
        "others",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("email", EncryptedString("pii", app_client)),
        Column("email_index", BlindIndex(keys, "email")),
    )
    metadata.create_all(engine)
    index = others.c.email_index.type.compute("ada@example.com")
    with engine.begin() as connection:
        connection.execute(insert(others).values(id=1, email="ada@example.com", email_index=index))
        assert connection.execute(
            select(others.c.id).where(blind_index_matches(others.c.email_index, "ada@example.com"))
        ).all() == [(1,)]
    assert index != ada.email_index
    # The bytes follow docs/searchable-columns.md: HMAC-SHA256 of the framed table, column and value.
    secret = keys._secret(1)  # a test of the format may look at the key it made
    assert index == blind_index(secret, 1, "others", "email", b"ada@example.com", 8)
    with pytest.raises(StatementError, match="holds indexes"), engine.connect() as connection:
        connection.execute(select(others.c.id).where(others.c.email_index == "ada@example.com")).all()


def test_rotating_the_kms_key_and_then_the_index_key_end_to_end(
    engine, app_database, server, client, app_client, keys_table, tmp_path
):
    keys = load_index_keys(engine, keys_table, app_client, RING)
    Base, Customer = models(app_client, keys)
    Base.metadata.create_all(engine)
    emails = [f"user{n % 50}@example.com" for n in range(150)]
    _fill(engine, Customer, emails)

    # 1. The KMS key rotates: ciphertexts and stored index keys are re-wrapped, indexes stay.
    client.rotate_key("pii")
    assert rewrap_column(engine, Customer.email).rewrapped == 150
    done = subprocess.run(
        kms_command(
            "rewrap", "table", "--database-url", app_database, "--table", "kms_index_keys",
            "--column", "wrapped_key", "--primary-key", "id", "--context-column", "blind_index=ring",
            "--target", server.target,
        ),
        env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with engine.connect() as connection:
        [wrapped] = connection.execute(select(keys_table.c.wrapped_key)).scalars()
    assert client.decrypt_data_key(bytes(wrapped), {CONTEXT_KEY: RING}).key_version == 2
    app_client.clear_data_key_cache()
    reloaded = load_index_keys(engine, keys_table, app_client, RING)
    Base, Customer = models(app_client, reloaded)
    with Session(engine) as session:
        assert len(search(session, Customer.email_index, "user7@example.com")) == 3

    # 2. A new index key: new rows get it at once, searches try both, reindex_column moves the rest.
    store_index_key(engine, keys_table, RING, generate_index_key(client, "pii", RING, 2))
    both = load_index_keys(engine, keys_table, app_client, RING)
    assert (both.versions, both.current) == ([1, 2], 2)
    Base, Customer = models(app_client, both)
    with Session(engine) as session:
        session.add(Customer(id=1000, email="user7@example.com"))
        session.commit()
        assert version_of(session.get(Customer, 1000).email_index) == 2
        assert len(search(session, Customer.email_index, "user7@example.com")) == 4
    report = reindex_column(engine, Customer.email_index, batch_size=40)
    assert (report.rows, report.reindexed, report.current, report.failed) == (151, 150, 1, 0)
    again = reindex_column(engine, Customer.email_index)
    assert (again.reindexed, again.current) == (0, 151)
    with engine.begin() as connection:
        connection.execute(keys_table.delete().where(keys_table.c.version == 1))
    only_new = load_index_keys(engine, keys_table, app_client, RING)
    assert only_new.versions == [2]
    Base, Customer = models(app_client, only_new)
    with Session(engine) as session:
        assert sorted(c.id for c in search(session, Customer.email_index, "user7@example.com")) == [8, 58, 108, 1000]
        assert {version_of(c.email_index) for c in session.scalars(select(Customer))} == {2}


def test_reindexing_reports_rows_it_cannot_decrypt_and_goes_on(engine, app_client, client, keys_table):
    keys = load_index_keys(engine, keys_table, app_client, RING)
    Base, Customer = models(app_client, keys)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Customer(id=n, email=f"{n}@example.com", backup_email=f"{n}@example.org") for n in (1, 2, 3))
        session.commit()
    with engine.begin() as connection:  # a ciphertext of another column: it does not open as this one
        connection.execute(text("UPDATE customers SET email = backup_email WHERE id = 2"))
    store_index_key(engine, keys_table, RING, generate_index_key(client, "pii", RING, 2))
    Base, Customer = models(app_client, load_index_keys(engine, keys_table, app_client, RING))
    report = reindex_column(engine, Customer.email_index)
    assert (report.rows, report.reindexed, report.failed) == (3, 2, 1)
    assert report.errors[0][0] == (2,) and report.errors[0][1].reason == "EncryptionContextMismatch"
