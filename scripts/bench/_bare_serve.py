"""The bare gRPC baseline: ``kms.bench.v1.Bench/Empty`` on a plain grpcio server, nothing else.

No request pipeline, no parsing, no authentication, no audit, no metrics: a generic handler that
answers the raw request bytes with empty bytes, on a ``grpc.server`` with a thread pool of
``KMS_MAX_WORKERS`` threads (as the KMS's), the same grpcio and the same load generator. The
gap between this and a KMS method is everything the KMS adds to a call. It serves health (so
that BenchServer can wait for it as for the KMS) and prints its target as its one line.

``--workers N`` runs N such processes on one port (SO_REUSEPORT; the kernel spreads connections
among them); this process then only starts, watches and stops them. Its children are counted in
the server CPU figure (the harness sums the process tree).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent import futures

import grpc
from _harness import EMPTY_METHOD
from grpc_health.v1 import health, health_pb2_grpc

from kms.config import Settings

_SERVICE, _, _METHOD = EMPTY_METHOD.strip("/").rpartition("/")


def serve(port: int, max_workers: int, share_port: bool) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[("grpc.so_reuseport", 1 if share_port else 0)],
    )
    empty = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {_METHOD: empty}),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopped.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stopped.set())
    server.start()
    print(f"127.0.0.1:{bound}", flush=True)
    while not stopped.wait(0.2):  # bounded: signal handlers run only when the main thread does
        pass
    server.stop(1).wait()


def supervise(workers: int, max_workers: int) -> None:
    """Starts ``workers`` serving processes on one free port, prints it, stops them on a signal."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, __file__, "--port", str(port), "--share-port"]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(workers)]
    for child in children:
        assert child.stdout is not None
        if not child.stdout.readline():
            raise SystemExit("a bare server process did not start")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopped.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stopped.set())
    print(f"127.0.0.1:{port}", flush=True)
    while not stopped.wait(0.2) and all(child.poll() is None for child in children):
        pass
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1, help="serving processes on one port (default 1)")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--share-port", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    max_workers = int(os.environ.get("KMS_MAX_WORKERS", Settings.model_fields["max_workers"].default))
    if arguments.workers > 1:
        supervise(arguments.workers, max_workers)
    else:
        serve(arguments.port, max_workers, arguments.share_port)


if __name__ == "__main__":
    main()
