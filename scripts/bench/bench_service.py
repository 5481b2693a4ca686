#!/usr/bin/env python
"""GenerateDataKey and Decrypt beside a bare gRPC server's empty call, in one run.

    .venv/bin/python scripts/bench/bench_service.py [--duration 5] [--concurrency 1,16,64]
        [--workers 1,2] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/kms_bench]

Two servers, each a process of its own, are measured by the same load generator: the KMS (the
embedded defaults, audit log on, plus the pipeline's empty call ``Bench/Empty``) and a bare
grpcio server whose empty handler has no pipeline at all (``_bare_serve.py``). First the raw HSM
wrap rate through python-pkcs11 (1 and 16 threads), then per concurrency, one after the other
so that ratios compare neighbours in time: bare, the pipeline's Empty, GenerateDataKey,
Decrypt. Prints calls per second, p50/p99 latency, each KMS call over bare at the same
concurrency, server CPU microseconds per call, and writes bench-results/service-<time>.json.
See README.md in this directory for how to read the figures.

A further axis (server settings, worker processes) is a loop over ``Subjects``: each names the
launchers' arguments and environment of one configuration, and ``measure_subjects`` runs the
matrix against it.

``--workers`` is such an axis: for each N, the KMS as ``kms serve --workers N`` and the bare
server as N processes on one port (both SO_REUSEPORT; 1 is the single process of ``kms serve``
without a supervisor), each with its own bare baseline. Every client process opens several
connections (``CONNECTIONS``), so that the kernel, which hands each connection to one process
by a hash, spreads them over the workers. Then the scaling table: each call's rate with N
workers over its rate with the fewest, beside the bare server's, which is the goal for
GenerateDataKey (two workers should gain at least what two bare processes gain).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from _harness import (
    EMPTY_METHOD,
    KMS_SERVICE,
    LAUNCHER,
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

BARE_LAUNCHER = Path(__file__).resolve().with_name("_bare_serve.py")
KEY_ID = "bench"
# A realistic context: with the wrapped key header it makes 43 bytes of GCM associated data.
CONTEXT = {"tenant": "acme", "purpose": "bench"}
WRAPPED_KEYS = 64  # Decrypt cycles through this many distinct wrapped keys
BARE = "bare"  # the bare gRPC server's empty call: the baseline of every ratio
# The goals: at least 70% of the bare server's empty-call rate, at concurrency 64.
TARGETS = (("GenerateDataKey", 64, 0.70), ("Decrypt", 64, 0.70))
# TCP connections per load-generator process: with 2 processes, 16 connections, so that each of
# 2 workers gets at least 4 (16 callers in flight at concurrency 64) but for a 1% draw.
CONNECTIONS = 8


@dataclass(frozen=True)
class Launch:
    """How to start one server: the launcher script, its arguments, KMS_* settings."""

    launcher: Path
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Subjects:
    """One configuration under test: the KMS and the bare server to compare it with."""

    label: str
    kms: Launch
    bare: Launch


def server(launch: Launch, database_url: str | None) -> BenchServer:
    """The server ``launch`` describes: started on entering the context, stopped on leaving it."""
    return BenchServer(
        database_url=database_url, env=dict(launch.env), launcher=launch.launcher, launcher_args=launch.args
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    env = dict(setting.split("=", 1) for setting in args.server_env)
    raw: list[dict] = []
    rows: list[dict] = []
    for workers in args.workers:
        audit = ("--no-audit",) if args.no_audit else ()
        spread = ("--workers", str(workers)) if workers > 1 else ()
        subjects = Subjects(
            label=f"{workers} worker{'s' if workers > 1 else ''}",
            kms=Launch(LAUNCHER, (*audit, *spread), env),
            bare=Launch(BARE_LAUNCHER, spread, env),
        )
        measured_raw, measured = measure_subjects(subjects, args, hsm_threads=[] if raw else args.hsm_threads)
        raw += measured_raw
        rows += measured
    print_results(raw + rows)
    scaling = scaling_rows(rows)
    if scaling:
        print_scaling(scaling)
    verdicts = target_verdicts(rows) + scaling_verdicts(scaling)
    for verdict in verdicts:
        print(verdict)
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
                "audit": not args.no_audit,
                "context": CONTEXT,
                "workers": args.workers,
                "connections_per_client_process": CONNECTIONS,
            },
            "cells": raw + rows,
            "scaling": scaling,
            "targets": verdicts,
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
    parser.add_argument(
        "--workers", type=counts, default=[1, 2], help="server processes on the one port, each a run (default 1,2)"
    )
    parser.add_argument(
        "--hsm-threads", type=counts, default=[1, 16], help="raw HSM threads (default 1,16; empty: none)"
    )
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


def measure_subjects(
    subjects: Subjects, args: argparse.Namespace, *, hsm_threads: Sequence[int] | None = None
) -> tuple[list[dict], list[dict]]:
    """The raw HSM rows (``hsm_threads``, default ``args.hsm_threads``; empty: none) and the
    matrix's rows (each with ``server``: ``subjects.label``)."""
    with ExitStack() as stack:
        kms = stack.enter_context(server(subjects.kms, args.database_url))
        bare = stack.enter_context(server(subjects.bare, None))
        rpcs = prepare(kms.target)
        print(f"{subjects.label}: kms pid {kms.pid}, bare pid {bare.pid}; {args.duration:g}s per cell", file=sys.stderr)
        raw = measure_wrap(
            kms.data_dir,
            None,
            WrappedKeyHeader(KEY_ID, 1).associated_data(encode_context(CONTEXT)),
            args.hsm_threads if hsm_threads is None else hsm_threads,
            args.duration,
            args.warmup,
        )
        for measurement in raw:
            report_progress(measurement)
        loads = {
            name: stack.enter_context(
                LoadGenerator(target.target, args.client_processes, server_pid=target.pid, connections=CONNECTIONS)
            )
            for name, target in ((BARE, bare), ("kms", kms))
        }
        rounds: list[list[Measurement]] = []
        for _ in range(args.rounds):
            rounds.append([])
            for concurrency in args.concurrency:
                for name, rpc in rpcs.items():
                    load = loads[BARE] if name == BARE else loads["kms"]
                    rounds[-1].append(load.run(name, rpc, concurrency, args.duration, args.warmup))
                    report_progress(rounds[-1][-1])
    rows = ratios(rounds, raw)
    return [{"server": "raw HSM", **row} for row in rows if row["name"].startswith("raw")], [
        {"server": subjects.label, **row} for row in rows if not row["name"].startswith("raw")
    ]


