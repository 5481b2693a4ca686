"""kms rewrap over a table: 100,000 rows on SQLite and on PostgreSQL, interrupted and resumed,
while the application keeps writing."""

from __future__ import annotations

import json
import random
import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, select, update

from kms.cli.main import cli
from kms.rewrap.job import JobOptions, RewrapJob
from kms.rewrap.table import TableSource
from kms_client import KmsClient

# Enough rows for many batches and a resume mid-way; throughput is the benchmark's business.
ROWS = 12_000


class Interrupted(Exception):
    pass


def make_table(url: str) -> tuple:
    engine = create_engine(url)
    table = Table(
        "secrets",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String(16), nullable=False),
        Column("wrapped", LargeBinary),
    )
    table.metadata.create_all(engine)
    return engine, table


def fill(client, engine, table, count: int) -> None:
    for start in range(0, count, 1000):
        ids = range(start, min(start + 1000, count))
        issued = client.generate_data_keys([("orders", {"tenant": f"t{i % 13}"}) for i in ids])
        with engine.begin() as connection:
            connection.execute(
                table.insert(),
                [{"id": i, "tenant": f"t{i % 13}", "wrapped": d.wrapped_key} for i, d in zip(ids, issued, strict=True)],
            )


def all_rows(engine, table) -> list:
    with engine.connect() as connection:
        return connection.execute(select(table).order_by(table.c.id)).all()


def assert_all_open_under(client, rows, version: int) -> None:
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        opened = client.decrypt_data_keys([(r.wrapped, {"tenant": r.tenant}) for r in chunk])
        assert all(getattr(o, "key_version", None) == version for o in opened), [
            o for o in opened if getattr(o, "key_version", None) != version
        ][:3]


