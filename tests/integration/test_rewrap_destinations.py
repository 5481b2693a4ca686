"""kms rewrap --destination-key-id over a corpus that mixes SDK ciphertexts and bare wrapped keys,
and what kms keys retire --rewrap-report makes of the report.

An SDK ciphertext's header names its key and is authenticated, so its wrapped key cannot move to
another key (the SDK would refuse the result): the job refuses those items one by one, leaves
them byte for byte, and counts them as still on their version, so that retiring the version is
refused. Bare wrapped keys move. The commands run in process through click against a real server.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, select, update

from kms.cli.main import cli
from kms.rewrap.files import DirectorySource
from kms.rewrap.job import JobOptions, RewrapJob

SOURCE, DESTINATION = "orders", "archive"
ROWS = 12  # even ids hold SDK ciphertexts, odd ids bare wrapped keys


@pytest.fixture(params=["sqlite", "postgresql"])
def app_database(request, tmp_path):
    """The application's own database, apart from the service's."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def kms(server, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--target", server.target])


def context(row_id: int) -> dict[str, str]:
    return {"tenant": f"t{row_id % 3}"}


def make_mixed_table(client, url: str) -> tuple:
    """ROWS values under version 1 of SOURCE, which is then rotated; returns the engine, the
    table, and per row the plaintext (SDK ciphertexts) or the data key (bare wrapped keys)."""
    engine = create_engine(url)
    table = Table(
        "docs",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String(8)),
        Column("value", LargeBinary),
    )
    table.metadata.create_all(engine)
    rows, secrets = [], {}
    for row_id in range(ROWS):
        if row_id % 2 == 0:
            secrets[row_id] = f"document {row_id}".encode()
            value = client.encrypt(secrets[row_id], key_id=SOURCE, context=context(row_id))
        else:
            issued = client.generate_data_key(SOURCE, context(row_id))
            secrets[row_id], value = issued.plaintext, issued.wrapped_key
        rows.append({"id": row_id, "tenant": context(row_id)["tenant"], "value": value})
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    client.rotate_key(SOURCE)
    return engine, table, secrets


def stored(engine, table) -> dict[int, bytes]:
    with engine.connect() as connection:
        return {row.id: row.value for row in connection.execute(select(table).order_by(table.c.id))}


def assert_retire_refused(server, client, report, message: str) -> None:
    retired = kms(server, "keys", "retire", SOURCE, "1", "--min-idle", "0s", "--rewrap-report", str(report))
    assert retired.exit_code == 1, retired.output
    assert message in retired.stderr
    assert client.get_key(SOURCE).versions[0].state == "ENABLED"


