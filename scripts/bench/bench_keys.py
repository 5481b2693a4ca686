#!/usr/bin/env python
"""The key-count axis: what the service costs with 10, 1,000 and 10,000 keys, for both storages.

    .venv/bin/python scripts/bench/bench_keys.py [--counts 10,1000,10000] [--duration 3] [--rounds 2]
        [--hsm-object-cap 1000] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/kms_bench]

For each storage (``KMS_KEY_STORAGE=wrapped``, the key hierarchy and the default; then
``hsm_object``, a token object per version), one server on a fresh data directory grows through
the key counts. At each count:

- the keys are created (8 clients at once, CreateKey each) up to the count;
- **start-up**: the server is restarted on the same data, timed from launch to SERVING, and its
  RSS read then (``rss start``) and after the load below (``rss after``);
- **CreateKey p50**: 40 more keys created one after the other, on top of the count;
- **GenerateDataKey at concurrency 16 on one key**, then **spread evenly over all the keys**: each
  of the 16 callers walks a stretch of keys of its own, so at 10,000 keys (more than the default
  handle cache of 4,096) nearly every call finds its key cold and unwraps it.

After a restart every key is used once (batch calls) before the cells, so that they measure
steady state, not the first use of each key's metadata.

Then, per storage, a key rotated to 1,000 versions against a fresh key: GenerateDataKey p99 at
concurrency 16 on each.

Each comparison runs its two cells in ``--rounds`` interleaved rounds (default 2), and the server's
CPU time per call is shown beside each rate: on a machine shared with other work, a rate can
fall for want of CPU while the cost per call stays the same, and the CPU column tells which.

Printed ratios: spread over one key at each count (target at 10,000 keys: at least 80%), CreateKey
p50 at the last count over at 10 keys (target: within 1.5x), the 1,000-version key's p99 over the
fresh key's. The token-object design makes a token object per version, and searches the token
by label first (SoftHSM's search is linear in the objects on the token, so creating N keys costs
O(N^2)): it is grown to ``--hsm-object-cap`` keys (default 1,000) and its many-version key to
``--hsm-object-versions`` (default 100), and the tables say so. Writes
bench-results/keys-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from _harness import KMS_SERVICE, BenchServer, LoadGenerator, Measurement, Rpc, print_table, write_json

from kms_client import KmsClient, RetryPolicy
from kms_proto.kms.v1 import kms_pb2 as pb

STORAGES = ("wrapped", "hsm_object")
CONCURRENCY = 16
CREATORS = 8  # clients creating keys at once
CREATE_PROBES = 40  # sequential CreateKey calls timed at each count
VERSIONS = 1000
WARM_BATCH = 1000  # items per BatchGenerateDataKey of the pass that uses every key after a restart
CONTEXT = {"tenant": "bench"}
# The goals.
SPREAD_GOAL = 0.80  # spread over all keys / one key, at the largest count
CREATE_GOAL = 1.5  # CreateKey p50 at the largest count / at the smallest


@dataclass
class Level:
    """What one key count measured, for one storage."""

    storage: str
    keys: int
    create_p50_ms: float
    startup_s: float
    rss_start_mib: float | None
    rss_after_mib: float | None
    one_key: Measurement
    spread: Measurement

    @property
    def spread_ratio(self) -> float:
        return self.spread.rate / self.one_key.rate if self.one_key.rate else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "storage": self.storage,
            "keys": self.keys,
            "create_p50_ms": round(self.create_p50_ms, 2),
            "startup_s": round(self.startup_s, 2),
            "rss_start_mib": _round(self.rss_start_mib),
            "rss_after_mib": _round(self.rss_after_mib),
            "one_key": self.one_key.summary(),
            "spread": self.spread.summary(),
            "spread_over_one_key": round(self.spread_ratio, 3),
        }


@dataclass
class StorageRun:
    """One storage's run: its levels, the versions comparison, and the counts it left out."""

    name: str
    versions: int = VERSIONS
    levels: list[Level] = field(default_factory=list)
    fresh: Measurement | None = None
    many_versions: Measurement | None = None
    capped_at: int | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    runs = []
    for storage in args.storages:
        counts = sorted(args.counts)
        cap = args.hsm_object_cap if storage == "hsm_object" else None
        run = StorageRun(storage, args.hsm_object_versions if storage == "hsm_object" else args.versions)
        if cap is not None and counts[-1] > cap:
            run.capped_at = cap
            counts = [count for count in counts if count <= cap]
        measure_storage(run, counts, args)
        runs.append(run)
    print_results(runs)
    verdicts = target_verdicts(runs)
    for verdict in verdicts:
        print(verdict)
    path = write_json(
        "keys",
        {
            "settings": {
                "counts": args.counts,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "concurrency": CONCURRENCY,
                "hsm_object_cap": args.hsm_object_cap,
                "database": "postgresql" if (args.database_url or "").startswith("postgresql") else "sqlite",
                "server_env": args.server_env,
            },
            "storages": [
                {
                    "storage": run.name,
                    "capped_at": run.capped_at,
                    "versions": run.versions,
                    "levels": [level.summary() for level in run.levels],
                    "fresh_key": run.fresh.summary() if run.fresh else None,
                    "many_versions_key": run.many_versions.summary() if run.many_versions else None,
                }
                for run in runs
            ],
            "targets": verdicts,
            "wall_clock_s": round(time.monotonic() - started, 1),
        },
    )
    print(f"wrote {path.relative_to(path.parents[1])}")
    failed = any(m.errors for run in runs for level in run.levels for m in (level.one_key, level.spread))
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def counts(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=counts, default=[10, 1000, 10_000], help="key counts (default 10,1000,10000)")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="each comparison's two cells run this many times, interleaved (default 2)"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each cell (default 0.5)")
    parser.add_argument(
        "--storages",
        type=lambda text: [part for part in text.split(",") if part],
        default=list(STORAGES),
        help="wrapped,hsm_object (default both)",
    )
    parser.add_argument(
        "--hsm-object-cap",
        type=int,
        default=1000,
        help="the most keys the token-object storage is grown to (default 1000; see the docstring)",
    )
    parser.add_argument(
        "--versions", type=int, default=VERSIONS, help=f"versions of the many-version key (default {VERSIONS})"
    )
    parser.add_argument(
        "--hsm-object-versions",
        type=int,
        default=100,
        help="versions of the token-object storage's many-version key (default 100; see the docstring)",
    )
    parser.add_argument(
        "--database-url",
        help="default SQLite in the temporary data directory; a postgresql+psycopg:// URL gets a fresh "
        "database named <its database>_<hex>, dropped afterwards",
    )
    parser.add_argument("--client-processes", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KMS_X=VALUE", help="a server setting (repeatable)"
    )
    return parser.parse_args(argv)