def prepare(target: str) -> dict[str, Rpc]:
    """Creates the key; returns the calls to measure, the bare server's first."""
    with KmsClient(target) as client:
        client.create_key(KEY_ID)
        wrapped = [client.generate_data_key(KEY_ID, CONTEXT).wrapped_key for _ in range(WRAPPED_KEYS)]
    generate = pb.GenerateDataKeyRequest(key_id=KEY_ID, encryption_context=CONTEXT).SerializeToString()
    decrypts = tuple(pb.DecryptRequest(wrapped_key=w, encryption_context=CONTEXT).SerializeToString() for w in wrapped)
    return {
        BARE: Rpc(EMPTY_METHOD, (b"",)),
        "Empty": Rpc(EMPTY_METHOD, (b"",)),
        "GenerateDataKey": Rpc(f"{KMS_SERVICE}/GenerateDataKey", (generate,)),
        "Decrypt": Rpc(f"{KMS_SERVICE}/Decrypt", decrypts),
    }


def report_progress(measurement: Measurement) -> None:
    errors = f", {measurement.errors} errors ({measurement.first_error})" if measurement.errors else ""
    cpu = measurement.server_cpu_us_per_call
    print(
        f"  {measurement.name:<16} x{measurement.concurrency:<3} {measurement.rate:8.0f}/s"
        f"  p50 {measurement.percentile_ms(50):6.2f} ms  p99 {measurement.percentile_ms(99):6.2f} ms"
        f"  {'-' if cpu is None else f'{cpu:.0f}'} us/call{errors}",
        file=sys.stderr,
    )


def ratios(rounds: list[list[Measurement]], raw: list[Measurement]) -> list[dict[str, object]]:
    """Each cell's summary (all rounds together) with ``vs_bare``, its rate over the bare
    server's at the same concurrency, and ``vs_raw_hsm``, over the raw HSM with the most
    threads not above that concurrency. With several rounds, ``vs_bare_rounds`` holds each
    round's."""
    cells = [Measurement.combine(parts) for parts in zip(*rounds, strict=True)]
    overall = _vs_bare(cells)
    per_round = [_vs_bare(cells_of_round) for cells_of_round in rounds]
    rows = [{**measurement.summary(), "vs_bare": None, "vs_raw_hsm": None} for measurement in raw]
    for cell in cells:
        key = (cell.name, cell.concurrency)
        row: dict[str, object] = {**cell.summary(), "vs_bare": overall.get(key), "vs_raw_hsm": None}
        if key in overall and len(rounds) > 1:
            row["vs_bare_rounds"] = [ratios_of_round[key] for ratios_of_round in per_round]
        below = [r for r in raw if r.concurrency <= cell.concurrency]
        if cell.name not in (BARE, "Empty") and below:
            row["vs_raw_hsm"] = _ratio(cell.rate, max(below, key=lambda r: r.concurrency).rate)
        rows.append(row)
    return rows


