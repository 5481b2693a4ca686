"""kms rewrap over SDK ciphertexts: files in a directory tree, and a column holding them as
binary or base64 text. Only the wrapped key in the header changes; bodies stay byte for byte."""

from __future__ import annotations

import base64

from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, Text, create_engine, select

from kms.rewrap.files import DirectorySource
from kms.rewrap.job import JobOptions, RewrapJob
from kms.rewrap.table import TableSource
from kms_client import envelope

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
    table = Table("docs", MetaData(), Column("id", Integer, primary_key=True), Column("raw", LargeBinary),
                  Column("text", Text))
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