def measure_storage(run: StorageRun, counts: Sequence[int], args: argparse.Namespace) -> None:
    env = {**dict(setting.split("=", 1) for setting in args.server_env), "KMS_KEY_STORAGE": run.name}
    with BenchServer(database_url=args.database_url, env=env) as server:
        print(f"{run.name}: server pid {server.pid}, counts {', '.join(map(str, counts))}", file=sys.stderr)
        made = 0
        with KmsClient(server.target) as client:
            client.create_key("hot")
        for count in counts:
            creating = time.monotonic()
            create_keys(server.target, [tenant(n) for n in range(made, count)])
            print(f"  created {count - made} keys in {time.monotonic() - creating:.1f}s", file=sys.stderr)
            made = count
            startup = server.restart()
            rss_start = server.rss_bytes()
            # Timed on the restarted server, before any other load: right after a burst of
            # creation the audit writer is still chaining it, and sequential calls meet that.
            create_p50 = probe_creates(server.target, count)
            keys = [tenant(n) for n in range(count)]
            use_each(server.target, keys)
            with LoadGenerator(server.target, args.client_processes, server_pid=server.pid) as load:
                ones, spreads = [], []
                for _ in range(args.rounds):  # interleaved, so that a burst of other load hits both
                    ones.append(
                        load.run(f"one key ({count})", generate_rpc(["hot"]), CONCURRENCY, args.duration, args.warmup)
                    )
                    report(ones[-1])
                    spreads.append(
                        load.run(f"spread ({count})", generate_rpc(keys), CONCURRENCY, args.duration, args.warmup)
                    )
                    report(spreads[-1])
                one, spread = Measurement.combine(ones), Measurement.combine(spreads)
            level = Level(run.name, count, create_p50, startup, _mib(rss_start), _mib(server.rss_bytes()), one, spread)
            print(
                f"  {count} keys: CreateKey p50 {create_p50:.1f} ms, start-up {startup:.2f}s, "
                f"spread/one {level.spread_ratio:.0%}",
                file=sys.stderr,
            )
            run.levels.append(level)
        rotating = time.monotonic()
        with KmsClient(server.target) as client:
            client.create_key("fresh")
            client.create_key("versions")
            for _ in range(run.versions - 1):
                client.rotate_key("versions")
        print(f"  rotated a key to {run.versions} versions in {time.monotonic() - rotating:.1f}s", file=sys.stderr)
        with LoadGenerator(server.target, args.client_processes, server_pid=server.pid) as load:
            fresh, many = [], []
            for _ in range(args.rounds):
                fresh.append(load.run("fresh key", generate_rpc(["fresh"]), CONCURRENCY, args.duration, args.warmup))
                report(fresh[-1])
                many.append(
                    load.run(f"{run.versions}-version key", generate_rpc(["versions"]), CONCURRENCY, args.duration, 0.5)
                )
                report(many[-1])
            run.fresh, run.many_versions = Measurement.combine(fresh), Measurement.combine(many)


