#!/usr/bin/env python3
"""Pseudonymize throughput against the raw HSM HMAC rate, measured in one run.

    .venv/bin/python scripts/bench/bench_pseudonymize.py              # ~1 minute
    .venv/bin/python scripts/bench/bench_pseudonymize.py --rounds 3   # for decisions

One server (BenchServer: its own SoftHSM token, SQLite), two PSEUDONYMIZE keys: one WRAPPED (the
default storage: the version key unwrapped once into a session object) and one HSM_OBJECT (a
token object). Then, per round:

1. **raw HMAC**: in a process of its own, on the server's token, 1 and 2 threads each HMACing
   the same 1000 messages the server HMACs for one call: under the HSM_OBJECT key's own token
   object (python-pkcs11's ``sign``, and the ctypes loop the server itself uses), and under a
   session object of the same kind (ctypes). Values per second.
2. **Pseudonymize**, 1000 values per call with their CRC32Cs (as the SDK sends them), under a
   two-entry context, at concurrency 1 and 2, for each key: values per second (calls x 1000),
   audit records and gRPC included.

The issue's target: Pseudonymize at 50% or more of the raw HMAC rate. Each key is measured
against the raw loop on the kind of object the server HMACs with: a session object for WRAPPED
(its unwrapped copy lives in the holder session), the token object for HSM_OBJECT (SoftHSM
reads a token object's file on every C_SignInit, which makes it the slower of the two), and the
faster of the loops there, at the same number of threads. That is the "vs raw" column, and the
verdict. "per CPU-s" divides each side by the CPU it used (the server's whole process, the raw
child's): on a shared machine, where other tenants take cores away at random, it is the steadier
of the two. Read ratios, not absolutes (scripts/bench/README.md, "Reading the figures").
"""

from __future__ import annotations

import argparse
import sys

from _harness import BenchServer, LoadGenerator, Measurement, Rpc, print_table, write_json
from _hmac_baseline import SESSION_OBJECT, TOKEN_OBJECT, measure_hmac

from kms.crypto import pseudonym
from kms.crypto.checksums import crc32c
from kms.crypto.context import encode_context
from kms_client import KmsClient
from kms_proto.kms.v1 import kms_pb2 as pb

METHOD = "/kms.v1.KeyManagementService/Pseudonymize"
VALUES = 1000
CONTEXT = {"purpose": "analytics", "tenant": "acme"}
KEYS = {"wrapped": "tokens-wrapped", "hsm_object": "tokens-object"}
# The raw loops each key's storage is measured against: what the server HMACs with.
FLOORS = {"wrapped": (SESSION_OBJECT,), "hsm_object": TOKEN_OBJECT}
TARGET = 0.5


def values() -> list[bytes]:
    return [f"customer-{n:07d}@example.com".encode() for n in range(VALUES)]


