"""The benchmarks' shared harness: a KMS server in a process of its own, closed-loop load from
client processes, latency percentiles, a results table and a JSON record.

    with BenchServer() as server, LoadGenerator(server.target) as load:
        empty = load.run("Empty", Rpc(EMPTY_METHOD, (b"",)), concurrency=16, duration=5)
    print_table("results", ["call", "calls/s"], [[empty.name, f"{empty.rate:.0f}"]])
    write_json("service", {"cells": [empty.summary()]})

Load is closed-loop: each of ``concurrency`` callers sends its next call as soon as the previous
one returned. Callers are spread over client processes that send raw request bytes through
grpc.aio and never parse a response, so the client costs the same for every method, and no
single client GIL limits the rate. Callers start together, warm up, and only the calls that
finish inside the measured window count, for the rate and for the latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPOSITORY = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPOSITORY / "bench-results"
LAUNCHER = Path(__file__).resolve().with_name("_serve.py")

# The empty unary call served beside the key service, through the same request pipeline.
BENCH_SERVICE = "kms.bench.v1.Bench"
EMPTY_METHOD = f"/{BENCH_SERVICE}/Empty"
KMS_SERVICE = "/kms.v1.KeyManagementService"

CALL_TIMEOUT = 30.0
_START_DELAY = 0.25  # between handing out a run and its first call, so every caller is ready


# -- what a run measures -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for mutual TLS: the CA that signed the server, and the client's certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes())


def open_channel(target: str, tls: TlsFiles | None, aio: bool = False, own_connection: bool = False):
    """``own_connection``: a TCP connection of its own, not shared with other channels to
    ``target`` of this process (gRPC shares them by default)."""
    module = grpc.aio if aio else grpc
    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    if tls is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, tls.credentials(), options=options)


@dataclass(frozen=True)
class Rpc:
    """A unary method (``/package.Service/Method``) and serialized requests, sent in turn.

    Caller number ``c`` starts at request ``c * stride`` and goes on in order. With the default
    stride of 1, neighbouring callers walk the same requests a step apart; a stride of
    ``len(requests) // concurrency`` gives each caller a stretch of its own (requests naming
    many keys, each caller on other keys than the rest)."""

    method: str
    requests: tuple[bytes, ...]
    stride: int = 1


@dataclass(frozen=True)
class Window:
    """A run's schedule, in time.monotonic() seconds (one clock for every process here)."""

    start: float
    measure_from: float
    measure_until: float

    @classmethod
    def after(cls, delay: float, warmup: float, duration: float) -> Window:
        start = time.monotonic() + delay
        return cls(start, start + warmup, start + warmup + duration)

    @property
    def duration(self) -> float:
        return self.measure_until - self.measure_from

    def open(self) -> bool:
        return time.monotonic() < self.measure_until


