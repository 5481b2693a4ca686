#!/usr/bin/env python3
"""Erasure per data subject at scale, measured in one run (docs/privacy.md, "Scale").

    .venv/bin/python scripts/bench/bench_privacy.py                    # ~2 minutes, 1M rows
    .venv/bin/python scripts/bench/bench_privacy.py --rows 100000      # shorter: extrapolated to 1M
    .venv/bin/python scripts/bench/bench_privacy.py --rounds 3         # for decisions

One server (BenchServer: its own SoftHSM token; PostgreSQL by default, a fresh database dropped
at the end), two keys with HSM_OBJECT versions: ``plain`` and ``people`` (subject_field
``user_id``). Then:

1. **Known subject vs plain**: GenerateDataKey, then Decrypt, on each key at each concurrency,
   one cell after the other in the same run. The subject key's contexts name ``--subjects``
   subjects (default 256), all used once before timing, so each is known (its key in the
   server's memory); the plain key's contexts are the same size. The issue's target: the subject
   key at 80% or more of the plain key's GenerateDataKey rate.
2. **First use of a new subject**: GenerateDataKey where every call names a subject never seen
   (one HSM wrap and one INSERT each), at each concurrency; then the rows created are counted.
3. **EraseSubject**: ``--erasures`` subjects with a key, erased one after the other by one
   client; latency percentiles (each is one transaction, a ledger entry and an HSM anchor).
4. **Carrying**: ``--carry-subjects`` more subjects are given a key, the key is rotated, and the
   scheduler (every second here) carries every subject onto the new version (one HSM re-wrap
   each, batches of 500); subjects per second once the first batch is in.
5. **Database size**: ``--rows`` subject rows (random digests, 60-byte wrapped keys: exactly the
   shape the service writes) are inserted directly with COPY; the growth of ``subject_keys``
   (table, primary key, carry index) is reported per row and per million. Then the first-use
   and known-subject cells run once more, with those rows in the table.
6. **Memory**: the bytes one cached subject key costs the server (its LRU entry), measured with
   tracemalloc on the service's own structures in this process.

Read ratios, not absolutes: the machine is shared (scripts/bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import time
import tracemalloc
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
from _harness import BenchServer, LoadGenerator, Measurement, Rpc, print_table, write_json
from sqlalchemy.engine import make_url

from kms.service.subjects import _Entry
from kms_client import KmsClient
from kms_proto.kms.v1 import kms_pb2 as pb

GENERATE = "/kms.v1.KeyManagementService/GenerateDataKey"
DECRYPT = "/kms.v1.KeyManagementService/Decrypt"
PLAIN, PEOPLE = "plain", "people"
TARGET = 0.8
MILLION = 1_000_000
DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/kms_bench"


def subject_context(subject: str) -> dict[str, str]:
    return {"user_id": subject, "table": "orders"}


def plain_context(n: int) -> dict[str, str]:
    return {"tenant": f"t{n:06d}", "table": "orders"}  # the same size as a subject's context


def generate(key_id: str, context: dict[str, str]) -> bytes:
    return pb.GenerateDataKeyRequest(key_id=key_id, encryption_context=context).SerializeToString()


def decrypt(wrapped: bytes, context: dict[str, str]) -> bytes:
    return pb.DecryptRequest(wrapped_key=wrapped, encryption_context=context).SerializeToString()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[list[object]] = []
    cells: list[dict] = []
    ratios: dict[str, list[float]] = {"GenerateDataKey": [], "Decrypt": []}
    figures: dict[str, object] = {}
    env = {"KMS_MAX_WORKERS": "8", "KMS_SCHEDULER_INTERVAL": "1s"}
    with BenchServer(database_url=args.database_url, env=env) as server:
        dsn = make_url(server.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with KmsClient(server.target) as client:
            client.create_key(PLAIN, storage="HSM_OBJECT")
            client.create_key(PEOPLE, subject_field="user_id")
            known = [f"known-{n:06d}" for n in range(args.subjects)]
            hot = {
                PLAIN: [(client.generate_data_key(PLAIN, plain_context(n)), plain_context(n)) for n in range(256)],
                PEOPLE: [(client.generate_data_key(PEOPLE, subject_context(s)), subject_context(s)) for s in known],
            }
        requests = {
            (PLAIN, "GenerateDataKey"): Rpc(GENERATE, tuple(generate(PLAIN, c) for _, c in hot[PLAIN])),
            (PEOPLE, "GenerateDataKey"): Rpc(GENERATE, tuple(generate(PEOPLE, c) for _, c in hot[PEOPLE])),
            (PLAIN, "Decrypt"): Rpc(DECRYPT, tuple(decrypt(d.wrapped_key, c) for d, c in hot[PLAIN])),
            (PEOPLE, "Decrypt"): Rpc(DECRYPT, tuple(decrypt(d.wrapped_key, c) for d, c in hot[PEOPLE])),
        }
        fresh = 0  # subjects handed out for first use so far

        def new_subjects(concurrency: int, label: str) -> Rpc:
            nonlocal fresh
            # Far more than a caller can use in a cell: each caller walks a stretch of its own,
            # so that no subject is used twice.
            count = 40_000
            batch = tuple(generate(PEOPLE, subject_context(f"new-{label}-{fresh + n:07d}")) for n in range(count))
            fresh += count
            return Rpc(GENERATE, batch, stride=count // concurrency)

        with LoadGenerator(server.target, processes=1, server_pid=server.pid) as load:

            def cell(name: str, rpc: Rpc, concurrency: int, round_number: int) -> Measurement:
                measured = load.run(name, rpc, concurrency, args.duration, args.warmup)
                if measured.errors:
                    print(f"errors in {name}: {measured.first_error}", file=sys.stderr)
                cells.append({"round": round_number, **measured.summary()})
                return measured

            def known_vs_plain(round_number: int, suffix: str = "") -> None:
                for concurrency in args.concurrency:
                    for method in ("GenerateDataKey", "Decrypt"):
                        plain = cell(f"{method} plain{suffix}", requests[(PLAIN, method)], concurrency, round_number)
                        subject = cell(
                            f"{method} known subject{suffix}", requests[(PEOPLE, method)], concurrency, round_number
                        )
                        ratio = subject.rate / plain.rate if plain.rate else 0.0
                        if not suffix:
                            ratios[method].append(ratio)
                        cells[-1]["vs_plain"] = ratio
                        rows.append(_row(round_number, plain, None))
                        rows.append(_row(round_number, subject, ratio))

            def first_use(round_number: int, suffix: str = "") -> None:
                for concurrency in args.concurrency:
                    before = _count_subjects(dsn)
                    measured = cell(
                        f"GenerateDataKey new subject{suffix}",
                        new_subjects(concurrency, f"{round_number}{suffix}"),
                        concurrency,
                        round_number,
                    )
                    made = _count_subjects(dsn) - before
                    cells[-1]["rows_created"] = made
                    rows.append(_row(round_number, measured, None, note=f"{made} new rows"))

            for round_number in range(1, args.rounds + 1):
                known_vs_plain(round_number)
                first_use(round_number)

            figures["erase"] = erase_latency(server.target, args.erasures)
            figures["carry"] = carry_rate(server.target, dsn, args.carry_subjects)
            figures["size"] = database_size(dsn, args.rows)
            known_vs_plain(args.rounds + 1, suffix=f", {figures['size']['rows_in_table']:,} rows")
            first_use(args.rounds + 1, suffix=f", {figures['size']['rows_in_table']:,} rows")
    figures["memory"] = cache_entry_bytes()

    print_table(
        "GenerateDataKey and Decrypt: known subject vs plain key, and first use of a new subject",
        ["round: cell", "callers", "calls/s", "p50 ms", "p99 ms", "vs plain", "server CPU", ""],
        rows,
    )
    erase, carry, size, memory = figures["erase"], figures["carry"], figures["size"], figures["memory"]
    print(
        f"\nEraseSubject, {erase['count']} in a row, one client: p50 {erase['p50_ms']:.1f} ms, "
        f"p99 {erase['p99_ms']:.1f} ms, {erase['per_second']:.0f}/s"
    )
    print(f"carrying {carry['subjects']:,} subjects onto a new version: {carry['per_second']:,.0f} subjects/s")
    print(
        f"subject_keys on PostgreSQL, {size['inserted']:,} rows inserted (COPY, {size['insert_seconds']:.1f}s): "
        f"{size['bytes_per_row']:.0f} bytes per subject (table {size['table_bytes_per_row']:.0f}, "
        f"indexes {size['index_bytes_per_row']:.0f}) = {size['per_million_bytes'] / 2**20:,.0f} MiB per million "
        "subjects" + (" (measured)" if size["inserted"] >= MILLION else f" (extrapolated from {size['inserted']:,})")
    )
    print(
        f"server memory per cached subject key: {memory['bytes_per_entry']:.0f} bytes "
        f"(default cache of 100,000: {memory['bytes_per_entry'] * 100_000 / 2**20:.0f} MiB)"
    )
    worst = min(ratios["GenerateDataKey"], default=0.0)
    verdict = "met" if worst >= TARGET else "missed"
    print(
        f"\nGenerateDataKey, known subject vs plain key: worst {worst:.0%}, best "
        f"{max(ratios['GenerateDataKey'], default=0.0):.0%} (target {TARGET:.0%}: {verdict}); Decrypt: worst "
        f"{min(ratios['Decrypt'], default=0.0):.0%}"
    )
    path = write_json("privacy", {"cells": cells, "target": TARGET, "worst_ratio": worst, **figures})
    print(f"results: {path}")
    return 0 if all(cell.get("errors", 0) == 0 for cell in cells) else 1


def erase_latency(target: str, count: int) -> dict[str, float]:
    """``count`` subjects given a key, then erased one after the other."""
    subjects = [f"erase-{n:06d}" for n in range(count)]
    latencies = []
    with KmsClient(target) as client:
        for subject in subjects:
            client.generate_data_key(PEOPLE, subject_context(subject))
        started_all = time.perf_counter()
        for subject in subjects:
            started = time.perf_counter()
            receipt = client.erase_subject(PEOPLE, subject)
            latencies.append(time.perf_counter() - started)
            assert receipt.subject_known
        elapsed = time.perf_counter() - started_all
    latencies.sort()
    return {
        "count": count,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "per_second": count / elapsed,
    }


def carry_rate(target: str, dsn: str, extra: int) -> dict[str, float]:
    """Gives ``extra`` more subjects a key (BatchGenerateDataKey, 100 a call, 4 calls at once),
    rotates the subject key, and times the scheduler carrying every subject onto the new version:
    from the first batch seen committed until no row is left on an older version, so that the
    wait for the scheduler's next pass is not counted (the first batch is not either)."""
    with KmsClient(target) as client:
        names = [f"carry-{n:07d}" for n in range(extra)]
        chunks = [names[n : n + 100] for n in range(0, len(names), 100)]
        with ThreadPoolExecutor(4) as pool:
            for outcomes in pool.map(
                lambda chunk: client.generate_data_keys([(PEOPLE, subject_context(s)) for s in chunk]), chunks
            ):
                assert not any(isinstance(outcome, Exception) for outcome in outcomes), outcomes
        subjects = _count_subjects(dsn)
        rotated = time.perf_counter()
        primary = client.rotate_key(PEOPLE).primary_version
        first: tuple[float, int] | None = None
        while remaining := _count_subjects(dsn, below=primary):
            if first is None and remaining < subjects:
                first = (time.perf_counter(), remaining)
            time.sleep(0.02)
        done = time.perf_counter()
    if first is None or done - first[0] < 0.1:  # all in one batch: the whole wait is all there is
        return {"subjects": subjects, "seconds": done - rotated, "per_second": subjects / (done - rotated)}
    return {"subjects": subjects, "seconds": done - first[0], "per_second": first[1] / (done - first[0])}


