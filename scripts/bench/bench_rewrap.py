#!/usr/bin/env python
"""Re-wrap throughput: the streaming RPC and `kms rewrap`, beside the raw HSM.

    .venv/bin/python scripts/bench/bench_rewrap.py [--keys 20000] [--rows 50000] [--streams 1,2,4]
        [--parallel 4] [--workers 2] [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/kms_bench]
        [--million]

Measures, in one run, on a server of one process and then (``--workers N``, 0 to skip) on
``kms serve --workers N``:

- the raw HSM unwrap+wrap rate through python-pkcs11 (1 and 2 threads, each on its own session,
  in a process of its own, with AES-256 session keys as the server's WRAPPED versions are): what
  a re-wrap costs inside the HSM and nothing else. The best of the two is the reference;
- StreamReWrap: ``--keys`` wrapped keys under version 1 of a key now at version 2, sent over
  1, 2 and 4 concurrent streams, each on a connection of its own (items per second, and the
  server's CPU time per item: every process of the server, the audit writer included);
- `kms rewrap` (the corpus engine, kms.rewrap, as the CLI runs it with ``--parallel``) over
  ``--rows`` rows of an application table on SQLite and on PostgreSQL: rows per second,
  verification and compare-and-set writes included, and the time one million rows would take at
  that rate (extrapolated: the rate does not depend on the table's size, since each batch is one
  indexed range read and one write);
- with ``--million``, one million wrapped keys through the streaming RPC, timed end to end.

Targets (issue 13): StreamReWrap reaches at least 60% of the raw HSM rate; `kms rewrap` would do
one million rows on PostgreSQL in under five minutes.

Everything shares this machine's cores: the client (this process) and, for the tables, the
database run beside the server. Read the ratios; absolute rates move with the machine's load.
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
    _cpu_seconds,
    _create_postgres_database,
    _drop_postgres_database,
    print_table,
    write_json,
)
from _hsm_baseline import SESSION_KEY, measure_wrap

from kms.crypto.context import encode_context
from kms.crypto.wrapped_key import WrappedKeyHeader
from kms.rewrap.job import JobOptions, RewrapJob
from kms.rewrap.table import TableSource
from kms_client import KmsClient, RetryPolicy

KEY_ID = "bench"
CONTEXT = {"tenant": "acme"}
TARGET_RATIO, TARGET_MILLION_MINUTES = 0.60, 5.0
WORKERS_LAUNCHER = Path(__file__).resolve().with_name("_serve_workers.py")
# Each channel on a connection of its own (gRPC shares one per target otherwise): a worker
# process serves whole connections.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows_out: list[list[str]] = []
    record: dict[str, object] = {"settings": vars(args)}
    servers = [("1 process", {})]
    if args.workers > 1:
        servers.append(
            (f"{args.workers} workers", {"launcher": WORKERS_LAUNCHER, "launcher_args": [str(args.workers)]})
        )
    verdicts: list[str] = []
    for label, launch in servers:
        measured = measure_server(args, label, launch, rows_out)
        record[label] = measured
        verdicts += judge(label, measured, args)
    print_table(
        "re-wrap throughput (vs raw HSM: over the best raw HSM rate measured on the same server's token)",
        ["server", "what", "items/s", "vs raw HSM", "server CPU us/item", "1M would take"],
        rows_out,
    )
    print()
    for line in verdicts:
        print(line)
    path = write_json("rewrap", record)
    print(f"wrote {path.relative_to(REPOSITORY)}")
    return 0


def measure_server(args: argparse.Namespace, label: str, launch: dict, rows_out: list[list[str]]) -> dict:
    # One identity opens every stream here: allow it as many as the widest measurement.
    env = {"KMS_MAX_STREAMS_PER_IDENTITY": str(max(args.streams)), "KMS_MAX_STREAMS": str(2 * max(args.streams))}
    measured: dict[str, object] = {}
    with (
        BenchServer(env=env, **launch) as server,
        KmsClient(server.target, retry=RetryPolicy(max_attempts=3), timeout=600) as client,
    ):
        key = client.create_key(KEY_ID)
        wrapped = issue(client, args.keys)
        rotated = client.rotate_key(KEY_ID)
        before, after = key.versions[0], rotated.versions[1]
        # A WRAPPED version (the default) is a session object in the server: its baseline uses
        # session keys generated in the child, which cost the HSM the same.
        source = SESSION_KEY if before.storage == "WRAPPED" else before.hsm_object_id
        destination = None if after.storage == "WRAPPED" else after.hsm_object_id
        aad = WrappedKeyHeader(KEY_ID, 2).associated_data(encode_context(CONTEXT))
        raw = measure_wrap(server.data_dir, destination, aad, [1, 2], args.duration, unwrap_from=source)
        best_raw = max(m.rate for m in raw)
        for m in raw:
            us = f"{1e6 * m.server_cpu / m.rate:.0f}" if m.server_cpu else "-"
            rows_out.append([label, f"{m.name} x{m.concurrency}", f"{m.rate:.0f}", "-", us, "-"])
        measured["raw_hsm_unwrap_wrap"] = {m.concurrency: m.rate for m in raw}
        measured["best_raw"] = best_raw

        streaming: dict[int, dict[str, float]] = {}
        for streams in args.streams:
            rate, cpu_us = stream_rewrap(server, wrapped, streams)
            streaming[streams] = {"rate": rate, "ratio": rate / best_raw, "server_cpu_us_per_item": cpu_us}
            rows_out.append(
                [
                    label,
                    f"StreamReWrap, {streams} stream(s)",
                    f"{rate:.0f}",
                    f"{rate / best_raw:.0%}",
                    f"{cpu_us:.0f}",
                    minutes(rate),
                ]
            )
        measured["stream_rewrap"] = streaming

        corpus: dict[str, dict[str, float]] = {}
        for name, url in databases(args):
            try:
                rate, cpu_us, job_us = table_rewrap(client, server, url, args.rows, args.parallel)
            finally:
                if url.startswith("postgresql"):
                    _drop_postgres_database(url)
            corpus[name] = {
                "rows_per_second": rate,
                "server_cpu_us_per_row": cpu_us,
                "job_cpu_us_per_row": job_us,
                "rows": args.rows,
            }
            rows_out.append(
                [
                    label,
                    f"kms rewrap --parallel {args.parallel}, {args.rows} rows on {name}",
                    f"{rate:.0f}",
                    f"{rate / best_raw:.0%}",
                    f"{cpu_us:.0f} (job: {job_us:.0f})",
                    minutes(rate) + " (extrapolated)",
                ]
            )
        measured["kms_rewrap_rows"] = corpus

        if args.million:
            seconds = million(client, server, max(args.streams))
            measured["million_seconds"] = seconds
            rows_out.append(
                [
                    label,
                    "1,000,000 keys, StreamReWrap",
                    f"{1_000_000 / seconds:.0f}",
                    "-",
                    "-",
                    f"{seconds / 60:.1f} min",
                ]
            )
    return measured


def judge(label: str, measured: dict, args: argparse.Namespace) -> list[str]:
    streaming = measured["stream_rewrap"]
    ratios = ", ".join(f"{n} stream(s) {s['ratio']:.0%}" for n, s in streaming.items())
    best = max(s["ratio"] for s in streaming.values())
    verdict = "met" if best >= TARGET_RATIO else "NOT met"
    lines = [f"{label}: StreamReWrap / raw HSM: {ratios} (goal {TARGET_RATIO:.0%}): {verdict}"]
    postgres = measured["kms_rewrap_rows"].get("PostgreSQL")
    if postgres:
        projected = 1_000_000 / postgres["rows_per_second"] / 60
        lines.append(
            f"{label}: kms rewrap, one million rows on PostgreSQL: {projected:.1f} min, extrapolated from "
            f"{args.rows} rows (goal under {TARGET_MILLION_MINUTES:.0f}): "
            f"{'met' if projected < TARGET_MILLION_MINUTES else 'NOT met'}"
        )
    return lines


def minutes(rate: float) -> str:
    return f"{1_000_000 / rate / 60:.1f} min"


def issue(client: KmsClient, count: int) -> list[bytes]:
    wrapped: list[bytes] = []
    while len(wrapped) < count:
        batch = min(1000, count - len(wrapped))
        wrapped += [d.wrapped_key for d in client.generate_data_keys([(KEY_ID, CONTEXT)] * batch)]
    return wrapped


def stream_rewrap(server: BenchServer, wrapped: list[bytes], streams: int) -> tuple[float, float]:
    """Items per second and server CPU microseconds per item, ``streams`` streams sharing the
    items, all started together, each on a connection of its own."""
    share = [wrapped[i::streams] for i in range(streams)]
    clients = [KmsClient(server.target, timeout=600, options=OWN_CONNECTION) for _ in range(streams)]
    done, failures = [0] * streams, []

    def run(index: int) -> None:
        try:
            for result in clients[index].stream_rewrap((w, CONTEXT) for w in share[index]):
                if isinstance(result, Exception):
                    failures.append(result)
                done[index] += 1
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(error)

    try:
        for client in clients:  # connect first, so that connecting is not timed
            client.list_keys()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
        cpu_before, started = _cpu_seconds(server.pid, True), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds(server.pid, True)
    finally:
        for client in clients:
            client.close()
    if failures or sum(done) != len(wrapped):
        raise RuntimeError(f"stream re-wrap failed: {failures[:3]}")
    return len(wrapped) / elapsed, 1e6 * ((cpu or 0) - (cpu_before or 0)) / len(wrapped)


def databases(args: argparse.Namespace) -> list[tuple[str, str]]:
    found = [("SQLite", f"sqlite:///{Path(tempfile.mkdtemp(prefix='kms-bench-app-')) / 'app.db'}")]
    if args.postgres_url:
        found.append(("PostgreSQL", _create_postgres_database(args.postgres_url)))
    return found


def table_rewrap(
    client: KmsClient, server: BenchServer, url: str, rows: int, parallel: int
) -> tuple[float, float, float]:
    """Rows per second of RewrapJob as `kms rewrap table --parallel` runs it, and the server's and
    the job's (this process's) CPU microseconds per row."""
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
    lanes = [KmsClient(server.target, timeout=600, options=OWN_CONNECTION) for _ in range(parallel)]
    options = JobOptions(batch_size=1000, parallel=parallel, checkpoint=Path(tempfile.mkdtemp()) / "checkpoint.json")
    try:
        cpu_before, started, mine = _cpu_seconds(server.pid, True), time.perf_counter(), time.process_time()
        report = RewrapJob(client, source, options, lanes=lanes).run()
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds(server.pid, True)
        mine = time.process_time() - mine
    finally:
        for lane in lanes:
            lane.close()
        engine.dispose()
    if report.rewrapped != rows:
        raise RuntimeError(f"kms rewrap re-wrapped {report.rewrapped} of {rows}: {report.failures}")
    return rows / elapsed, 1e6 * ((cpu or 0) - (cpu_before or 0)) / rows, 1e6 * mine / rows


def million(client: KmsClient, server: BenchServer, streams: int) -> float:
    """Seconds to re-wrap one million wrapped keys (issued first, not timed)."""
    wrapped = issue(client, 1_000_000)
    client.rotate_key(KEY_ID)
    started = time.perf_counter()
    stream_rewrap(server, wrapped, streams)
    return time.perf_counter() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000, help="wrapped keys per streaming measurement")
    parser.add_argument("--rows", type=int, default=50_000, help="table rows per kms rewrap measurement")
    parser.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    parser.add_argument("--parallel", type=int, default=4, help="kms rewrap --parallel (batches at once)")
    parser.add_argument(
        "--workers", type=int, default=2, help="also measure on kms serve --workers N (0 or 1: one process only)"
    )
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
