#!/usr/bin/env python
"""GenerateDataKey and Decrypt beside an empty call on the same server and the raw HSM.

    .venv/bin/python scripts/bench/bench_service.py [--duration 5] [--concurrency 1,16,64]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/kms_bench]

Measures, in one run: the raw HSM wrap rate through python-pkcs11 (1 and 16 threads), then per
concurrency the empty call, GenerateDataKey and Decrypt, one after the other so that the ratios
compare neighbours in time. Prints calls per second, p50/p99 latency, the ratio to the empty
call at the same concurrency and to the raw HSM, and writes bench-results/service-<time>.json.
See README.md in this directory for how to read the figures.
"""

from __future__ import annotations

import argparse
import sys
import time

from _harness import (
    EMPTY_METHOD,
    KMS_SERVICE,
    BenchServer,
    LoadGenerator,
    Measurement,
    Rpc,
    print_table,
    write_json,
)
from _hsm_baseline import measure_wrap

from kms.crypto.context import encode_context
from kms.crypto.wrapped_key import WrappedKeyHeader
from kms_client import KmsClient
from kms_proto.kms.v1 import kms_pb2 as pb

KEY_ID = "bench"
# A realistic context: with the wrapped key header it makes 43 bytes of GCM associated data.
CONTEXT = {"tenant": "acme", "purpose": "bench"}
WRAPPED_KEYS = 64  # Decrypt cycles through this many distinct wrapped keys
TARGET = ("GenerateDataKey", 16, 0.70)  # the goal: at least 70% of the empty-call rate


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    env = dict(setting.split("=", 1) for setting in args.server_env)
    launcher_args = ["--no-audit"] if args.no_audit else []
    with BenchServer(database_url=args.database_url, env=env, launcher_args=launcher_args) as server:
        object_id, rpcs = prepare(server.target)
        print(f"server pid {server.pid} on {server.target}; measuring {args.duration:g}s per cell", file=sys.stderr)
        header = WrappedKeyHeader(KEY_ID, 1)
        raw = measure_wrap(
            server.data_dir,
            object_id,
            header.associated_data(encode_context(CONTEXT)),
            args.hsm_threads,
            args.duration,
            args.warmup,
        )
        for measurement in raw:
            report_progress(measurement)
        rounds: list[list[Measurement]] = []
        with LoadGenerator(server.target, processes=args.client_processes, server_pid=server.pid) as load:
            for _ in range(args.rounds):
                rounds.append([])
                for concurrency in args.concurrency:
                    for name, rpc in rpcs.items():
                        rounds[-1].append(load.run(name, rpc, concurrency, args.duration, args.warmup))
                        report_progress(rounds[-1][-1])
    rows = ratios(rounds, raw)
    print_results(rows)
    verdict = target_verdict(rows)
    if verdict:
        print(f"\n{verdict}")
    path = write_json(
        "service",
        {
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "client_processes": args.client_processes,
                "database": "postgresql" if (args.database_url or "").startswith("postgresql") else "sqlite",
                "server_env": env,
                "context": CONTEXT,
            },
            "cells": rows,
            "target": verdict,
            "wall_clock_s": round(time.monotonic() - started, 1),
        },
    )
    print(f"wrote {path.relative_to(path.parents[1])}")
    return 1 if any(row["errors"] for row in rows) else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def counts(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the matrix this many times; ratios then show their range (default 1)"
    )
    parser.add_argument("--concurrency", type=counts, default=[1, 16, 64], help="callers in flight (default 1,16,64)")
    parser.add_argument("--hsm-threads", type=counts, default=[1, 16], help="raw HSM threads (default 1,16)")
    parser.add_argument(
        "--database-url",
        help="default SQLite in the temporary data directory; a postgresql+psycopg:// URL gets a fresh "
        "database named <its database>_<hex>, dropped afterwards",
    )
    parser.add_argument("--client-processes", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--no-audit", action="store_true", help="serve without the audit log (to see what it costs)")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KMS_X=VALUE", help="a server setting (repeatable)"
    )
    return parser.parse_args(argv)


def prepare(target: str) -> tuple[str, dict[str, Rpc]]:
    """Creates the key; returns its master key's CKA_ID and the three calls to measure."""
    with KmsClient(target) as client:
        key = client.create_key(KEY_ID)
        wrapped = [client.generate_data_key(KEY_ID, CONTEXT).wrapped_key for _ in range(WRAPPED_KEYS)]
    generate = pb.GenerateDataKeyRequest(key_id=KEY_ID, encryption_context=CONTEXT).SerializeToString()
    decrypts = tuple(pb.DecryptRequest(wrapped_key=w, encryption_context=CONTEXT).SerializeToString() for w in wrapped)
    return key.versions[0].hsm_object_id, {
        "Empty": Rpc(EMPTY_METHOD, (b"",)),
        "GenerateDataKey": Rpc(f"{KMS_SERVICE}/GenerateDataKey", (generate,)),
        "Decrypt": Rpc(f"{KMS_SERVICE}/Decrypt", decrypts),
    }


