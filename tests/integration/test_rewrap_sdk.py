"""kms rewrap over SDK ciphertexts: files in a directory tree, and a column holding them as
binary or base64 text. Only the wrapped key in the header changes; bodies stay byte for byte."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, Text, create_engine, select

from kms.rewrap.files import DirectorySource
from kms.rewrap.job import JobOptions, RewrapJob
from kms.rewrap.table import TableSource
from kms_client import PermissionDenied, envelope
from tests.support.fixtures import ADMIN, APP

CONTEXT = {"tenant": "acme"}


def _body(ciphertext: bytes) -> bytes:
    return ciphertext[envelope.parse_header_bytes(ciphertext).length :]


def test_files_are_rewrapped_header_only_and_still_decrypt(client, tmp_path):
    client.create_key("orders")
    root = tmp_path / "store"
    originals = {}
    for n in range(30):
        path = root / f"tenant{n % 3}" / f"object-{n:03d}.kms"
        path.parent.mkdir(parents=True, exist_ok=True)
        plaintext = bytes([n]) * (n * 5000)
        path.write_bytes(client.encrypt(plaintext, key_id="orders", context=CONTEXT))
        originals[path] = (plaintext, path.read_bytes())
    (root / "notes.txt").write_text("not a ciphertext")
    client.rotate_key("orders")

    report = RewrapJob(client, DirectorySource(root), JobOptions(batch_size=7, checkpoint=tmp_path / "ck.json")).run()
    assert (report.rewrapped, report.failed, report.failures) == (30, 1, {"not an SDK ciphertext file": 1})
    for path, (plaintext, before) in originals.items():
        after = path.read_bytes()
        assert after != before and _body(after) == _body(before)
        assert envelope.parse_header_bytes(after).wrapped_key[8:12] == (2).to_bytes(4, "big")  # version 2
        assert client.decrypt(after, context=CONTEXT) == plaintext
    assert not list(root.rglob("*.kms-rewrap"))
    again = RewrapJob(client, DirectorySource(root)).run()
    assert (again.already_current, again.rewrapped) == (30, 0)


def test_a_file_changed_by_the_application_meanwhile_is_left_alone(client, tmp_path):
    client.create_key("orders")
    root = tmp_path / "store"
    root.mkdir()
    target = root / "a.kms"
    target.write_bytes(client.encrypt(b"first", key_id="orders", context=CONTEXT))
    client.rotate_key("orders")

    class Racing(DirectorySource):
        def write(self, replacements):
            target.write_bytes(client.encrypt(b"second", key_id="orders", context=CONTEXT))
            return super().write(replacements)

    report = RewrapJob(client, Racing(root)).run()
    assert (report.rewrapped, report.changed_concurrently) == (0, 1)
    assert client.decrypt(target.read_bytes(), context=CONTEXT) == b"second"


def test_a_column_of_sdk_ciphertexts_in_binary_and_in_base64_text(client, tmp_path):
    client.create_key("orders")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    table = Table(
        "docs", MetaData(), Column("id", Integer, primary_key=True), Column("raw", LargeBinary), Column("text", Text)
    )
    table.metadata.create_all(engine)
    rows = []
    for n in range(20):
        ct = client.encrypt(f"document {n}".encode(), key_id="orders", context=CONTEXT)
        rows.append({"id": n, "raw": ct, "text": base64.b64encode(ct).decode()})
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    client.rotate_key("orders")
    for column in ("raw", "text"):
        report = RewrapJob(client, TableSource(url, "docs", column, "id")).run()
        assert (report.rewrapped, report.failed) == (20, 0)
    with engine.connect() as connection:
        stored = connection.execute(select(table).order_by(table.c.id)).all()
    for n, row in enumerate(stored):
        for value in (row.raw, base64.b64decode(row.text)):
            assert _body(value) == _body(rows[n]["raw"])
            assert client.decrypt(value, context=CONTEXT) == f"document {n}".encode()


# -- every new value is verified the way the SDK will read it -----------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def app_database(request, tmp_path):
    """The application's own database, apart from the service's."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def _sdk_table(client, url: str, count: int) -> tuple:
    engine = create_engine(url)
    table = Table("docs", MetaData(), Column("id", Integer, primary_key=True), Column("raw", LargeBinary))
    table.metadata.create_all(engine)
    rows = [
        {"id": n, "raw": client.encrypt(f"document {n}".encode(), key_id="orders", context=CONTEXT)}
        for n in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    return engine, table, {row["id"]: row["raw"] for row in rows}


def _stored(engine, table) -> dict[int, bytes]:
    with engine.connect() as connection:
        return {row.id: row.raw for row in connection.execute(select(table).order_by(table.c.id))}


def test_a_rebuilt_value_holding_another_data_keys_wrapped_key_is_not_written(client, app_database, monkeypatch):
    client.create_key("orders")
    engine, table, before = _sdk_table(client, app_database, 6)
    client.rotate_key("orders")
    genuine = envelope.replace_wrapped_key

    def with_another_data_key(ciphertext, wrapped_key):
        # Opens under the same key, version and context, so the service alone cannot tell; the
        # SDK's key commitment refuses it.
        header = envelope.parse_header_bytes(ciphertext)
        return genuine(ciphertext, client.generate_data_key(header.key_id, dict(header.context)).wrapped_key)

    monkeypatch.setattr(envelope, "replace_wrapped_key", with_another_data_key)
    report = RewrapJob(client, TableSource(app_database, "docs", "raw", "id")).run()
    monkeypatch.undo()

    assert _stored(engine, table) == before
    assert all(client.decrypt(value, context=CONTEXT) == f"document {n}".encode() for n, value in before.items())
    assert (report.rewrapped, report.failed, report.remaining) == (0, 6, {"orders": {"1": 6}})
    assert report.failures == {
        "verification failed: the new SDK ciphertext does not hold the wrapped key the service returned": 6
    }


class _MovingService:
    """A client whose first BatchReWrap moves every wrapped key to another key, as a faulty
    service (or a job moving SDK ciphertexts) would; every other call goes to the real client."""

    def __init__(self, client, to: str) -> None:
        self._client = client
        self._to = to
        self._moved = False

    def __getattr__(self, name):
        return getattr(self._client, name)

    def rewrap_data_keys(self, requests, *, destination_key_id: str = ""):
        if not self._moved:
            self._moved = True
            destination_key_id = self._to
        return self._client.rewrap_data_keys(requests, destination_key_id=destination_key_id)


def test_a_new_wrapped_key_under_another_key_than_the_header_names_is_not_written(client, tmp_path):
    client.create_key("orders")
    client.create_key("elsewhere")
    root = tmp_path / "store"
    root.mkdir()
    for n in range(4):
        (root / f"{n}.kms").write_bytes(client.encrypt(bytes([n]) * 100, key_id="orders", context=CONTEXT))
    before = {path: path.read_bytes() for path in root.iterdir()}
    client.rotate_key("orders")

    report = RewrapJob(_MovingService(client, "elsewhere"), DirectorySource(root)).run()

    assert {path: path.read_bytes() for path in root.iterdir()} == before
    assert (report.rewrapped, report.failed, report.remaining) == (0, 4, {"orders": {"1": 4}})
    assert report.failures == {
        "verification failed: the new wrapped key is under key elsewhere, "
        "but the SDK ciphertext's header names orders": 4
    }


def test_an_sdk_ciphertext_whose_wrapped_key_is_under_another_key_than_its_header_names_is_reported(client, tmp_path):
    # What an earlier kms rewrap --destination-key-id left behind: the SDK refuses these.
    client.create_key("orders")
    client.create_key("elsewhere")
    root = tmp_path / "store"
    root.mkdir()
    for name in ("moved-then-rotated", "moved-after-rotation"):
        ciphertext = client.encrypt(name.encode(), key_id="orders", context=CONTEXT)
        moved = client.rewrap_data_key(
            envelope.parse_header_bytes(ciphertext).wrapped_key, CONTEXT, destination_key_id="elsewhere"
        )
        (root / f"{name}.kms").write_bytes(envelope.replace_wrapped_key(ciphertext, moved.wrapped_key))
        if name == "moved-then-rotated":
            client.rotate_key("elsewhere")
    before = {path: path.read_bytes() for path in root.iterdir()}

    report = RewrapJob(client, DirectorySource(root)).run()

    assert {path: path.read_bytes() for path in root.iterdir()} == before
    assert (report.rewrapped, report.already_current, report.failed) == (0, 0, 2)
    assert report.failures == {
        "an SDK ciphertext whose wrapped key is under key elsewhere but whose header names orders: "
        "the SDK cannot open it; left as it is": 2
    }
    assert report.remaining == {"elsewhere": {"1": 1, "2": 1}}


def test_the_job_needs_only_the_rewrap_permission_and_sees_no_data_key(mtls_server, connect, tmp_path):
    admin, job_identity = connect(mtls_server, "admin"), connect(mtls_server, "app")
    admin.create_key("orders")
    admin.grant_permissions(ADMIN, "orders", ["encrypt", "decrypt"])
    admin.grant_permissions(APP, "orders", ["rewrap"])  # no decrypt, and not even reading keys
    root = tmp_path / "store"
    root.mkdir()
    for n in range(3):
        (root / f"{n}.kms").write_bytes(admin.encrypt(bytes([n]) * 50, key_id="orders", context=CONTEXT))
    admin.rotate_key("orders")

    report = RewrapJob(job_identity, DirectorySource(root)).run()

    assert (report.rewrapped, report.failed) == (3, 0)
    for n in range(3):
        after = (root / f"{n}.kms").read_bytes()
        assert envelope.parse_header_bytes(after).wrapped_key[8:12] == (2).to_bytes(4, "big")  # version 2
        assert admin.decrypt(after, context=CONTEXT) == bytes([n]) * 50
    with pytest.raises(PermissionDenied):
        job_identity.decrypt((root / "0.kms").read_bytes(), context=CONTEXT)
