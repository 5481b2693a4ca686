"""``kms serve --workers N`` in a process of its own, and ways to look at each worker."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.process import ServerProcess, clean_env

SERVING = health_pb2.HealthCheckResponse.SERVING

# Settings that make the workers' background work (health, scheduler, HSM reconnection) quick
# enough to watch in a test.
FAST = {
    "KMS_HEALTH_INTERVAL": "0.2s",
    "KMS_HSM_RETRY_INTERVAL": "0.2s",
    "KMS_SCHEDULER_INTERVAL": "0.2s",
    "KMS_MIN_ROTATION_PERIOD": "1s",
    "KMS_MIN_DESTROY_PENDING_WINDOW": "1s",
    "KMS_SHUTDOWN_GRACE": "5s",
}


def workers_env(hsm_env: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a WorkersProcess: the test token, FAST, a label prefix of its own,
    and an HSM outage file (kms.hsm.outage) at ``tmp_path / "hsm-outage"``."""
    return clean_env(
        {
            **hsm_env,
            **FAST,
            "KMS_PKCS11_LABEL_PREFIX": "w" + uuid.uuid4().hex[:10],
            "KMS_HSM_OUTAGE_FILE": str(tmp_path / "hsm-outage"),
            **extra,
        }
    )


class WorkersProcess(ServerProcess):
    """A supervisor and ``workers`` workers, each also on a port of its own
    (``--worker-listen 127.0.0.1:0``), with metrics and /healthz on a free port."""

    def __init__(self, data_dir: Path, env: dict[str, str], workers: int = 2) -> None:
        super().__init__(
            data_dir,
            env,
            args=("--workers", str(workers), "--worker-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"),
        )
        self.workers = workers

    def start(self, crash_at: str | None = None, wait: bool = True, *, same_port: bool = False) -> WorkersProcess:
        super().start(crash_at, wait, same_port=same_port)
        if wait:
            self.wait_workers_serving()
        return self

    # -- what the supervisor reports -------------------------------------------------------

    def status(self) -> dict:
        return json.loads((self.data_dir / "workers.json").read_text())

    def worker(self, index: int) -> dict:
        return self.status()["workers"][index]

    def worker_target(self, index: int) -> str:
        return f"127.0.0.1:{self.worker(index)['port']}"

    def wait_workers_serving(self, timeout: float = 60, *, not_pids: tuple[int, ...] = ()) -> list[dict]:
        """Until every worker serves (and none is a process in ``not_pids``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            workers = self.status()["workers"]
            if all(w["state"] == "serving" and w["pid"] not in not_pids for w in workers):
                return workers
            time.sleep(0.05)
        raise TimeoutError(f"workers not all serving after {timeout}s: {self.status()}\n{self.log.read_text()}")

    def metrics(self) -> str:
        port = self.status()["metrics_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    def healthz(self) -> int:
        port = self.status()["metrics_port"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def wait_healthz(self, status: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.healthz() != status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"/healthz never answered {status}: {self.status()}")
            time.sleep(0.05)

    def ledger_seq_of(self, pid: int) -> int:
        """The ledger entry the worker ``pid`` has applied (kms_metadata_ledger_seq)."""
        match = re.search(rf'^kms_metadata_ledger_seq{{pid="{pid}"}} (\S+)$', self.metrics(), re.M)
        return int(float(match.group(1))) if match else -1

    def wait_ledger(self, pid: int, seq: int, timeout: float = 30) -> None:
        """Until the worker ``pid`` has applied ledger entry ``seq``: after that, it must show
        everything up to that change."""
        deadline = time.monotonic() + timeout
        while self.ledger_seq_of(pid) < seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {pid} did not reach ledger entry {seq}")
            time.sleep(0.02)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def ledger_head(data_dir: Path, database_url: str | None = None) -> int:
    """The newest metadata ledger entry in the server's database: ``database_url`` (PostgreSQL),
    else the embedded SQLite database of ``data_dir``."""
    if database_url:
        with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://", 1)) as connection:
            row = connection.execute("SELECT seq FROM ledger_head").fetchone()
            assert row is not None
            return int(row[0])
    with sqlite3.connect(data_dir / "kms.db") as connection:
        return connection.execute("SELECT seq FROM ledger_head").fetchone()[0]


def health(target: str, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def listening_pids(port: int) -> set[int]:
    """The processes with a listening TCP socket on ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            pids.add(int(entry.name))
    return pids


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