def database_size(dsn: str, count: int) -> dict[str, float]:
    """Inserts ``count`` rows shaped as the service writes them (random 32-byte digests, so the
    indexes fill as under real first uses) and reports what subject_keys grew by."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        version = connection.execute("SELECT primary_version FROM keys WHERE key_id = %s", (PEOPLE,)).fetchone()[0]
        connection.execute("VACUUM ANALYZE subject_keys")
        before = _sizes(connection)
        started = time.perf_counter()
        now = datetime.now(UTC)
        written = 0
        with connection.cursor() as cursor:
            while written < count:
                chunk = min(100_000, count - written)
                buffer = io.BytesIO()
                for _ in range(chunk):
                    buffer.write(
                        f"{PEOPLE}\t\\\\x{os.urandom(32).hex()}\t{version}\t\\\\x{os.urandom(60).hex()}\t".encode()
                    )
                    buffer.write(f"{now.isoformat()}\n".encode())
                with cursor.copy(
                    "COPY subject_keys (key_id, subject_digest, version, wrapped, create_time) FROM STDIN"
                ) as copy:
                    copy.write(buffer.getvalue())
                written += chunk
        elapsed = time.perf_counter() - started
        connection.execute("VACUUM ANALYZE subject_keys")
        # Written out now, so that the cells measured next do not share the disk with the
        # checkpoint of a bulk load no application would ever do at once.
        connection.execute("CHECKPOINT")
        after = _sizes(connection)
        total = connection.execute("SELECT count(*) FROM subject_keys").fetchone()[0]
    table = after["table"] - before["table"]
    indexes = after["indexes"] - before["indexes"]
    per_row = (table + indexes) / count
    return {
        "inserted": count,
        "rows_in_table": total,
        "insert_seconds": elapsed,
        "table_bytes_per_row": table / count,
        "index_bytes_per_row": indexes / count,
        "bytes_per_row": per_row,
        "per_million_bytes": per_row * MILLION,
        "total_bytes_after": after["table"] + after["indexes"],
    }


def _sizes(connection: psycopg.Connection) -> dict[str, int]:
    table, indexes = connection.execute(
        "SELECT pg_table_size('subject_keys'), pg_indexes_size('subject_keys')"
    ).fetchone()
    return {"table": table, "indexes": indexes}


def _count_subjects(dsn: str, below: int | None = None) -> int:
    query = "SELECT count(*) FROM subject_keys WHERE key_id = %s"
    params: tuple[object, ...] = (PEOPLE,)
    if below is not None:
        query += " AND version < %s"
        params += (below,)
    with psycopg.connect(dsn) as connection:
        return connection.execute(query, params).fetchone()[0]


def cache_entry_bytes(count: int = 50_000) -> dict[str, float]:
    """What the server's LRU holds per subject (kms.service.subjects.SubjectKeys: an OrderedDict
    from (key id, hex digest) to an _Entry with a 32-byte bytearray), built here as it builds it."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
    for _ in range(count):
        digest = os.urandom(32).hex()
        entries[(PEOPLE, digest)] = _Entry(PEOPLE, digest, 1, bytearray(os.urandom(32)))
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    del entries
    return {"entries": count, "bytes_per_entry": grown / count}