class Tally:
    """What one caller saw inside the window: the latency of each call, and its errors."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.latencies = array("d")
        self.errors = 0
        self.first_error = ""

    def add(self, started: float, finished: float, error: str | None = None) -> None:
        if not self.window.measure_from <= finished < self.window.measure_until:
            return
        if error is None:
            self.latencies.append(finished - started)
            return
        self.errors += 1
        self.first_error = self.first_error or error


@dataclass
class Measurement:
    """One cell: a name, a concurrency, and the calls that finished in the measured window."""

    name: str
    concurrency: int
    seconds: float
    latencies: list[float] = field(repr=False)  # seconds, sorted
    errors: int = 0
    first_error: str = ""
    # CPU cores busy during the window (1.0 = one core), when /proc could tell: the process
    # that serves the calls (the KMS server, or this one for in-process baselines) and the
    # client processes together.
    server_cpu: float | None = None
    client_cpu: float | None = None

    @classmethod
    def merge(cls, name: str, concurrency: int, window: Window, tallies: Sequence[Tally]) -> Measurement:
        latencies = sorted(value for tally in tallies for value in tally.latencies)
        errors = sum(tally.errors for tally in tallies)
        first_error = next((tally.first_error for tally in tallies if tally.first_error), "")
        return cls(name, concurrency, window.duration, latencies, errors, first_error)

    @classmethod
    def combine(cls, parts: Sequence[Measurement]) -> Measurement:
        """One measurement from several of the same cell (rounds): calls and seconds add up."""
        seconds = [part.seconds for part in parts]

        def mean(values: list[float | None]) -> float | None:
            if any(value is None for value in values):
                return None
            return sum(v * s for v, s in zip(values, seconds, strict=True)) / sum(seconds)  # type: ignore[operator]

        return cls(
            parts[0].name,
            parts[0].concurrency,
            sum(seconds),
            sorted(value for part in parts for value in part.latencies),
            sum(part.errors for part in parts),
            next((part.first_error for part in parts if part.first_error), ""),
            mean([part.server_cpu for part in parts]),
            mean([part.client_cpu for part in parts]),
        )

    @property
    def server_cpu_us_per_call(self) -> float | None:
        """Server CPU time per successful call, in microseconds."""
        if self.server_cpu is None or not self.calls:
            return None
        return self.server_cpu * self.seconds / self.calls * 1e6

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.calls / self.seconds

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds (NaN without calls)."""
        if not self.latencies:
            return float("nan")
        rank = max(1, -(-len(self.latencies) * q // 100))  # ceil(n * q / 100)
        return self.latencies[int(rank) - 1] * 1000

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "calls": self.calls,
            "errors": self.errors,
            "first_error": self.first_error,
            "calls_per_second": round(self.rate, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "max_ms": round(self.percentile_ms(100), 3),
            "server_cpu_cores": _rounded(self.server_cpu, 2),
            "server_cpu_us_per_call": _rounded(self.server_cpu_us_per_call, 1),
            "client_cpu_cores": _rounded(self.client_cpu, 2),
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class CpuProbe:
    """CPU time of some processes between a window's edges, read from /proc (Linux).

    Starts a thread that waits for the window; ``cores()`` then gives each process's busy
    cores on average over the window, or None where /proc could not tell.
    """

    def __init__(self, pids: Sequence[int], window: Window, *, descendants: bool = False) -> None:
        """``descendants``: count each process's live descendants with it (a server of several
        processes as one)."""
        self._pids = list(pids)
        self._window = window
        self._descendants = descendants
        self._cores: list[float | None] = [None] * len(self._pids)
        self._thread = threading.Thread(target=self._watch, name="cpu-probe", daemon=True)
        self._thread.start()

    def cores(self) -> list[float | None]:
        self._thread.join()
        return self._cores

    def _watch(self) -> None:
        time.sleep(max(0.0, self._window.measure_from - time.monotonic()))
        before = [_cpu_seconds(pid, self._descendants) for pid in self._pids]
        time.sleep(max(0.0, self._window.measure_until - time.monotonic()))
        after = [_cpu_seconds(pid, self._descendants) for pid in self._pids]
        self._cores = [
            None if a is None or b is None else (b - a) / self._window.duration
            for a, b in zip(before, after, strict=True)
        ]


def _cpu_seconds(pid: int, descendants: bool = False) -> float | None:
    """User plus system CPU seconds so far of all the threads of the process, and with
    ``descendants`` of its live descendants too."""
    stats = _process_stats()
    if pid not in stats:
        return None
    tree, added = {pid}, descendants
    while added:
        children = {child for child, (parent, _) in stats.items() if parent in tree} - tree
        tree |= children
        added = bool(children)
    return sum(stats[member][1] for member in tree) / os.sysconf("SC_CLK_TCK")


def _process_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system clock ticks) of every process /proc shows."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


def _total(values: Sequence[float | None]) -> float | None:
    return None if not values or any(value is None for value in values) else sum(values)  # type: ignore[arg-type]


# -- the server ----------------------------------------------------------------------------


class BenchServer:
    """The KMS plus the bench's empty call, run by ``_serve.py`` in a process of its own.

    It gets a fresh temporary data directory, hence its own embedded SoftHSM token, and SQLite
    there unless ``database_url`` names PostgreSQL: then a fresh database ``<name>_<hex>`` is
    created on that server and dropped afterwards (the name in the URL is only a prefix).
    ``env`` adds KMS_* settings. ``launcher`` is a script that serves as ``_serve.py`` does
    (prints its target, serves until SIGTERM), started with ``launcher_args``.
    Use as a context manager; ``pid`` is the server's, for profilers.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        launcher: Path = LAUNCHER,
        launcher_args: Sequence[str] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        """``tls``: the client files to reach a server configured (through ``env``) for mutual TLS."""
        self.tls = tls
        self._database_prefix = database_url
        self._env = dict(env or {})
        self._launcher = launcher
        self._launcher_args = list(launcher_args)
        self.data_dir = Path()
        self.database_url = ""
        self.target = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0  # from launching the process to SERVING, for the last start

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.data_dir / "server.log"

    def __enter__(self) -> BenchServer:
        self.data_dir = Path(tempfile.mkdtemp(prefix="kms-bench-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def restart(self) -> float:
        """Stops the server and starts it again on the same data directory and database (a new
        port: read ``target`` again); returns the start-up seconds."""
        self._stop_process()
        self._launch()
        return self.startup_seconds

    def rss_bytes(self) -> int | None:
        """The server process's resident set size now (Linux), or None when /proc cannot tell."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def _start(self) -> None:
        prefix = self._database_prefix
        if prefix and prefix.startswith("postgresql"):
            self.database_url = _create_postgres_database(prefix)
        else:
            self.database_url = prefix or f"sqlite:///{self.data_dir / 'kms.db'}"
        self._launch()

    def _launch(self) -> None:
        launched = time.monotonic()
        env = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
        env.update(
            KMS_DATA_DIR=str(self.data_dir),
            KMS_LISTEN="127.0.0.1:0",
            KMS_DATABASE_URL=self.database_url,
            KMS_LOG_FORMAT="text",
            KMS_SHUTDOWN_GRACE="1s",
        )
        env.update(self._env)
        if "KMS_TLS_CERT" not in env:
            env.setdefault("KMS_DEV_MODE", "true")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(self._launcher), *self._launcher_args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        self.target = self.process.stdout.readline().decode().strip()  # the launcher's one line
        if not self.target:
            raise RuntimeError(f"bench server did not start:\n{self.log.read_text()}")
        self._wait_serving()
        self.startup_seconds = time.monotonic() - launched

    def _stop_process(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with open_channel(self.target, self.tls) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"bench server exited:\n{self.log.read_text()}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"bench server not SERVING after {timeout:.0f}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self._stop_process()
        if self.database_url.startswith("postgresql"):
            _drop_postgres_database(self.database_url)
            self.database_url = ""
        if self.data_dir.parts:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _admin_dsn(url: str) -> tuple[str, str]:
    """The libpq DSN of the server's maintenance database, and the database named in ``url``."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False), parsed.database or "kms_bench"


def _create_postgres_database(url: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn, prefix = _admin_dsn(url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(url: str) -> None:
    import psycopg

    dsn, name = _admin_dsn(url)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    rpc: Rpc
    callers: int
    first_caller: int  # callers start at different requests of rpc.requests
    window: Window


class LoadGenerator:
    """Client processes (``spawn``ed, each with one grpc.aio channel) that stay up between runs.

    ``run`` spreads ``concurrency`` callers over the processes as evenly as it can, so every
    method of a benchmark meets the same client. With ``server_pid``, each measurement also
    says how busy the server and the client processes were.
    """

    def __init__(
        self,
        target: str,
        processes: int = 2,
        *,
        server_pid: int | None = None,
        tls: TlsFiles | None = None,
        connections: int = 1,
    ) -> None:
        """``connections``: TCP connections per client process, callers spread over them. A
        server of several processes on one port (SO_REUSEPORT) gets each connection in one of
        them, chosen by a hash of its addresses: a few connections could all land on one."""
        self._server_pid = server_pid
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        try:
            for _ in range(processes):
                mine, theirs = context.Pipe()
                worker = context.Process(target=_client_process, args=(target, theirs, tls, connections), daemon=True)
                worker.start()
                self._workers.append((worker, mine))
            for _, connection in self._workers:
                if not connection.poll(60):
                    raise TimeoutError(f"a client process could not connect to {target} within 60s")
                try:
                    connection.recv()
                except EOFError:
                    raise RuntimeError(
                        "a client process died while starting (spawned processes import the main module: "
                        "is its work under `if __name__ == '__main__'`?)"
                    ) from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, name: str, rpc: Rpc, concurrency: int, duration: float, warmup: float = 1.0) -> Measurement:
        """``concurrency`` callers send ``rpc`` for ``warmup`` then ``duration`` seconds."""
        window = Window.after(_START_DELAY, warmup, duration)
        busy = []
        first = 0
        for index, (worker, connection) in enumerate(self._workers):
            callers = concurrency // len(self._workers) + (index < concurrency % len(self._workers))
            if callers:
                connection.send(_Job(rpc, callers, first, window))
                busy.append((worker, connection))
                first += callers
        clients = [worker.pid for worker, _ in busy if worker.pid is not None]
        probe = CpuProbe([self._server_pid, *clients], window, descendants=True) if self._server_pid else None
        tallies = [tally for _, connection in busy for tally in connection.recv()]
        measurement = Measurement.merge(name, concurrency, window, tallies)
        if probe is not None:
            server, *client_cores = probe.cores()
            measurement.server_cpu, measurement.client_cpu = server, _total(client_cores)
        return measurement

    def close(self) -> None:
        for worker, connection in self._workers:
            with contextlib.suppress(OSError):
                connection.send(None)
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
        self._workers = []


def _client_process(target: str, connection: Connection, tls: TlsFiles | None = None, connections: int = 1) -> None:
    asyncio.run(_serve_jobs(target, connection, tls, connections))


async def _serve_jobs(target: str, connection: Connection, tls: TlsFiles | None, connections: int = 1) -> None:
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(open_channel(target, tls, aio=True, own_connection=connections > 1))
            for _ in range(connections)
        ]
        for channel in channels:
            await channel.channel_ready()
        connection.send("ready")
        while (job := await loop.run_in_executor(None, connection.recv)) is not None:
            # No serializers: bytes in, bytes out. Caller i uses connection i mod connections.
            sends = [channel.unary_unary(job.rpc.method) for channel in channels]
            tallies = [Tally(job.window) for _ in range(job.callers)]
            await asyncio.gather(
                *(
                    _call_in_loop(sends[i % len(sends)], job, job.first_caller + i, tally)
                    for i, tally in enumerate(tallies)
                )
            )
            connection.send(tallies)


async def _call_in_loop(send: grpc.aio.UnaryUnaryMultiCallable, job: _Job, caller: int, tally: Tally) -> None:
    requests, window = job.rpc.requests, job.window
    await asyncio.sleep(max(0.0, window.start - time.monotonic()))
    index = caller * job.rpc.stride
    while window.open():
        request = requests[index % len(requests)]
        index += 1
        started = time.monotonic()
        try:
            await send(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            tally.add(started, time.monotonic(), f"{error.code().name}: {error.details()}")
        else:
            tally.add(started, time.monotonic())


def run_threads(
    name: str, operations: Sequence[Callable[[], object]], duration: float, warmup: float = 1.0
) -> Measurement:
    """Closed-loop load in this process: one thread per operation, each calling it in a loop.

    For baselines below gRPC (the HSM through python-pkcs11, a local AEAD). An exception counts
    as an error of that call.
    """
    window = Window.after(0.05, warmup, duration)
    tallies = [Tally(window) for _ in operations]
    probe = CpuProbe([os.getpid()], window)

    def call_in_loop(operation: Callable[[], object], tally: Tally) -> None:
        time.sleep(max(0.0, window.start - time.monotonic()))
        while window.open():
            started = time.monotonic()
            try:
                operation()
            except Exception as error:  # noqa: BLE001 - counted, reported once
                tally.add(started, time.monotonic(), type(error).__name__)
            else:
                tally.add(started, time.monotonic())

    threads = [threading.Thread(target=call_in_loop, args=pair) for pair in zip(operations, tallies, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    measurement = Measurement.merge(name, len(operations), window, tallies)
    (measurement.server_cpu,) = probe.cores()
    return measurement


# -- reporting -----------------------------------------------------------------------------


def environment() -> dict[str, object]:
    """Where and on what a result was measured. ``working_tree`` fingerprints uncommitted
    changes (tracked diff and untracked files), which the commit alone does not name."""
    return {
        "commit": _git("describe", "--always", "--dirty").strip() or "unknown",
        "working_tree": _working_tree_digest(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def _working_tree_digest() -> str:
    digest = hashlib.sha256(_git("diff", "HEAD", "--binary").encode())
    for name in sorted(_git("ls-files", "--others", "--exclude-standard").splitlines()):
        digest.update(name.encode())
        with contextlib.suppress(OSError):
            digest.update((REPOSITORY / name).read_bytes())
    return digest.hexdigest()[:16]


def write_json(name: str, payload: Mapping[str, object]) -> Path:
    """Writes ``payload`` plus the environment to ``bench-results/<name>-<UTC timestamp>.json``."""
    import json

    now = datetime.now(UTC)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{now:%Y%m%dT%H%M%SZ}.json"
    record = {"benchmark": name, "time": now.isoformat(timespec="seconds"), "environment": environment(), **payload}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [list(headers)] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            value.ljust(width) if column == 0 else value.rjust(width)
            for column, (value, width) in enumerate(zip(row, widths, strict=False))  # extra cells: unshown
        )

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * width for width in widths))
    for row in cells[1:]:
        print(line(row))