def tenant(number: int) -> str:
    return f"tenant-{number:05d}"


def create_keys(target: str, key_ids: Sequence[str]) -> None:
    """Each key by a CreateKey call of its own, from CREATORS clients at once; no retries, so a
    refused call stops the run."""
    failures: list[str] = []

    def create(share: Sequence[str]) -> None:
        with KmsClient(target, retry=RetryPolicy(max_attempts=1), timeout=60) as client:
            for key_id in share:
                try:
                    client.create_key(key_id)
                except Exception as error:  # noqa: BLE001 - reported below
                    failures.append(f"{key_id}: {error}")
                    return

    _in_threads(create, [key_ids[n::CREATORS] for n in range(CREATORS)])
    if failures:
        raise RuntimeError(f"CreateKey failed: {failures[0]} ({len(failures)} clients stopped)")


def use_each(target: str, key_ids: Sequence[str]) -> None:
    """A data key from every key, in batch calls."""
    with KmsClient(target, retry=RetryPolicy(max_attempts=1), timeout=120) as client:
        for start in range(0, len(key_ids), WARM_BATCH):
            batch = key_ids[start : start + WARM_BATCH]
            failed = [r for r in client.generate_data_keys([(k, CONTEXT) for k in batch]) if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"GenerateDataKey failed: {failed[0]} ({len(failed)} items)")


