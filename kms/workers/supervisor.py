"""``kms serve --workers N``: N worker processes on one port, and a supervisor that keeps them.

The service is CPU-bound in Python, so one process uses about one core whatever its threads.
The supervisor holds the port (kms.workers.listener), starts N workers that listen on it with
SO_REUSEPORT (kms.workers.worker), and then only watches:

- it starts worker 0 first and the others once it listens, so that the first start of a data
  directory creates the embedded SoftHSM token and migrates the database once;
- it starts a worker that ended (crashed, killed, or exited) again, at once the first time,
  then after a delay doubling up to ``MAX_BACKOFF`` while it keeps ending before it served
  for ``STABLE_AFTER`` seconds; a worker that exits with status 2 (its configuration refused)
  during the first start stops everything with status 2 instead, as ``kms serve`` would;
- on SIGTERM or SIGINT it forwards SIGTERM to every worker, each of which drains (health
  NOT_SERVING, new calls refused, calls in flight finish within KMS_SHUTDOWN_GRACE, audit
  records and usage counts written), waits for them, and exits 0 if they all did;
- it reports: log lines (``worker started``, with its pid; ``worker exited``), the status file,
  metrics and ``/healthz`` (kms.workers.status).

It never loads the PKCS#11 module, opens the database or creates a gRPC server: workers are new
programs, not forks, because none of those survive a fork (PKCS#11 requires C_Initialize in
the child; gRPC's threads and the database's connections do not cross it). Each worker sets
the Linux parent-death signal, so a supervisor killed with -9 leaves no worker behind.

Scheduled work needs nothing here: every worker runs the scheduler, and the per-key locks that
make due work happen once across replicas make it happen once across workers.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from kms.api.server import split_listen
from kms.config import Settings
from kms.workers import journals
from kms.workers.listener import SharedPort
from kms.workers.status import Document, MetricsEndpoint, SupervisorMetrics, is_serving, write_atomically

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0
CONFIGURATION_REFUSED = 2  # kms serve's exit status for a configuration it cannot serve
_TICK = 0.1
_STOP_MARGIN = 30.0  # beyond the drain: writing audit records, closing the HSM and the database

WorkerCommand = Callable[[int, int], list[str]]  # (index, report fd) -> argv


def worker_count(settings: Settings) -> int:
    """KMS_WORKERS as a number: "auto" is the CPUs this process may run on."""
    if settings.workers == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    return settings.workers or 1


def kms_worker_command(index: int, report_fd: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kms",
        "serve",
        "--worker-index",
        str(index),
        "--supervisor-fd",
        str(report_fd),
    ]


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    reports: int | None = None  # read end of the worker's report pipe
    buffered: bytes = b""
    state: str = "starting"
    port: int | None = None
    restarts: int = 0
    started: float = 0.0  # time.monotonic()
    started_at: str = ""
    served: bool = False  # this process of the index has served
    last_exit: str | None = None
    failures: int = 0  # ends in a row without serving STABLE_AFTER seconds
    restart_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def document(self) -> Document:
        return {
            "index": self.index,
            "pid": self.pid if self.state != "exited" else None,
            "state": self.state,
            "port": self.port,
            "restarts": self.restarts,
            "started": self.started_at,
            "last_exit": self.last_exit,
        }


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        shared: SharedPort,
        *,
        env: Mapping[str, str],
        port_file: Path | None = None,
        command: WorkerCommand = kms_worker_command,
    ) -> None:
        """``env``: the workers' environment (the caller's, with the flags given to kms serve
        as KMS_* variables); ``KMS_LISTEN`` is set to the shared port here."""
        self._settings = settings
        self._shared = shared
        self._count = worker_count(settings)
        self._port_file = port_file
        self._command = command
        self._status_file = settings.data_dir / "workers.json"
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="kms-metrics-"))
        self._env = {name: value for name, value in env.items() if name not in ("KMS_METRICS_LISTEN", "KMS_WORKERS")}
        self._env.update(KMS_LISTEN=shared.listen, PROMETHEUS_MULTIPROC_DIR=str(self._metrics_dir))
        self._workers = [_Worker(index) for index in range(self._count)]
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the status document, read by the metrics thread
        self._document: Document = {}
        self._metrics = SupervisorMetrics(self._metrics_dir, self._count)
        self._endpoint: MetricsEndpoint | None = None
        self._announced = False
        self._exit_status = 0

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serves until SIGTERM or SIGINT; returns the exit status."""
        signal.signal(signal.SIGTERM, lambda _signum, _frame: self._stop.set())
        signal.signal(signal.SIGINT, lambda _signum, _frame: self._stop.set())
        self._settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        journals.gather_orphans(self._settings, self._count)
        try:
            if self._settings.metrics_listen:
                host, port = split_listen(self._settings.metrics_listen)
                self._endpoint = MetricsEndpoint(host, port, self._metrics.registry, self.status)
                self._endpoint.start()
            log.info(
                "kms supervisor starting workers",
                extra={"fields": {"pid": os.getpid(), "target": self._shared.listen, "workers": self._count}},
            )
            self._start(self._workers[0])
            while not self._stop.is_set():
                self._tick()
                if self._exit_status:
                    break
            self._drain()
        finally:
            if self._endpoint is not None:
                self._endpoint.stop()
            self._shared.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("kms supervisor stopped", extra={"fields": {"status": self._exit_status}})
        return self._exit_status

    def status(self) -> Document:
        with self._lock:
            return dict(self._document)

    def _tick(self) -> None:
        for key, _ in self._selector.select(timeout=_TICK):
            self._read(key.data)
        now = time.monotonic()
        changed = False
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is not None:
                self._ended(worker, now)
                changed = True
            elif worker.restart_at is not None and now >= worker.restart_at and not self._stop.is_set():
                self._start(worker)
                changed = True
        first_listening = self._workers[0].state not in ("starting", "exited") and not self._stop.is_set()
        for worker in self._workers[1:]:
            if first_listening and worker.process is None and worker.restart_at is None and not worker.last_exit:
                self._start(worker)
                changed = True
        if changed:
            self._publish()

    def _start(self, worker: _Worker) -> None:
        read_end, write_end = os.pipe()
        try:
            worker.process = subprocess.Popen(
                self._command(worker.index, write_end),
                env=self._env,
                pass_fds=(write_end,),
                # Terminal signals reach the supervisor alone, which forwards SIGTERM in order.
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        worker.reports, worker.buffered = read_end, b""
        worker.state, worker.port, worker.served, worker.restart_at = "starting", None, False, None
        worker.started, worker.started_at = time.monotonic(), _now()
        self._selector.register(read_end, selectors.EVENT_READ, worker)
        log.info(
            "worker started",
            extra={"fields": {"worker": worker.index, "pid": worker.pid, "restarts": worker.restarts}},
        )
        self._publish()

    def _read(self, worker: _Worker) -> None:
        assert worker.reports is not None
        try:
            chunk = os.read(worker.reports, 4096)
        except BlockingIOError:
            return
        if not chunk:  # the worker closed its end: it is ending, poll() will tell how
            self._close_reports(worker)
            return
        worker.buffered += chunk
        *lines, worker.buffered = worker.buffered.split(b"\n")
        for line in lines:
            try:
                report = json.loads(line)
                state, port = str(report["state"]), report.get("port")
            except (ValueError, KeyError, TypeError):
                continue
            if state != worker.state:
                if state == "serving":
                    worker.served = True
                log.log(
                    logging.INFO if state in ("listening", "serving", "stopping") else logging.WARNING,
                    "worker state",
                    extra={"fields": {"worker": worker.index, "pid": worker.pid, "state": state}},
                )
            worker.state, worker.port = state, port if isinstance(port, int) else None
        self._publish()

    def _ended(self, worker: _Worker, now: float) -> None:
        assert worker.process is not None
        code = worker.process.returncode
        how = f"signal {-code}" if code < 0 else f"exit {code}"
        pid = worker.process.pid
        if worker.reports is not None:
            self._read(worker)  # its last words
            self._close_reports(worker)
        mark_process_dead(pid, str(self._metrics_dir))
        worker.process, worker.state, worker.port, worker.last_exit = None, "exited", None, how
        if self._stop.is_set():
            log.info("worker exited", extra={"fields": {"worker": worker.index, "pid": pid, "how": how}})
            return
        if code == CONFIGURATION_REFUSED and not self._announced:
            log.error(
                "worker refused its configuration; stopping",
                extra={"fields": {"worker": worker.index, "pid": pid, "how": how}},
            )
            self._exit_status = CONFIGURATION_REFUSED
            return
        stable = worker.served and now - worker.started >= STABLE_AFTER
        worker.failures = 0 if stable else worker.failures + 1
        delay = 0.0 if worker.failures <= 1 else min(MAX_BACKOFF, 0.5 * 2 ** (worker.failures - 2))
        worker.restart_at = now + delay
        worker.restarts += 1
        self._metrics.restarts.inc()
        log.warning(
            "worker exited; starting it again",
            extra={"fields": {"worker": worker.index, "pid": pid, "how": how, "in_seconds": delay}},
        )

    def _close_reports(self, worker: _Worker) -> None:
        if worker.reports is not None:
            self._selector.unregister(worker.reports)
            os.close(worker.reports)
            worker.reports = None

    def _publish(self) -> None:
        documents = [worker.document() for worker in self._workers]
        serving = is_serving(documents)
        document = {
            "supervisor_pid": os.getpid(),
            "listen": self._shared.listen,
            "metrics_port": self._endpoint.port if self._endpoint is not None else None,
            "serving": serving,
            "workers": documents,
        }
        with self._lock:
            if document == self._document:
                return
            self._document = document
        self._metrics.serving.set(sum(worker["state"] == "serving" for worker in documents))
        write_atomically(self._status_file, json.dumps(document, indent=2) + "\n")
        if not self._announced and all(worker.state not in ("starting", "exited") for worker in self._workers):
            self._announced = True
            if self._port_file is not None:
                write_atomically(self._port_file, f"{self._shared.port}\n")
            log.info("kms serving", extra={"fields": {"target": self._shared.listen, "workers": self._count}})

    # -- stopping --------------------------------------------------------------------------

    def _drain(self) -> None:
        """SIGTERM to every worker, then wait for all of them; SIGKILL for those that outlast
        the drain by far."""
        self._stop.set()
        live = [worker for worker in self._workers if worker.process is not None]
        for worker in live:
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace.total_seconds() + _STOP_MARGIN
        while any(worker.process is not None for worker in self._workers):
            if time.monotonic() > deadline:
                for worker in self._workers:
                    if worker.process is not None:
                        log.error("worker did not stop; killing it", extra={"fields": {"pid": worker.pid}})
                        worker.process.kill()
                deadline = float("inf")
            self._tick()
        if any(worker.last_exit not in (None, "exit 0") for worker in live) and not self._exit_status:
            self._exit_status = 1
        self._publish()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