def _vs_bare(cells: Sequence[Measurement]) -> dict[tuple[str, int], float | None]:
    bare = {cell.concurrency: cell.rate for cell in cells if cell.name == BARE}
    return {(c.name, c.concurrency): _ratio(c.rate, bare.get(c.concurrency)) for c in cells if c.name != BARE}


def _ratio(value: float, base: float | None) -> float | None:
    return round(value / base, 3) if base else None


def print_results(rows: Sequence[dict[str, object]]) -> None:
    def shown(value: object, format_spec: str) -> str:
        return "-" if value is None else format(value, format_spec)

    print_table(
        "results (vs bare: over the bare gRPC server's empty call at the same concurrency; vs raw HSM: most "
        "threads <= concurrency; server CPU: cores busy, and per call)",
        ["server", "call", "conc", "calls/s", "p50 ms", "p99 ms", "errors", "vs bare", "vs raw HSM", "CPU", "us/call"],
        [
            [
                row["server"],
                row["name"],
                row["concurrency"],
                f"{row['calls_per_second']:.0f}",
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                row["errors"],
                shown(row["vs_bare"], ".0%") + _spread(row.get("vs_bare_rounds")),
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


def scaling_rows(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per call and concurrency, the rate with each number of workers over the rate with the
    fewest (``vs_fewest``), beside the bare server's (``bare_vs_fewest``)."""
    labels = list(dict.fromkeys(str(row["server"]) for row in rows))
    if len(labels) < 2:
        return []
    rate = {(row["server"], row["name"], row["concurrency"]): row["calls_per_second"] for row in rows}
    fewest = labels[0]
    scaled = []
    for label in labels[1:]:
        for row in rows:
            if row["server"] != label:
                continue
            name, concurrency = row["name"], row["concurrency"]
            base, bare_base = rate.get((fewest, name, concurrency)), rate.get((fewest, BARE, concurrency))
            bare = rate.get((label, BARE, concurrency))
            scaled.append(
                {
                    "server": label,
                    "over": fewest,
                    "name": name,
                    "concurrency": concurrency,
                    "vs_fewest": _ratio(row["calls_per_second"], base),  # type: ignore[arg-type]
                    "bare_vs_fewest": _ratio(bare, bare_base) if bare is not None else None,  # type: ignore[arg-type]
                    "server_cpu_us_per_call": row.get("server_cpu_us_per_call"),
                }
            )
    return scaled


def print_scaling(scaled: Sequence[dict[str, object]]) -> None:
    def shown(value: object, format_spec: str) -> str:
        return "-" if value is None else format(value, format_spec)

    print_table(
        "scaling (calls/s with N workers over calls/s with the fewest, each call beside the bare server's)",
        ["workers", "call", "conc", "N / fewest", "bare N / fewest", "us/call"],
        [
            [
                f"{row['server']} / {row['over']}",
                row["name"],
                row["concurrency"],
                shown(row["vs_fewest"], ".2f"),
                shown(row["bare_vs_fewest"], ".2f"),
                shown(row["server_cpu_us_per_call"], ".0f"),
            ]
            for row in scaled
        ],
    )


def scaling_verdicts(scaled: Sequence[dict[str, object]]) -> list[str]:
    """The issue's goal for workers: GenerateDataKey at concurrency 64 gains at least what the
    bare server gains with as many processes."""
    verdicts = []
    for row in scaled:
        ours, bare = row["vs_fewest"], row["bare_vs_fewest"]
        if row["name"] != "GenerateDataKey" or row["concurrency"] != 64:
            continue
        if not isinstance(ours, float) or not isinstance(bare, float):
            continue
        verdict = "met" if ours >= bare else "NOT met"
        verdicts.append(
            f"target: GenerateDataKey {row['server']} / {row['over']} at concurrency 64: {ours:.2f}, "
            f"bare server {bare:.2f} (goal: at least the bare server's): {verdict}"
        )
    return verdicts


def target_verdicts(rows: Sequence[dict[str, object]]) -> list[str]:
    """The issue's goals, judged per server: with several rounds, "inconclusive" when their
    ratios fall on both sides of a goal."""
    verdicts = []
    for name, concurrency, goal in TARGETS:
        for row in rows:
            ratio, per_round = row["vs_bare"], row.get("vs_bare_rounds")
            if row["name"] != name or row["concurrency"] != concurrency or not isinstance(ratio, float):
                continue
            verdict = "met" if ratio >= goal else "NOT met"
            if isinstance(per_round, list) and None not in per_round and min(per_round) < goal <= max(per_round):
                verdict = "inconclusive, rounds on both sides of the goal"
            measured = f"{name} / bare at concurrency {concurrency} ({row['server']}): {ratio:.1%}{_spread(per_round)}"
            verdicts.append(f"target: {measured} (goal {goal:.0%}): {verdict}")
    return verdicts


if __name__ == "__main__":
    sys.exit(main())