def test_a_table_moves_its_bare_wrapped_keys_and_refuses_its_sdk_ciphertexts(server, client, app_database, tmp_path):
    client.create_key(SOURCE)
    client.create_key(DESTINATION)
    engine, table, secrets = make_mixed_table(client, app_database)
    before = stored(engine, table)
    report_file = tmp_path / "report.json"

    result = kms(
        server,
        "rewrap",
        "table",
        "--database-url",
        app_database,
        "--table",
        "docs",
        "--column",
        "value",
        "--primary-key",
        "id",
        "--context-column",
        "tenant=tenant",
        "--destination-key-id",
        DESTINATION,
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--report",
        str(report_file),
    )

    after = stored(engine, table)
    for row_id in range(0, ROWS, 2):  # SDK ciphertexts: untouched, and they still decrypt
        assert after[row_id] == before[row_id]
        assert client.decrypt(after[row_id], context=context(row_id)) == secrets[row_id]
    for row_id in range(1, ROWS, 2):  # bare wrapped keys: moved, and they open there
        opened = client.decrypt_data_key(after[row_id], context(row_id))
        assert (opened.key_id, opened.key_version, opened.plaintext) == (DESTINATION, 1, secrets[row_id])
    assert result.exit_code == 1, result.output
    assert "refused" in result.stdout and "cannot move to another key" in result.stdout
    report = json.loads(report_file.read_text())
    assert (report["rewrapped"], report["refused"], report["failed"]) == (ROWS // 2, ROWS // 2, ROWS // 2)
    assert report["remaining"] == {SOURCE: {"1": ROWS // 2}}
    assert_retire_refused(server, client, report_file, f"{ROWS // 2} items are still under {SOURCE} version 1")


def test_files_with_a_destination_are_refused_before_anything_is_read(server, client, tmp_path):
    client.create_key(SOURCE)
    client.create_key(DESTINATION)
    root = tmp_path / "store"
    root.mkdir()
    for n in range(3):
        (root / f"{n}.kms").write_bytes(client.encrypt(b"x" * n, key_id=SOURCE, context=context(n)))
    before = {path: path.read_bytes() for path in root.iterdir()}
    client.rotate_key(SOURCE)

    result = kms(
        server,
        "rewrap",
        "files",
        str(root),
        "--destination-key-id",
        DESTINATION,
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--report",
        str(tmp_path / "report.json"),
    )

    assert {path: path.read_bytes() for path in root.iterdir()} == before
    assert result.exit_code == 2, result.output
    assert "SDK ciphertexts cannot move to another key" in result.stderr
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "checkpoint.json").exists()


def test_the_engine_refuses_each_sdk_ciphertext_file_and_retire_refuses_the_version(server, client, tmp_path):
    client.create_key(SOURCE)
    client.create_key(DESTINATION)
    root = tmp_path / "store"
    root.mkdir()
    plaintexts = {}
    for n in range(5):
        path = root / f"{SOURCE}-{n}.kms"
        plaintexts[path] = bytes([n]) * (n * 1000)
        path.write_bytes(client.encrypt(plaintexts[path], key_id=SOURCE, context=context(n)))
    # A file under the destination key itself is not a move: it is re-wrapped onto its primary.
    under_destination = root / f"{DESTINATION}.kms"
    under_destination.write_bytes(client.encrypt(b"stays", key_id=DESTINATION, context=context(0)))
    before = {path: path.read_bytes() for path in root.iterdir()}
    client.rotate_key(SOURCE)
    client.rotate_key(DESTINATION)

    report = RewrapJob(client, DirectorySource(root), JobOptions(destination_key_id=DESTINATION)).run()

    for path, plaintext in plaintexts.items():
        assert path.read_bytes() == before[path]
        assert client.decrypt(path.read_bytes(), context=context(int(path.stem[-1]))) == plaintext
    assert under_destination.read_bytes() != before[under_destination]
    assert client.decrypt(under_destination.read_bytes(), context=context(0)) == b"stays"
    assert (report.rewrapped, report.refused, report.failed) == (1, 5, 5)
    assert report.remaining == {SOURCE: {"1": 5}}
    report_file = tmp_path / "report.json"
    report_file.write_text(json.dumps(asdict(report)))  # as kms rewrap --report writes it
    assert_retire_refused(server, client, report_file, f"5 items are still under {SOURCE} version 1")


def test_a_report_with_failed_items_on_a_version_makes_retire_refuse_it(server, client, app_database, tmp_path):
    client.create_key(SOURCE)
    engine, table, _ = make_mixed_table(client, app_database)
    with engine.begin() as connection:  # opens under no other context: fails InvalidCiphertext
        connection.execute(update(table).where(table.c.id == 1).values(tenant="other"))
    report_file = tmp_path / "report.json"

    result = kms(
        server,
        "rewrap",
        "table",
        "--database-url",
        app_database,
        "--table",
        "docs",
        "--column",
        "value",
        "--primary-key",
        "id",
        "--context-column",
        "tenant=tenant",
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--report",
        str(report_file),
        "--json",
    )

    assert result.exit_code == 1, result.output
    report = json.loads(report_file.read_text())
    assert (report["rewrapped"], report["failed"], report["remaining"]) == (ROWS - 1, 1, {SOURCE: {"1": 1}})
    assert_retire_refused(server, client, report_file, f"1 items are still under {SOURCE} version 1")


def test_a_clean_report_lets_retire_go_ahead(server, client, tmp_path):
    client.create_key(SOURCE)
    make_mixed_table(client, f"sqlite:///{tmp_path / 'app.db'}")
    report_file = tmp_path / "report.json"
    result = kms(
        server,
        "rewrap",
        "table",
        "--database-url",
        f"sqlite:///{tmp_path / 'app.db'}",
        "--table",
        "docs",
        "--column",
        "value",
        "--primary-key",
        "id",
        "--context-column",
        "tenant=tenant",
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--report",
        str(report_file),
    )
    assert result.exit_code == 0, result.output

    retired = kms(server, "keys", "retire", SOURCE, "1", "--min-idle", "0s", "--rewrap-report", str(report_file))

    assert retired.exit_code == 0, retired.output
    assert client.get_key(SOURCE).versions[0].state == "DESTROY_SCHEDULED"


def test_a_report_with_items_it_could_not_read_makes_retire_refuse_every_version(server, client, tmp_path, monkeypatch):
    client.create_key(SOURCE)
    root = tmp_path / "store"
    root.mkdir()
    (root / "ok.kms").write_bytes(client.encrypt(b"fine", key_id=SOURCE, context=context(0)))
    # Written by the application but unreadable to the job (permissions, say): under any version.
    (root / "locked.kms").write_bytes(client.encrypt(b"locked", key_id=SOURCE, context=context(0)))
    # From a newer SDK: a header this job cannot parse, under a version it cannot tell.
    (root / "newer.kms").write_bytes(b"KMSE\x02" + bytes(200))
    (root / "notes.txt").write_text("not a ciphertext, and not one in any format")
    client.rotate_key(SOURCE)
    genuine_open = type(root).open

    def refusing_open(path, *args, **kwargs):
        if path.name == "locked.kms":
            raise PermissionError(13, "Permission denied", str(path))
        return genuine_open(path, *args, **kwargs)

    monkeypatch.setattr(type(root), "open", refusing_open)
    report = RewrapJob(client, DirectorySource(root)).run()
    monkeypatch.undo()

    report_file = tmp_path / "report.json"
    report_file.write_text(json.dumps(asdict(report)))
    assert_retire_refused(server, client, report_file, "2 items could not be read")
    assert (report.rewrapped, report.failed, report.unknown_version) == (1, 3, 2)
    assert report.failures == {
        "cannot read the file: Permission denied": 1,
        "unreadable SDK ciphertext header": 1,
        "not an SDK ciphertext file": 1,
    }
