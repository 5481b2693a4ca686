#!/usr/bin/env python
"""A soak under faults: ``kms serve --workers 2`` on PostgreSQL, a mixed load, random faults.

    .venv/bin/python scripts/soak.py --duration 300 [--workers 2] [--clients 4] [--seed N]
        [--json FILE] [--postgres-bin DIR] [--keep]

It starts a PostgreSQL cluster of its own (initdb into a temporary directory, a free port; as
the ``postgres`` user when run as root), so that restarting it disturbs nothing else, and the
KMS with ``--workers 2`` on a fresh data directory (its own SoftHSM token, KMS_HSM_OUTAGE_FILE
set). Then, for ``--duration`` seconds:

- ``--clients`` threads, each with a connection of its own (the kernel spreads connections over
  the workers), call through the Python SDK without retries, so every answer of the service is
  seen: ``encrypt`` (GenerateDataKey) of 64-2048 random bytes under one of four keys (two
  wrapped, two HSM objects) with a context, ``decrypt`` of a ciphertext written earlier (its
  plaintext compared), ``rewrap`` (ReWrap) of one, ``rotate`` a key, ``grant`` and ``revoke``
  a grant;
- faults, at random moments, each of the three at least once (in a random order in the first
  two thirds of the run), then one every 10-30 s: ``kill -9`` of a worker chosen at random (its
  pid from ``workers.json``), a PostgreSQL restart (``pg_ctl restart -m fast``), and the HSM
  unavailable for 2-5 s and back (kms.hsm.outage: a device fault, the real module finalized,
  reconnection refused while the file exists).

At the end it waits until both workers serve again, then checks that every ciphertext it wrote
(rewrapped ones and their originals) still decrypts to its plaintext, that ``kms audit verify``
passes, that no call was ever answered UNKNOWN or INTERNAL, and that SIGTERM drains the server
to exit status 0. It prints availability (calls answered OK over all calls), errors by status
code, p50/p99 per operation (successful calls), the faults with their times, and the checks;
``--json`` writes the same. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
KEYS = (
    ("soak-wrapped-0", "WRAPPED"),
    ("soak-wrapped-1", "WRAPPED"),
    ("soak-hsm-0", "HSM_OBJECT"),
    ("soak-hsm-1", "HSM_OBJECT"),
)
# Weights of the operations each client picks from.
MIX = (("encrypt", 36), ("decrypt", 36), ("rewrap", 20), ("rotate", 2), ("grant", 3), ("revoke", 3))
FAULTS = ("kill_worker", "restart_postgres", "hsm_outage")
CALL_TIMEOUT = 10.0


# -- PostgreSQL of our own -------------------------------------------------------------------


class PostgresCluster:
    """initdb + pg_ctl on a free loopback port, trust authentication, removed at the end."""

    def __init__(self, root: Path, bin_dir: Path | None) -> None:
        self.bin = bin_dir or _postgres_bin()
        self.directory = root / "pg"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/kms"

    def start(self) -> None:
        self.directory.mkdir(mode=0o700)
        if self._as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
            os.chmod(self.directory.parent, 0o755)
        self._run("initdb", "-D", str(self.directory), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._pg_ctl("start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "kms")

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.directory), "stop", "-m", "immediate")

    def _pg_ctl(self, *action: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.directory}"
        self._run(
            "pg_ctl", "-D", str(self.directory), "-w", "-t", "60", "-l", str(self.directory / "log"),
            "-o", options, *action,
        )  # fmt: skip

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd="/")


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("soak: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin); give --postgres-bin")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the KMS -----------------------------------------------------------------------------------


class Server:
    """``kms serve --workers N --dev`` in a process of its own."""

    def __init__(self, data_dir: Path, database_url: str, workers: int) -> None:
        self.data_dir = data_dir
        self.outage_file = data_dir / "hsm-outage"
        self.port_file = data_dir / "server.port"
        self.status_file = data_dir / "workers.json"
        self.log = data_dir / "server.log"
        self.workers = workers
        self.database_url = database_url
        self.process: subprocess.Popen[bytes] | None = None
        self.target = ""

    def env(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
        env.update(
            KMS_DATABASE_URL=self.database_url,
            KMS_HSM_OUTAGE_FILE=str(self.outage_file),
            KMS_HEALTH_INTERVAL="0.5s",
            KMS_HSM_RETRY_INTERVAL="0.5s",
            KMS_SHUTDOWN_GRACE="5s",
            # Clients move on every 15 s, so that connections spread again after a worker's
            # restart within a short run (the default with workers is 60 s).
            KMS_MAX_CONNECTION_AGE="15s",
        )
        return env

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kms", "serve", "--dev", "--listen", "127.0.0.1:0", "--workers",
                 str(self.workers), "--port-file", str(self.port_file), "--data-dir", str(self.data_dir),
                 "--log-format", "text"],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soak: the server did not start; see {self.log}")
            time.sleep(0.1)
        self.target = f"127.0.0.1:{int(self.port_file.read_text())}"
        self.wait_serving(180)

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait_serving(self, timeout: float) -> bool:
        """Until every worker reports SERVING (False if not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.status().get("workers", [])
            if len(workers) == self.workers and all(worker["state"] == "serving" for worker in workers):
                return True
            time.sleep(0.2)
        return False

    def worker_pids(self) -> list[tuple[int, int]]:
        return [(w["index"], w["pid"]) for w in self.status().get("workers", []) if w.get("pid")]

    def stop(self) -> int | None:
        """SIGTERM, and the supervisor's exit status (None if it had to be killed)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


# -- load ----------------------------------------------------------------------------------


@dataclass
class Written:
    ciphertext: bytes
    context: dict[str, str]
    digest: bytes


@dataclass
class Tally:
    """Everything the clients saw; one lock, taken once per call."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, str] = field(default_factory=dict)
    written: list[Written] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    # Per second of the run: calls answered OK, and the others.
    timeline: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def add(self, operation: str, seconds: float, code: str, detail: str = "") -> None:
        with self.lock:
            self.timeline[int(time.monotonic() - self.started)][0 if code == "OK" else 1] += 1
            self.codes[operation][code] += 1
            if code == "OK":
                self.latencies[operation].append(seconds)
            elif detail:
                self.examples.setdefault(f"{operation}:{code}", detail[:300])


class Client(threading.Thread):
    def __init__(self, number: int, target: str, tally: Tally, stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"soak-client-{number}", daemon=True)
        from kms_client import KmsClient, RetryPolicy

        # A subchannel pool of its own: a TCP connection of its own, so the kernel may hand it
        # to either worker.
        self.client = KmsClient(
            target,
            retry=RetryPolicy(max_attempts=1),
            timeout=CALL_TIMEOUT,
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        self.tally, self.stop, self.random = tally, stop, random.Random(seed)
        self.number = number

    def run(self) -> None:
        operations, weights = zip(*MIX, strict=True)
        backoff = 0.0
        while not self.stop.is_set():
            operation = self.random.choices(operations, weights)[0]
            code = self.call(operation)
            # As the SDK's retry policy would: wait before calling again into an outage, rather
            # than counting thousands of immediate refusals.
            backoff = 0.0 if code not in ("UNAVAILABLE", "RESOURCE_EXHAUSTED") else min(1.0, max(0.05, backoff * 2))
            if backoff:
                self.stop.wait(self.random.uniform(0, backoff))
        self.client.close()

    def call(self, operation: str) -> str:
        from kms_client import KmsError

        started = time.monotonic()
        try:
            getattr(self, operation)()
        except KmsError as error:
            detail = f"{time.monotonic() - self.tally.started:.1f}s {error.reason}: {error.message}"
            self.tally.add(operation, time.monotonic() - started, error.code.name, detail)
            return error.code.name
        except Mismatch as error:
            self.tally.add(operation, time.monotonic() - started, "PLAINTEXT_MISMATCH", str(error))
        except Exception as error:  # noqa: BLE001 - anything else is a finding of the soak, reported
            self.tally.add(operation, time.monotonic() - started, f"CLIENT_{type(error).__name__}", repr(error))
        else:
            self.tally.add(operation, time.monotonic() - started, "OK")
            return "OK"
        return "OTHER"

    def _pick(self) -> Written | None:
        with self.tally.lock:
            return self.random.choice(self.tally.written) if self.tally.written else None

    def encrypt(self) -> None:
        key_id = self.random.choice(KEYS)[0]
        plaintext = self.random.randbytes(self.random.randint(64, 2048))
        context = {"tenant": f"t{self.random.randint(0, 9)}", "client": str(self.number)}
        ciphertext = self.client.encrypt(plaintext, key_id=key_id, context=context)
        with self.tally.lock:
            self.tally.written.append(Written(ciphertext, context, hashlib.sha256(plaintext).digest()))

    def decrypt(self) -> None:
        item = self._pick()
        if item is None:
            return self.encrypt()
        if hashlib.sha256(self.client.decrypt(item.ciphertext, context=item.context)).digest() != item.digest:
            raise Mismatch("a ciphertext decrypted to another plaintext")
        return None

    def rewrap(self) -> None:
        item = self._pick()
        if item is None:
            return self.encrypt()
        rewrapped = self.client.rewrap(item.ciphertext, context=item.context)
        with self.tally.lock:
            self.tally.written.append(Written(rewrapped, item.context, item.digest))
        return None

    def rotate(self) -> None:
        self.client.rotate_key(self.random.choice(KEYS)[0])

    def grant(self) -> None:
        principal = f"spiffe://soak.test/app-{self.random.randint(0, 99)}"
        grant = self.client.grant_permissions(principal, "soak-*", ["encrypt", "decrypt"])
        with self.tally.lock:
            self.tally.grants.append(grant.grant_id)

    def revoke(self) -> None:
        with self.tally.lock:
            grant_id = self.tally.grants.pop() if self.tally.grants else None
        if grant_id is None:
            return self.grant()
        # Not tried again after a failure: the revocation may have committed before the answer
        # was lost, and a second one would then rightly say the grant is not found.
        self.client.revoke_grant(grant_id)
        return None


class Mismatch(Exception):
    pass


# -- faults --------------------------------------------------------------------------------


class Faults(threading.Thread):
    def __init__(
        self, server: Server, postgres: PostgresCluster, duration: float, stop: threading.Event, seed: int
    ) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.server, self.postgres, self.duration, self.stop = server, postgres, duration, stop
        self.random = random.Random(seed)
        self.started = time.monotonic()
        self.log: list[dict[str, object]] = []

    def schedule(self) -> list[tuple[float, str]]:
        """Each fault once, in a random order, in the first two thirds; then one every 10-30 s
        until 10 s before the end."""
        first = list(FAULTS)
        self.random.shuffle(first)
        span = self.duration * 2 / 3
        plan = [(span * (i + 0.5 + self.random.uniform(-0.3, 0.3)) / len(first), f) for i, f in enumerate(first)]
        at = span
        while (at := at + self.random.uniform(10, 30)) < self.duration - 10:
            plan.append((at, self.random.choice(FAULTS)))
        return plan

    def run(self) -> None:
        for at, fault in self.schedule():
            if self.stop.wait(max(0.0, self.started + at - time.monotonic())):
                return
            began = time.monotonic()
            try:
                detail = getattr(self, fault)()
            except Exception as error:  # noqa: BLE001 - a fault that could not be injected is reported
                detail = f"could not inject: {error!r}"
            self.log.append(
                {
                    "at_s": round(began - self.started, 1),
                    "fault": fault,
                    "took_s": round(time.monotonic() - began, 2),
                    "detail": detail,
                }
            )
            print(f"  {began - self.started:6.1f}s  {fault}: {detail}", file=sys.stderr, flush=True)

    def kill_worker(self) -> str:
        workers = self.server.worker_pids()
        if not workers:
            return "no worker running"
        index, pid = self.random.choice(workers)
        os.kill(pid, signal.SIGKILL)
        return f"worker {index} (pid {pid})"

    def restart_postgres(self) -> str:
        self.postgres.restart()
        return "pg_ctl restart -m fast"

    def hsm_outage(self) -> str:
        seconds = self.random.uniform(2, 5)
        self.server.outage_file.touch()
        try:
            self.stop.wait(seconds)
        finally:
            self.server.outage_file.unlink(missing_ok=True)
        return f"{seconds:.1f}s"


# -- checks and report ---------------------------------------------------------------------


def check_ciphertexts(target: str, written: list[Written], threads: int = 4) -> dict[str, object]:
    """Every ciphertext written still decrypts to its plaintext; each is tried for up to 60 s
    while the answer is UNAVAILABLE (a fault's after-effects)."""
    from kms_client import KmsClient, RetryPolicy

    problems: Counter[str] = Counter()
    lock = threading.Lock()
    items = list(enumerate(written))

    def verify(part: list[tuple[int, Written]]) -> None:
        retry = RetryPolicy(max_attempts=30, initial_backoff=0.2, max_backoff=2.0)
        with KmsClient(target, retry=retry, timeout=60, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
            for _, item in part:
                try:
                    ok = hashlib.sha256(client.decrypt(item.ciphertext, context=item.context)).digest() == item.digest
                    problem = None if ok else "PLAINTEXT_MISMATCH"
                except Exception as error:  # noqa: BLE001 - reported by kind
                    problem = f"{type(error).__name__}: {getattr(error, 'message', error)}"[:200]
                if problem:
                    with lock:
                        problems[problem] += 1

    parts = [items[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=verify, args=(part,)) for part in parts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"passed": not problems, "ciphertexts": len(written), "failures": dict(problems)}


def audit_verify(server: Server) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "kms", "audit", "verify", "--target", server.target, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=server.env(),
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = {"output": (result.stdout + result.stderr)[-500:]}
    return {"passed": result.returncode == 0, "exit_status": result.returncode, **report}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return round(ordered[int(rank) - 1] * 1000, 2)


def summarize(tally: Tally, seconds: float) -> dict[str, object]:
    operations = {}
    by_code: Counter[str] = Counter()
    for operation, codes in sorted(tally.codes.items()):
        by_code.update(codes)
        latencies = tally.latencies.get(operation, [])
        operations[operation] = {
            "calls": sum(codes.values()),
            "ok": codes.get("OK", 0),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "codes": dict(codes),
        }
    calls = sum(by_code.values())
    timeline = [[second, *tally.timeline.get(second, [0, 0])] for second in range(int(seconds) + 1)]
    longest = run = 0
    for _, ok, _failed in timeline:
        run = 0 if ok else run + 1
        longest = max(longest, run)
    return {
        "seconds": round(seconds, 1),
        "calls": calls,
        "calls_per_second": round(calls / seconds, 1) if seconds else None,
        "availability": round(by_code.get("OK", 0) / calls, 5) if calls else None,
        "errors_by_code": {code: n for code, n in by_code.most_common() if code != "OK"},
        "operations": operations,
        "longest_without_success_s": longest,
        "error_examples": tally.examples,
        "timeline": timeline,
    }


def print_report(report: dict) -> None:
    load = report["load"]
    print(f"\nsoak: {report['workers']} workers on PostgreSQL, {load['seconds']}s, {report['clients']} clients")
    print(f"calls: {load['calls']} ({load['calls_per_second']}/s), availability {load['availability']:.2%}")
    errors = ", ".join(f"{code} {n}" for code, n in load["errors_by_code"].items()) or "none"
    print(f"errors by code: {errors}")
    print(f"longest stretch without a successful call: {load['longest_without_success_s']}s")
    print(f"\n{'operation':<10} {'calls':>7} {'ok':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in load["operations"].items():
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}"
        p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
        print(f"{name:<10} {row['calls']:>7} {row['ok']:>7} {p50:>8} {p99:>8}")
    print("\nfaults:")
    for fault in report["faults"]:
        print(f"  {fault['at_s']:6.1f}s  {fault['fault']:<17} {fault['detail']} (took {fault['took_s']}s)")
    print("\nchecks:")
    for name, check in report["checks"].items():
        extra = {k: v for k, v in check.items() if k != "passed"}
        print(f"  {'PASS' if check['passed'] else 'FAIL'}  {name}  {json.dumps(extra)[:300]}")
    print(f"\n{'PASSED' if report['passed'] else 'FAILED'}")


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load and faults (default 300)")
    parser.add_argument("--workers", type=int, default=2, help="kms serve --workers (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="client threads, a connection each (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="for the load and the faults (default: random)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--postgres-bin", type=Path, default=None, help="initdb and pg_ctl (default /usr/lib/postgresql/*/bin)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, database); a failed run keeps it"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    root = Path(tempfile.mkdtemp(prefix="kms-soak-"))
    postgres = PostgresCluster(root, args.postgres_bin)
    server = Server(root / "data", postgres.url, args.workers)
    print(f"soak: seed {seed}, directory {root}", file=sys.stderr)
    report: dict = {"passed": False}
    try:
        postgres.start()
        server.start()
        report = soak(server, postgres, args, seed)
    finally:
        server.stop()
        postgres.stop()
        # A failed run keeps its logs and database: the server's log says what happened.
        if args.keep or not report["passed"]:
            print(f"soak: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


def soak(server: Server, postgres: PostgresCluster, args: argparse.Namespace, seed: int) -> dict:
    from kms_client import KmsClient

    with KmsClient(server.target, timeout=60) as admin:
        for key_id, storage in KEYS:
            admin.create_key(key_id, storage=storage)
    stop = threading.Event()
    tally = Tally()
    clients = [Client(n, server.target, tally, stop, seed + n) for n in range(args.clients)]
    faults = Faults(server, postgres, args.duration, stop, seed)
    print(f"soak: {server.target}, {args.duration:g}s of load and faults", file=sys.stderr)
    started = tally.started = time.monotonic()
    for thread in (*clients, faults):
        thread.start()
    stop.wait(args.duration)
    stop.set()
    for thread in (*clients, faults):
        thread.join(timeout=120)
    seconds = time.monotonic() - started
    server.outage_file.unlink(missing_ok=True)
    recovered = server.wait_serving(120)
    injected = {f["fault"] for f in faults.log if "could not" not in str(f["detail"])}
    codes: Counter[str] = Counter()
    for per_operation in tally.codes.values():
        codes.update(per_operation)
    checks = {
        "recovered": {"passed": recovered, "workers": server.status().get("workers")},
        "ciphertexts_decrypt": check_ciphertexts(server.target, tally.written),
        "audit_verify": audit_verify(server),
        "no_unknown_or_internal": {
            "passed": not any(code in codes for code in ("UNKNOWN", "INTERNAL")),
            "unknown": codes.get("UNKNOWN", 0),
            "internal": codes.get("INTERNAL", 0),
        },
        "no_wrong_plaintext": {
            "passed": not codes.get("PLAINTEXT_MISMATCH"),
            "count": codes.get("PLAINTEXT_MISMATCH", 0),
        },
        "faults_injected": {"passed": set(FAULTS) <= injected, "counts": dict(Counter(f["fault"] for f in faults.log))},
    }
    status = server.stop()
    checks["drained"] = {"passed": status == 0, "exit_status": status}
    return {
        "seed": seed,
        "workers": args.workers,
        "clients": args.clients,
        "load": summarize(tally, seconds),
        "faults": faults.log,
        "checks": checks,
        "passed": all(check["passed"] for check in checks.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
