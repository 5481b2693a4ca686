"""The benchmark server: the KMS as ``kms serve`` builds it, plus ``kms.bench.v1.Bench/Empty``.

Settings come from KMS_* variables (BenchServer sets them). The empty call is served through the
same request pipeline as every KMS method (authentication, parsing, audit, error mapping,
metrics) on the same server and thread pool; the difference between it and GenerateDataKey is
the service's own work. With ``--no-audit`` the audit log is replaced by one that records
nothing (only to measure what auditing costs). Prints the target it listens on as its one line
of output, then serves until SIGTERM or SIGINT.

``--workers N`` serves as ``kms serve --workers N`` does (kms.workers): this process is the
supervisor, holding the port, and starts N workers, each this script again (``--worker-index``),
serving the empty call beside the KMS's. The harness counts the workers (and their audit
writers) in the server CPU figure: it sums the process tree.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from _harness import BENCH_SERVICE
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2

from kms import logs
from kms.app import Application
from kms.config import Settings
from kms.service.calls import Call


def bench_service():
    """The descriptor of kms.bench.v1.Bench, defined here rather than in proto/: it is not part
    of the product's contract."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(BENCH_SERVICE)
    except KeyError:
        pass
    package, _, name = BENCH_SERVICE.rpartition(".")
    file = descriptor_pb2.FileDescriptorProto(
        name="kms/bench/v1/bench.proto",
        package=package,
        syntax="proto3",
        dependency=[empty_pb2.DESCRIPTOR.name],
    )
    file.service.add(name=name).method.add(
        name="Empty", input_type=".google.protobuf.Empty", output_type=".google.protobuf.Empty"
    )
    pool.Add(file)
    return pool.FindServiceByName(BENCH_SERVICE)


class BenchServicer:
    def Empty(self, request: empty_pb2.Empty, call: Call) -> empty_pb2.Empty:
        return empty_pb2.Empty()


class NoAudit:
    """Records nothing (admits everyone the real recorder would): only for measuring what the
    audit log costs."""

    def __init__(self, recorder: object) -> None:
        self._recorder = recorder

    def admit(self, call: Call, *, audited: bool = True) -> None:
        self._recorder.admit(call, audited=audited)  # type: ignore[attr-defined]

    def finish(self, call: Call, error: object, *, action: str | None = None, fail_open: bool = False) -> object:
        call.trail.take_items()
        return error

    def record_items(self, call: Call, *, action: str | None = None) -> None:
        call.trail.take_items()


def supervise(workers: int, no_audit: bool) -> int:
    """The supervisor of ``workers`` workers, each this script; prints the shared port first."""
    from kms.workers.listener import reserve
    from kms.workers.supervisor import Supervisor

    settings = Settings(workers=workers)
    shared = reserve(settings.listen)
    print(shared.listen, flush=True)

    def command(index: int, report_fd: int) -> list[str]:
        flags = ["--no-audit"] if no_audit else []
        return [sys.executable, __file__, "--worker-index", str(index), "--supervisor-fd", str(report_fd), *flags]

    return Supervisor(settings, shared, env=dict(os.environ), command=command).run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="serve as kms serve --workers N")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-fd", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    services = ((bench_service(), BenchServicer()),)
    recorder_factory = NoAudit if arguments.no_audit else None
    if arguments.worker_index is not None and arguments.supervisor_fd is not None:
        from kms.workers import worker

        sys.exit(
            worker.run(
                settings,
                arguments.worker_index,
                arguments.supervisor_fd,
                extra_services=services,
                recorder_factory=recorder_factory,
            )
        )
    if arguments.workers:
        sys.exit(supervise(arguments.workers, arguments.no_audit))
    app = Application(settings, extra_services=services, recorder_factory=recorder_factory)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: app.stop())
    signal.signal(signal.SIGINT, lambda _signum, _frame: app.stop())
    app.start()
    print(app.target, flush=True)
    app.wait()


if __name__ == "__main__":
    main()