def request(key_id: str) -> bytes:
    batch = values()
    return pb.PseudonymizeRequest(
        key_id=key_id, values=batch, context=CONTEXT, values_crc32c=[crc32c(v) for v in batch]
    ).SerializeToString()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[list[object]] = []
    cells: list[dict] = []
    verdicts: list[float] = []
    per_cpu: list[float] = []
    with BenchServer(env={"KMS_MAX_WORKERS": "8"}) as server:
        with KmsClient(server.target) as client:
            client.create_key(KEYS["wrapped"], storage="WRAPPED", purpose="PSEUDONYMIZE")
            key = client.create_key(KEYS["hsm_object"], storage="HSM_OBJECT", purpose="PSEUDONYMIZE")
            object_id = key.versions[0].hsm_object_id
            # What the server HMACs for one call: the same messages, for the baseline.
            prefix = pseudonym.message_prefix(KEYS["hsm_object"], 1, encode_context(CONTEXT))
            messages = [pseudonym.message(prefix, value) for value in values()]
            assert client.pseudonymize([values()[0]], key_id=KEYS["hsm_object"], context=CONTEXT)
        with LoadGenerator(server.target, processes=args.client_processes, server_pid=server.pid) as load:
            for round_number in range(1, args.rounds + 1):
                raw = measure_hmac(server.data_dir, object_id, messages, args.concurrency, args.duration, args.warmup)
                floor: dict[int, dict[str, Measurement]] = {}
                for measurement in raw:
                    floor.setdefault(measurement.concurrency, {})[measurement.name] = measurement
                    rows.append(_row(round_number, measurement, None, None))
                    cells.append({"round": round_number, "values_per_call": VALUES, **measurement.summary()})
                for concurrency in args.concurrency:
                    for storage, key_id in KEYS.items():
                        best = max((floor[concurrency][name] for name in FLOORS[storage]), key=lambda m: m.rate)
                        measured = load.run(
                            f"Pseudonymize ({storage})",
                            Rpc(METHOD, (request(key_id),)),
                            concurrency,
                            args.duration,
                            args.warmup,
                        )
                        ratio = measured.rate / best.rate
                        cpu_ratio = _ratio(_per_cpu(measured), _per_cpu(best))
                        verdicts.append(ratio)
                        if cpu_ratio is not None:
                            per_cpu.append(cpu_ratio)
                        rows.append(_row(round_number, measured, ratio, cpu_ratio))
                        cells.append(
                            {
                                "round": round_number,
                                "values_per_call": VALUES,
                                "vs_raw": ratio,
                                "vs_raw_per_cpu": cpu_ratio,
                                "raw_floor": best.name,
                                **measured.summary(),
                            }
                        )
                        if measured.errors:
                            print(f"errors in {measured.name}: {measured.first_error}", file=sys.stderr)
    print_table(
        f"Pseudonymize, {VALUES} values per call, vs the raw HSM HMAC rate (target {TARGET:.0%})",
        ["round / cell", "threads", "values/s", "p50 ms", "p99 ms", "vs raw", "per CPU-s vs raw", "CPU"],
        rows,
    )
    worst = min(verdicts) if verdicts else 0.0
    verdict = "met" if worst >= TARGET else "missed"
    print(f"\nworst ratio {worst:.0%}, best {max(verdicts, default=0.0):.0%}: target {verdict}")
    if per_cpu:
        print(f"per CPU-second: worst {min(per_cpu):.0%}, best {max(per_cpu):.0%}")
    path = write_json(
        "pseudonymize",
        {"cells": cells, "target": TARGET, "worst_ratio": worst, "worst_ratio_per_cpu": min(per_cpu, default=None)},
    )
    print(f"results: {path}")
    return 0 if all(cell.get("errors", 0) == 0 for cell in cells) else 1


def _per_cpu(measurement: Measurement) -> float | None:
    """Calls per CPU-second of the process that did the work (None when /proc could not tell)."""
    return measurement.rate / measurement.server_cpu if measurement.server_cpu else None


def _ratio(part: float | None, whole: float | None) -> float | None:
    return part / whole if part and whole else None


def _row(round_number: int, measurement: Measurement, ratio: float | None, cpu_ratio: float | None) -> list[object]:
    return [
        f"{round_number}: {measurement.name}",
        measurement.concurrency,
        f"{measurement.rate * VALUES:,.0f}",
        f"{measurement.percentile_ms(50):.1f}",
        f"{measurement.percentile_ms(99):.1f}",
        "" if ratio is None else f"{ratio:.0%}",
        "" if cpu_ratio is None else f"{cpu_ratio:.0%}",
        "" if measurement.server_cpu is None else f"{measurement.server_cpu:.2f}",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def counts(text: str) -> list[int]:
        return [int(part) for part in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument("--concurrency", type=counts, default=[1, 2], help="callers and raw threads (default 1,2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything (default 1)")
    parser.add_argument("--client-processes", type=int, default=1, help="load generator processes (default 1)")
    return parser.parse_args(argv)


if __name__ == "__main__":  # client processes are spawned: guard the main module
    sys.exit(main())
