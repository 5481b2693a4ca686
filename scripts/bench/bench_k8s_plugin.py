#!/usr/bin/env python
"""The Kubernetes KMS v2 plugin's Encrypt rate beside the SDK's GenerateDataKey, on one KMS.

    .venv/bin/python scripts/bench/bench_k8s_plugin.py [--duration 3] [--concurrency 4] [--rounds 1]

Starts a KMS (BenchServer: its own process, SoftHSM token and SQLite) and ``kms k8s-plugin`` in
a process of its own on a unix socket, as it runs beside kube-apiserver. Then, per round, one
after the other so that they compare neighbours in time, ``--concurrency`` threads of this
process call in a closed loop:

- GenerateDataKey through the SDK (``KmsClient.generate_data_key``) for the plugin's key and
  encryption context: the one KMS call inside every plugin Encrypt;
- Encrypt of a 32-byte seed through the socket with a stub generated from the upstream
  api.proto, as kube-apiserver calls it.

Prints calls per second, p50/p99 latency and Encrypt over GenerateDataKey (with its range
over rounds), and writes bench-results/k8s_plugin-<time>.json. The difference is the plugin's
own cost: one more gRPC hop over the socket, the SDK's envelope (HKDF, HMAC, AES-GCM of 32
bytes) and the plugin's checks, in a second Python process that shares the two cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from _harness import BenchServer, Measurement, print_table, run_threads, write_json

from kms_client import KmsClient
from kms_proto.k8s.kms.apis.v2 import api_pb2, api_pb2_grpc

KEY_ID = "k8s-bench"
CONTEXT_ENTRIES = {"cluster": "bench"}
# What the plugin binds: the entries above plus its purpose (kms.k8s.plugin).
CONTEXT = {**CONTEXT_ENTRIES, "purpose": "kubernetes-kms-v2"}
SEED_BYTES = 32


class PluginProcess:
    """``kms k8s-plugin`` on a socket in a fresh temporary directory, until SIGTERM."""

    def __init__(self, kms_target: str) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="kms-k8s-"))
        self.socket = self._directory / "kms.sock"
        self.log = self._directory / "plugin.log"
        env = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
        context = [argument for key, value in CONTEXT_ENTRIES.items() for argument in ("--context", f"{key}={value}")]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kms",
                    "k8s-plugin",
                    "--socket",
                    str(self.socket),
                    "--key-id",
                    KEY_ID,
                    *context,
                    "--target",
                    kms_target,
                    "--log-format",
                    "text",
                    "--log-level",
                    "WARNING",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ok()

    def _wait_ok(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            stub = api_pb2_grpc.KeyManagementServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"plugin exited:\n{self.log.read_text()}")
                try:
                    if stub.Status(api_pb2.StatusRequest(), timeout=2).healthz == "ok":
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"plugin not ok after {timeout:.0f}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for leftover in (self.log, self.socket):
            leftover.unlink(missing_ok=True)
        self._directory.rmdir()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rounds: list[tuple[Measurement, Measurement]] = []
    with BenchServer() as server:
        with KmsClient(server.target) as client:
            client.create_key(KEY_ID)
        plugin = PluginProcess(server.target)
        print(
            f"KMS pid {server.pid} on {server.target}, plugin pid {plugin.process.pid} on {plugin.socket}; "
            f"{args.concurrency} callers, {args.duration:g}s per cell",
            file=sys.stderr,
        )
        try:
            with KmsClient(server.target) as client, grpc.insecure_channel(f"unix://{plugin.socket}") as channel:
                stub = api_pb2_grpc.KeyManagementServiceStub(channel)
                request = api_pb2.EncryptRequest(plaintext=os.urandom(SEED_BYTES), uid="bench")

                def generate() -> object:
                    return client.generate_data_key(KEY_ID, CONTEXT)

                def encrypt() -> object:
                    return stub.Encrypt(request, timeout=10)

                for _ in range(args.rounds):
                    pair = (
                        run_threads("GenerateDataKey (SDK)", [generate] * args.concurrency, args.duration, args.warmup),
                        run_threads("Encrypt (plugin)", [encrypt] * args.concurrency, args.duration, args.warmup),
                    )
                    for measurement in pair:
                        report_progress(measurement)
                    rounds.append(pair)
        finally:
            plugin.stop()
    generate_cell = Measurement.combine([pair[0] for pair in rounds])
    encrypt_cell = Measurement.combine([pair[1] for pair in rounds])
    per_round = [_ratio(e.rate, g.rate) for g, e in rounds]
    ratio = _ratio(encrypt_cell.rate, generate_cell.rate)
    print_table(
        f"results ({args.concurrency} concurrent callers; client CPU: cores this process kept busy)",
        ["call", "calls/s", "p50 ms", "p99 ms", "errors", "client CPU"],
        [
            [
                cell.name,
                f"{cell.rate:.0f}",
                f"{cell.percentile_ms(50):.2f}",
                f"{cell.percentile_ms(99):.2f}",
                cell.errors,
                "-" if cell.server_cpu is None else f"{cell.server_cpu:.2f}",
            ]
            for cell in (generate_cell, encrypt_cell)
        ],
    )
    spread = f" (rounds: {', '.join(f'{r:.0%}' for r in per_round if r is not None)})" if len(rounds) > 1 else ""
    print(
        f"\nEncrypt through the plugin / GenerateDataKey through the SDK: "
        f"{'-' if ratio is None else f'{ratio:.0%}'}{spread}"
    )
    path = write_json(
        "k8s_plugin",
        {
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "context": CONTEXT,
                "seed_bytes": SEED_BYTES,
            },
            "cells": [generate_cell.summary(), encrypt_cell.summary()],
            "encrypt_vs_generate_data_key": ratio,
            "encrypt_vs_generate_data_key_rounds": per_round,
            "wall_clock_s": round(time.monotonic() - started, 1),
        },
    )
    print(f"wrote {path.relative_to(path.parents[1])}")
    return 1 if generate_cell.errors or encrypt_cell.errors else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument("--concurrency", type=int, default=4, help="callers in flight (default 4)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both cells this many times (default 1)")
    return parser.parse_args(argv)


def report_progress(measurement: Measurement) -> None:
    errors = f", {measurement.errors} errors ({measurement.first_error})" if measurement.errors else ""
    print(
        f"  {measurement.name:<22} {measurement.rate:8.0f}/s  p50 {measurement.percentile_ms(50):6.2f} ms"
        f"  p99 {measurement.percentile_ms(99):6.2f} ms{errors}",
        file=sys.stderr,
    )


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base else None


if __name__ == "__main__":
    sys.exit(main())
