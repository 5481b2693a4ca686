#!/usr/bin/env python
"""What mutual TLS, authorization and the audit log cost on GenerateDataKey.

    .venv/bin/python scripts/bench/bench_security.py [--duration 5] [--rounds 3] [--concurrency 16]

Three servers of the same build, measured in alternation, round after round, so that the
comparisons are between neighbours in time on this shared machine:

    open      plaintext on loopback, the caller is the development superuser, no audit log
    mtls      mutual TLS; the caller is an ordinary identity with an encrypt grant, so every
              call is authorized against the policy; no audit log
    secured   as mtls, with the audit log (journal + hash chain + HSM seals): the product as shipped

The issue's target: ``secured`` reaches at least 85% of ``open``'s calls per second at
concurrency 16. Prints the table, writes bench-results/security-<time>.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import (
    KMS_SERVICE,
    REPOSITORY,
    BenchServer,
    LoadGenerator,
    Measurement,
    Rpc,
    TlsFiles,
    print_table,
    write_json,
)

from kms_client import KmsClient, tls_credentials
from kms_proto.kms.v1 import kms_pb2 as pb

KEY_ID = "bench"
CONTEXT = {"tenant": "acme", "purpose": "bench"}
ADMIN, APP = "spiffe://kms.dev/admin", "spiffe://kms.dev/app"
TARGET = 0.85


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    certs = Path(tempfile.mkdtemp(prefix="kms-bench-certs-"))
    subprocess.run(
        [str(REPOSITORY / "scripts" / "make-dev-certs.sh"), str(certs), "admin", "app"], check=True, capture_output=True
    )
    app_files = TlsFiles(certs / "ca.crt", certs / "app.crt", certs / "app.key")
    mtls_env = {
        "KMS_TLS_CERT": str(certs / "server.crt"),
        "KMS_TLS_KEY": str(certs / "server.key"),
        "KMS_CLIENT_CA": str(certs / "ca.crt"),
        "KMS_BOOTSTRAP_ADMIN": ADMIN,
    }
    configurations = {
        "open": {"launcher_args": ["--no-audit"]},
        "mtls": {"launcher_args": ["--no-audit"], "env": mtls_env, "tls": app_files},
        "secured": {"env": mtls_env, "tls": app_files},
    }
    request = pb.GenerateDataKeyRequest(key_id=KEY_ID, encryption_context=CONTEXT).SerializeToString()
    rpc = Rpc(f"{KMS_SERVICE}/GenerateDataKey", (request,))
    servers = {name: BenchServer(**options) for name, options in configurations.items()}
    results: dict[str, list[Measurement]] = {name: [] for name in configurations}
    try:
        for server in servers.values():
            server.__enter__()
            prepare(server, certs)
        loads = {
            name: LoadGenerator(server.target, processes=args.client_processes, server_pid=server.pid, tls=server.tls)
            for name, server in servers.items()
        }
        try:
            for round_number in range(args.rounds):
                for name, load in loads.items():
                    measured = load.run(name, rpc, args.concurrency, args.duration, args.warmup)
                    results[name].append(measured)
                    print(
                        f"  round {round_number + 1} {name:<8} {measured.rate:8.0f}/s  p50 "
                        f"{measured.percentile_ms(50):6.2f} ms  errors {measured.errors}"
                        + (f" ({measured.first_error})" if measured.errors else ""),
                        file=sys.stderr,
                    )
        finally:
            for load in loads.values():
                load.close()
    finally:
        for server in servers.values():
            server.stop()
    return report(results, args)


def prepare(server: BenchServer, certs: Path) -> None:
    """The key, and for the mTLS servers the application's encrypt grant on it."""
    if server.tls is None:
        with KmsClient(server.target) as client:
            client.create_key(KEY_ID)
        return
    admin = tls_credentials(str(certs / "ca.crt"), str(certs / "admin.crt"), str(certs / "admin.key"))
    with KmsClient(server.target, credentials=admin) as client:
        client.create_key(KEY_ID)
        client.grant_permissions(APP, KEY_ID, ["encrypt"])


def report(results: dict[str, list[Measurement]], args: argparse.Namespace) -> int:
    combined = {name: Measurement.combine(parts) for name, parts in results.items()}
    base = combined["open"].rate
    per_round = [
        {name: results[name][i].rate / results["open"][i].rate for name in results} for i in range(args.rounds)
    ]
    rows = []
    for name, measurement in combined.items():
        spread = [r[name] for r in per_round]
        rows.append(
            [
                name,
                str(args.concurrency),
                f"{measurement.rate:.0f}",
                f"{measurement.percentile_ms(50):.2f}",
                f"{measurement.percentile_ms(99):.2f}",
                str(measurement.errors),
                f"{measurement.rate / base:.0%} ({min(spread):.0%}-{max(spread):.0%})",
                f"{measurement.server_cpu_us_per_call or 0:.0f}",
            ]
        )
    print_table(
        "GenerateDataKey: mutual TLS, authorization and audit against the open server",
        ["server", "conc", "calls/s", "p50 ms", "p99 ms", "errors", "vs open", "us/call"],
        rows,
    )
    secured = combined["secured"].rate / base
    verdict = "met" if secured >= TARGET else "NOT met"
    print(
        f"\ntarget: secured at concurrency {args.concurrency} is {secured:.1%} of open "
        f"(goal at least {TARGET:.0%}, i.e. at most {1 - TARGET:.0%} fewer calls): {verdict}"
    )
    path = write_json(
        "security",
        {
            "settings": vars(args),
            "cells": {name: m.summary() for name, m in combined.items()},
            "vs_open": {name: m.rate / base for name, m in combined.items()},
            "vs_open_rounds": per_round,
            "target": {"secured_vs_open_at_least": TARGET, "value": secured, "met": secured >= TARGET},
        },
    )
    print(f"wrote {path.relative_to(REPOSITORY)}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="callers in flight (default 16)")
    parser.add_argument("--client-processes", type=int, default=2, help="load generator processes (default 2)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