@pytest.fixture(params=["sqlite", "postgresql"])
def app_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.mark.slow
def test_interrupted_run_resumes_and_leaves_every_row_opening_under_the_primary(client, app_database, tmp_path):
    client.create_key("orders")
    engine, table = make_table(app_database)
    fill(client, engine, table, ROWS)
    client.rotate_key("orders")
    source = TableSource(app_database, "secrets", "wrapped", "id", context_columns={"tenant": "tenant"})
    options = JobOptions(batch_size=500, checkpoint=tmp_path / "checkpoint.json")

    # The application keeps writing while the job runs: fresh values, and rows it rewrites
    # with a value that must not be overwritten by the job.
    stop = threading.Event()
    app_writes: dict[int, bytes] = {}

    def application() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            row_id = rng.randrange(ROWS)
            fresh = client.generate_data_key("orders", {"tenant": f"t{row_id % 13}"}).wrapped_key
            with engine.begin() as connection:
                connection.execute(update(table).where(table.c.id == row_id).values(wrapped=fresh))
            app_writes[row_id] = fresh

    writer = threading.Thread(target=application)
    writer.start()
    batches = 0

    def interrupt_after_10_batches(count: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 10:
            raise Interrupted()

    try:
        with pytest.raises(Interrupted):
            RewrapJob(client, source, options, on_progress=interrupt_after_10_batches).run()
        first = RewrapJob(client, source, options)  # resumes from the checkpoint
        report = first.run()
    finally:
        stop.set()
        writer.join()

    assert report.complete and report.failed == 0
    assert report.scanned == ROWS  # resumed, not restarted: the first 10 batches are not read again
    assert report.rewrapped + report.already_current + report.changed_concurrently == ROWS
    rows = all_rows(engine, table)
    for row_id, value in app_writes.items():
        assert rows[row_id].wrapped == value  # the application's writes survived
    assert_all_open_under(client, rows, version=2)

    # Running again changes nothing and asks the service nothing.
    again = RewrapJob(client, source, JobOptions(batch_size=1000)).run()
    assert (again.already_current, again.rewrapped, again.failed) == (ROWS, 0, 0)


@pytest.mark.slow
def test_parallel_lanes_commit_in_order_and_a_resumed_run_finishes_the_table(client, server, app_database, tmp_path):
    """--parallel: batches run at once over several connections while the application writes;
    the checkpoint only moves past batches that are written, with every batch before them, so
    after an interruption every row up to it is done and a resumed run finishes the rest."""
    client.create_key("orders")
    engine, table = make_table(app_database)
    fill(client, engine, table, ROWS // 2)
    client.rotate_key("orders")
    source = TableSource(app_database, "secrets", "wrapped", "id", context_columns={"tenant": "tenant"})
    checkpoint = tmp_path / "checkpoint.json"
    options = JobOptions(batch_size=300, checkpoint=checkpoint, parallel=4)
    lanes = [KmsClient(server.target, timeout=30, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    stop = threading.Event()
    app_writes: dict[int, bytes] = {}

    def application() -> None:
        rng = random.Random(3)
        while not stop.is_set():
            row_id = rng.randrange(ROWS // 2)
            fresh = client.generate_data_key("orders", {"tenant": f"t{row_id % 13}"}).wrapped_key
            with engine.begin() as connection:
                connection.execute(update(table).where(table.c.id == row_id).values(wrapped=fresh))
            app_writes[row_id] = fresh

    committed = []

    def interrupt_after_7_batches(count: int) -> None:
        committed.append(count)
        if len(committed) == 7:
            raise Interrupted()

    writer = threading.Thread(target=application)
    writer.start()
    try:
        with pytest.raises(Interrupted):
            RewrapJob(client, source, options, on_progress=interrupt_after_7_batches, lanes=lanes).run()
        saved = json.loads(checkpoint.read_text())
        assert saved["position"] == 7 * 300 - 1  # ids 0..2099: the seventh batch in order
        assert saved["report"]["scanned"] == 7 * 300
        done = [row for row in all_rows(engine, table) if row.id <= saved["position"]]
        assert_all_open_under(client, done, version=2)  # every row behind the checkpoint is done
        report = RewrapJob(client, source, options, lanes=lanes).run()
    finally:
        stop.set()
        writer.join()
        for lane in lanes:
            lane.close()

    assert report.complete and report.failed == 0
    assert report.scanned == ROWS // 2  # counted once each, across both runs
    assert report.rewrapped + report.already_current + report.changed_concurrently == ROWS // 2
    rows = all_rows(engine, table)
    for row_id, value in app_writes.items():
        assert rows[row_id].wrapped == value  # the application's writes survived
    assert_all_open_under(client, rows, version=2)


def test_the_parallel_option_of_kms_rewrap_table(client, server, tmp_path):
    client.create_key("orders")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine, table = make_table(url)
    fill(client, engine, table, 2000)
    client.rotate_key("orders")
    arguments = ["rewrap", "table", "--database-url", url, "--table", "secrets", "--column", "wrapped"]
    arguments += ["--primary-key", "id", "--context-column", "tenant=tenant", "--batch-size", "100"]
    arguments += ["--checkpoint", str(tmp_path / "ck.json"), "--report", str(tmp_path / "report.json")]
    arguments += ["--target", server.target]

    refused = CliRunner().invoke(cli, [*arguments, "--parallel", "0"])
    assert refused.exit_code == 2 and "--parallel" in refused.output
    ran = CliRunner().invoke(cli, [*arguments, "--parallel", "3"])
    assert ran.exit_code == 0, ran.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["scanned"], report["rewrapped"], report["failed"], report["complete"]) == (2000, 2000, 0, True)
    assert_all_open_under(client, all_rows(engine, table), version=2)


def test_failures_are_counted_with_reasons_and_do_not_stop_the_run(client, tmp_path):
    client.create_key("orders")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine, table = make_table(url)
    fill(client, engine, table, 50)
    with engine.begin() as connection:
        connection.execute(update(table).where(table.c.id == 3).values(wrapped=b"not a wrapped key"))
        connection.execute(update(table).where(table.c.id == 4).values(tenant="somebody-else"))
    client.rotate_key("orders")
    report = RewrapJob(client, TableSource(url, "secrets", "wrapped", "id", context_columns={"tenant": "tenant"})).run()
    assert (report.rewrapped, report.failed) == (48, 2)
    assert report.failures == {"neither a wrapped key nor an SDK ciphertext": 1, "InvalidCiphertext": 1}
    assert report.remaining == {"orders": {"1": 1}}


def test_dry_run_writes_nothing(client, tmp_path):
    client.create_key("orders")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine, table = make_table(url)
    fill(client, engine, table, 20)
    client.rotate_key("orders")
    before = all_rows(engine, table)
    report = RewrapJob(
        client,
        TableSource(url, "secrets", "wrapped", "id", context_columns={"tenant": "tenant"}),
        JobOptions(dry_run=True),
    ).run()
    assert (report.rewrapped, report.dry_run) == (20, True)
    assert all_rows(engine, table) == before