def report_progress(measurement: Measurement) -> None:
    errors = f", {measurement.errors} errors ({measurement.first_error})" if measurement.errors else ""
    print(
        f"  {measurement.name:<16} x{measurement.concurrency:<3} {measurement.rate:8.0f}/s"
        f"  p50 {measurement.percentile_ms(50):6.2f} ms  p99 {measurement.percentile_ms(99):6.2f} ms{errors}",
        file=sys.stderr,
    )


def ratios(rounds: list[list[Measurement]], raw: list[Measurement]) -> list[dict[str, object]]:
    """Each cell's summary (all rounds together) with ``vs_empty``, its rate over the empty
    call's at the same concurrency, and ``vs_raw_hsm``, over the raw HSM with the most threads
    not above that concurrency. With several rounds, ``vs_empty_rounds`` holds each round's."""
    cells = [Measurement.combine(parts) for parts in zip(*rounds)]
    overall = _vs_empty(cells)
    per_round = [_vs_empty(cells_of_round) for cells_of_round in rounds]
    rows = [{**measurement.summary(), "vs_empty": None, "vs_raw_hsm": None} for measurement in raw]
    for cell in cells:
        key = (cell.name, cell.concurrency)
        row: dict[str, object] = {**cell.summary(), "vs_empty": overall.get(key), "vs_raw_hsm": None}
        if key in overall and len(rounds) > 1:
            row["vs_empty_rounds"] = [ratios_of_round[key] for ratios_of_round in per_round]
        below = [r for r in raw if r.concurrency <= cell.concurrency]
        if cell.name != "Empty" and below:
            row["vs_raw_hsm"] = _ratio(cell.rate, max(below, key=lambda r: r.concurrency).rate)
        rows.append(row)
    return rows


def _vs_empty(cells: list[Measurement]) -> dict[tuple[str, int], float | None]:
    empty = {cell.concurrency: cell.rate for cell in cells if cell.name == "Empty"}
    return {(c.name, c.concurrency): _ratio(c.rate, empty.get(c.concurrency)) for c in cells if c.name != "Empty"}


def _ratio(value: float, base: float | None) -> float | None:
    return round(value / base, 3) if base else None


def print_results(rows: list[dict[str, object]]) -> None:
    def shown(value: object, format_spec: str) -> str:
        return "-" if value is None else format(value, format_spec)

    print_table(
        "results (vs empty: same concurrency; vs raw HSM: most threads <= concurrency; "
        "server CPU: cores busy, and per call)",
        ["call", "conc", "calls/s", "p50 ms", "p99 ms", "errors", "vs empty", "vs raw HSM", "server CPU", "us/call"],
        [
            [
                row["name"],
                row["concurrency"],
                f"{row['calls_per_second']:.0f}",
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                row["errors"],
                shown(row["vs_empty"], ".0%") + _spread(row.get("vs_empty_rounds")),
                shown(row["vs_raw_hsm"], ".0%"),
                shown(row["server_cpu_cores"], ".2f"),
                shown(row["server_cpu_us_per_call"], ".0f"),
            ]
            for row in rows
        ],
    )


def _spread(values: object) -> str:
    """ " (lowest-highest)" in percent, for ratios measured in several rounds."""
    if not isinstance(values, list) or None in values:
        return ""
    return f" ({min(values):.0%}-{max(values):.0%})"


def target_verdict(rows: list[dict[str, object]]) -> str:
    """The issue's goal, judged: with several rounds, "inconclusive" when their ratios fall on
    both sides of it."""
    name, concurrency, goal = TARGET
    for row in rows:
        ratio, per_round = row["vs_empty"], row.get("vs_empty_rounds")
        if row["name"] != name or row["concurrency"] != concurrency or not isinstance(ratio, float):
            continue
        verdict = "met" if ratio >= goal else "NOT met"
        if isinstance(per_round, list) and None not in per_round and min(per_round) < goal <= max(per_round):
            verdict = "inconclusive, rounds on both sides of the goal"
        measured = f"{name} at concurrency {concurrency} is {ratio:.1%}{_spread(per_round)} of the empty call"
        return f"target: {measured} (goal {goal:.0%}): {verdict}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
