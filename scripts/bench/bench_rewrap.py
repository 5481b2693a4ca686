#!/usr/bin/env python
"""Re-wrap throughput: the streaming RPC and `kms rewrap`, beside the raw HSM.

    .venv/bin/python scripts/bench/bench_rewrap.py [--keys 20000] [--rows 20000] [--streams 1,2,4]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/kms_bench] [--million]

Measures, in one run on one server:
- the raw HSM unwrap+wrap rate through python-pkcs11 (1 and 2 threads): what a re-wrap costs
  inside the HSM and nothing else;
- StreamReWrap: ``--keys`` wrapped keys under version 1 of a key now at version 2, sent over
  1, 2 and 4 concurrent streams (items per second);
- `kms rewrap` (the corpus engine, kms.rewrap) over ``--rows`` rows of an application table on
  SQLite and on PostgreSQL: rows per second, verification and compare-and-set writes included;
- with ``--million``, one million wrapped keys through the streaming RPC, timed end to end.

Targets (issue 4): the streaming RPC reaches at least 60% of the raw HSM rate, and a million
wrapped keys re-wrap in under ten minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from _harness import (
    REPOSITORY,
    BenchServer,
    _create_postgres_database,
    _drop_postgres_database,
    print_table,
    write_json,
)
from _hsm_baseline import measure_wrap

from kms.crypto.context import encode_context
from kms.crypto.wrapped_key import WrappedKeyHeader
from kms.rewrap.job import JobOptions, RewrapJob
from kms.rewrap.table import TableSource
from kms_client import KmsClient, RetryPolicy

KEY_ID = "bench"
CONTEXT = {"tenant": "acme"}
TARGET_RATIO, MILLION_MINUTES = 0.60, 10.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows_out: list[list[str]] = []
    record: dict[str, object] = {"settings": vars(args)}
    with BenchServer() as server, KmsClient(server.target, retry=RetryPolicy(max_attempts=3), timeout=600) as client:
        key = client.create_key(KEY_ID)
        wrapped = issue(client, args.keys)
        rotated = client.rotate_key(KEY_ID)
        source, destination = key.versions[0].hsm_object_id, rotated.versions[1].hsm_object_id
        aad = WrappedKeyHeader(KEY_ID, 2).associated_data(encode_context(CONTEXT))
        raw = measure_wrap(server.data_dir, destination, aad, [1, 2], args.duration, unwrap_from=source)
        best_raw = max(m.rate for m in raw)
        for measurement in raw:
            rows_out.append([f"{measurement.name} x{measurement.concurrency}", f"{measurement.rate:.0f}", "-", "-"])
        record["raw_hsm_unwrap_wrap"] = {m.concurrency: m.rate for m in raw}

        streaming = {}
        for streams in args.streams:
            rate = stream_rewrap(client, wrapped, streams)
            streaming[streams] = rate
            rows_out.append(
                [
                    f"StreamReWrap, {streams} stream(s)",
                    f"{rate:.0f}",
                    f"{rate / best_raw:.0%}",
                    f"{1_000_000 / rate / 60:.1f} min",
                ]
            )
        record["stream_rewrap"] = streaming

        corpus = {}
        for name, url in databases(args):
            try:
                rate = table_rewrap(client, url, args.rows)
            finally:
                if url.startswith("postgresql"):
                    _drop_postgres_database(url)
            corpus[name] = rate
            rows_out.append(
                [
                    f"kms rewrap, table on {name}",
                    f"{rate:.0f}",
                    f"{rate / best_raw:.0%}",
                    f"{1_000_000 / rate / 60:.1f} min",
                ]
            )
        record["kms_rewrap_rows"] = corpus

        if args.million:
            seconds = million(client, max(args.streams))
            record["million_seconds"] = seconds
            rows_out.append(
                ["1,000,000 keys, StreamReWrap", f"{1_000_000 / seconds:.0f}", "-", f"{seconds / 60:.1f} min"]
            )

    print_table(
        "re-wrap throughput (raw HSM: best of its thread counts)",
        ["what", "items/s", "vs raw HSM", "1M would take"],
        rows_out,
    )
    best_stream = max(streaming.values())
    ratio = best_stream / best_raw
    print(
        f"\ntarget: StreamReWrap reaches {ratio:.0%} of the raw HSM unwrap+wrap rate (goal {TARGET_RATIO:.0%}): "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}"
    )
    projected = record.get("million_seconds") or 1_000_000 / best_stream
    print(
        f"target: one million wrapped keys in {projected / 60:.1f} min (goal under {MILLION_MINUTES:.0f}): "
        f"{'met' if projected / 60 < MILLION_MINUTES else 'NOT met'}"
        + ("" if args.million else " (projected from the measured rate; --million runs it)")
    )
    record["targets"] = {"stream_vs_raw": ratio, "million_minutes": projected / 60}
    path = write_json("rewrap", record)
    print(f"wrote {path.relative_to(REPOSITORY)}")
    return 0


def issue(client: KmsClient, count: int) -> list[bytes]:
    wrapped: list[bytes] = []
    while len(wrapped) < count:
        batch = min(1000, count - len(wrapped))
        wrapped += [d.wrapped_key for d in client.generate_data_keys([(KEY_ID, CONTEXT)] * batch)]
    return wrapped


def stream_rewrap(client: KmsClient, wrapped: list[bytes], streams: int) -> float:
    """Items per second, ``streams`` streams sharing the items, all started together."""
    share = [wrapped[i::streams] for i in range(streams)]
    done, failures = [0] * streams, []

    def run(index: int) -> None:
        for result in client.stream_rewrap((w, CONTEXT) for w in share[index]):
            if isinstance(result, Exception):
                failures.append(result)
            done[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures or sum(done) != len(wrapped):
        raise RuntimeError(f"stream re-wrap failed: {failures[:3]}")
    return len(wrapped) / elapsed


def databases(args: argparse.Namespace) -> list[tuple[str, str]]:
    found = [("SQLite", f"sqlite:///{Path(tempfile.mkdtemp(prefix='kms-bench-app-')) / 'app.db'}")]
    if args.postgres_url:
        found.append(("PostgreSQL", _create_postgres_database(args.postgres_url)))
    return found


def table_rewrap(client: KmsClient, url: str, rows: int) -> float:
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine

    engine = create_engine(url)
    table = Table(
        "secrets",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String(16)),
        Column("wrapped", LargeBinary),
    )
    table.metadata.create_all(engine)
    version_before = client.get_key(KEY_ID).primary_version
    for start in range(0, rows, 1000):
        issued = client.generate_data_keys([(KEY_ID, CONTEXT)] * min(1000, rows - start))
        with engine.begin() as connection:
            connection.execute(
                table.insert(),
                [
                    {"id": start + i, "tenant": CONTEXT["tenant"], "wrapped": d.wrapped_key}
                    for i, d in enumerate(issued)
                ],
            )
    client.rotate_key(KEY_ID)
    assert client.get_key(KEY_ID).primary_version == version_before + 1
    source = TableSource(url, "secrets", "wrapped", "id", context_columns={"tenant": "tenant"}, engine=engine)
    started = time.perf_counter()
    report = RewrapJob(client, source, JobOptions(batch_size=1000)).run()
    elapsed = time.perf_counter() - started
    engine.dispose()
    if report.rewrapped != rows:
        raise RuntimeError(f"kms rewrap re-wrapped {report.rewrapped} of {rows}: {report.failures}")
    return rows / elapsed


def million(client: KmsClient, streams: int) -> float:
    """Seconds to re-wrap one million wrapped keys (issued first, not timed)."""
    wrapped = issue(client, 1_000_000)
    client.rotate_key(KEY_ID)
    started = time.perf_counter()
    stream_rewrap(client, wrapped, streams)
    return time.perf_counter() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000, help="wrapped keys per streaming measurement")
    parser.add_argument("--rows", type=int, default=20_000, help="table rows per kms rewrap measurement")
    parser.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds for the raw HSM measurement")
    parser.add_argument(
        "--postgres-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/kms_bench",
        help="server and name prefix of a throwaway PostgreSQL database ('' to skip)",
    )
    parser.add_argument("--million", action="store_true", help="also re-wrap one million keys, end to end")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