def probe_creates(target: str, count: int) -> float:
    """The p50 of CREATE_PROBES CreateKey calls made one after the other, in milliseconds."""
    latencies = []
    with KmsClient(target, retry=RetryPolicy(max_attempts=1), timeout=60) as client:
        for n in range(CREATE_PROBES):
            started = time.monotonic()
            client.create_key(f"probe-{count}-{n}")
            latencies.append(time.monotonic() - started)
    latencies.sort()
    return latencies[len(latencies) // 2] * 1000


def generate_rpc(key_ids: Sequence[str]) -> Rpc:
    requests = tuple(
        pb.GenerateDataKeyRequest(key_id=key_id, encryption_context=CONTEXT).SerializeToString() for key_id in key_ids
    )
    return Rpc(f"{KMS_SERVICE}/GenerateDataKey", requests, stride=max(1, len(requests) // CONCURRENCY))


def _in_threads(work: Callable[[Sequence[str]], None], shares: Sequence[Sequence[str]]) -> None:
    threads = [threading.Thread(target=work, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def report(measurement: Measurement) -> None:
    errors = f", {measurement.errors} errors ({measurement.first_error})" if measurement.errors else ""
    print(
        f"  {measurement.name:<24} {measurement.rate:8.0f}/s  p50 {measurement.percentile_ms(50):6.2f} ms"
        f"  p99 {measurement.percentile_ms(99):6.2f} ms{errors}",
        file=sys.stderr,
    )


def print_results(runs: Sequence[StorageRun]) -> None:
    rows = []
    for run in runs:
        smallest = run.levels[0] if run.levels else None
        for level in run.levels:
            create_ratio = level.create_p50_ms / smallest.create_p50_ms if smallest else float("nan")
            rows.append(
                [
                    run.name,
                    level.keys,
                    f"{level.one_key.rate:.0f}",
                    f"{level.spread.rate:.0f}",
                    f"{level.spread_ratio:.0%}",
                    f"{level.spread.percentile_ms(50):.2f}",
                    f"{level.spread.percentile_ms(99):.2f}",
                    _shown(level.one_key.server_cpu_us_per_call),
                    _shown(level.spread.server_cpu_us_per_call),
                    f"{level.create_p50_ms:.1f}",
                    f"{create_ratio:.2f}x",
                    f"{level.startup_s:.2f}",
                    _shown(level.rss_start_mib),
                    _shown(level.rss_after_mib),
                    level.one_key.errors + level.spread.errors,
                ]
            )
    print_table(
        f"GenerateDataKey at concurrency {CONCURRENCY}: on one key, and spread evenly over all keys; "
        "server CPU microseconds per call of each; CreateKey p50 (sequential) at each count, over at the smallest; "
        "start-up and RSS after a restart",
        [
            "storage",
            "keys",
            "one key/s",
            "spread/s",
            "spread/one",
            "spread p50",
            "spread p99",
            "one us/call",
            "spread us/call",
            "create p50",
            "vs smallest",
            "start-up s",
            "rss start MiB",
            "rss after MiB",
            "errors",
        ],
        rows,
    )
    for run in runs:
        if run.capped_at is not None:
            print(f"{run.name}: not measured beyond {run.capped_at} keys (token objects make creating N keys O(N^2))")
    versions = [
        [
            run.name,
            run.versions,
            f"{run.fresh.rate:.0f}",
            f"{run.many_versions.rate:.0f}",
            f"{run.fresh.percentile_ms(99):.2f}",
            f"{run.many_versions.percentile_ms(99):.2f}",
            _ratio(run),
        ]
        for run in runs
        if run.fresh and run.many_versions
    ]
    print_table(
        f"GenerateDataKey at concurrency {CONCURRENCY}: a fresh key against a key of many versions (p99 in ms)",
        ["storage", "versions", "fresh/s", "many/s", "fresh p99", "many p99", "p99 ratio"],
        versions,
    )


def target_verdicts(runs: Sequence[StorageRun]) -> list[str]:
    verdicts = []
    for run in runs:
        if not run.levels:
            continue
        smallest, largest = run.levels[0], run.levels[-1]
        spread = largest.spread_ratio
        verdicts.append(
            f"target: {run.name}: spread / one key at {largest.keys} keys: {spread:.0%} (goal {SPREAD_GOAL:.0%}): "
            + ("met" if spread >= SPREAD_GOAL else "NOT met")
        )
        create = largest.create_p50_ms / smallest.create_p50_ms
        verdicts.append(
            f"target: {run.name}: CreateKey p50 at {largest.keys} keys / at {smallest.keys}: {create:.2f}x "
            f"(goal {CREATE_GOAL}x): " + ("met" if create <= CREATE_GOAL else "NOT met")
        )
        if run.fresh and run.many_versions:
            verdicts.append(f"{run.name}: {run.versions}-version key p99 / fresh key p99: {_ratio(run)}")
    return verdicts


def _ratio(run: StorageRun) -> str:
    assert run.fresh is not None and run.many_versions is not None
    return f"{run.many_versions.percentile_ms(99) / run.fresh.percentile_ms(99):.2f}x"


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