def _row(round_number: int, measured: Measurement, ratio: float | None, note: str = "") -> list[object]:
    return [
        f"{round_number}: {measured.name}",
        measured.concurrency,
        f"{measured.rate:,.0f}",
        f"{measured.percentile_ms(50):.2f}",
        f"{measured.percentile_ms(99):.2f}",
        "" if ratio is None else f"{ratio:.0%}",
        "" if measured.server_cpu is None else f"{measured.server_cpu:.2f}",
        note,
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def counts(text: str) -> list[int]:
        return [int(part) for part in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE, help="PostgreSQL URL; its name is a prefix")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument("--concurrency", type=counts, default=[1, 8], help="callers per cell (default 1,8)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat cells 1 and 2 (default 1)")
    parser.add_argument("--subjects", type=int, default=256, help="known subjects in cell 1 (default 256)")
    parser.add_argument("--erasures", type=int, default=200, help="subjects erased in a row (default 200)")
    parser.add_argument("--carry-subjects", type=int, default=3000, help="more subjects for carrying (3000)")
    parser.add_argument("--rows", type=int, default=MILLION, help="rows inserted for the size (default 1,000,000)")
    return parser.parse_args(argv)


if __name__ == "__main__":  # client processes are spawned: guard the main module
    sys.exit(main())
