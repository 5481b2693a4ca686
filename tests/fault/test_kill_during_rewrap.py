"""kill -9 of `kms rewrap` at arbitrary instants, resumed each time: no row ever holds a value
that does not open, and the run completes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, select

import kms_client
from tests.support.process import clean_env, kms_command

ROWS = 6000


@pytest.fixture
def corpus(server_process, database_url):
    """A running server, and ROWS wrapped keys in an application table (SQLite or PostgreSQL),
    all under version 1 of a key that is now at version 2."""
    server = server_process.start()
    engine = create_engine(database_url)
    table = Table(
        "secrets",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String(8)),
        Column("wrapped", LargeBinary),
    )
    table.metadata.create_all(engine)
    with kms_client.KmsClient(server.target) as client:
        client.create_key("orders")
        for start in range(0, ROWS, 1000):
            issued = client.generate_data_keys(
                [("orders", {"tenant": f"t{i % 5}"}) for i in range(start, start + 1000)]
            )
            with engine.begin() as connection:
                connection.execute(
                    table.insert(),
                    [
                        {"id": start + i, "tenant": f"t{(start + i) % 5}", "wrapped": d.wrapped_key}
                        for i, d in enumerate(issued)
                    ],
                )
        client.rotate_key("orders")
    yield server, engine, table, database_url
    engine.dispose()


def _all_open(target: str, engine, table) -> list[int]:
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(table.c.id)).all()
    versions = []
    with kms_client.KmsClient(target) as client:
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            opened_all = client.decrypt_data_keys([(r.wrapped, {"tenant": r.tenant}) for r in chunk])
            for row, opened in zip(chunk, opened_all, strict=True):
                assert not isinstance(opened, Exception), (row.id, opened)
                versions.append(opened.key_version)
    return versions


def test_killed_rewrap_runs_resume_and_never_leave_a_broken_row(corpus, tmp_path):
    server, engine, table, url = corpus
    command = kms_command(
        "rewrap",
        "table",
        "--database-url",
        url,
        "--table",
        "secrets",
        "--column",
        "wrapped",
        "--primary-key",
        "id",
        "--context-column",
        "tenant=tenant",
        "--batch-size",
        "200",
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--report",
        str(tmp_path / "report.json"),
        "--target",
        server.target,
        "--json",
    )
    rng = random.Random(11)
    kills = 0
    for _attempt in range(8):
        process = subprocess.Popen(command, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.0))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        assert len(_all_open(server.target, engine, table)) == ROWS  # every row opens after every kill
    else:
        process = subprocess.Popen(command, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert kills >= 1
    report = json.loads(output)
    assert report["complete"] and report["failed"] == 0
    assert json.loads((tmp_path / "report.json").read_text())["complete"]
    assert set(_all_open(server.target, engine, table)) == {2}
