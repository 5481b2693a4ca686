"""kms serve --workers 2: one port, two processes, a supervisor that keeps them (kms.workers).

Each worker is reached on its own port as well (--worker-listen), so that a test can choose the
worker a call goes to. How key changes made through one worker reach the other:
test_key_changes_across_workers.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest

from kms_client import KmsClient, KmsError, RetryPolicy
from tests.support.process import kms_command
from tests.support.workers import (
    SERVING,
    WorkersProcess,
    alive,
    health,
    listening_pids,
    maps,
    workers_env,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def env(hsm_env, tmp_path):
    return workers_env(hsm_env, tmp_path)


@pytest.fixture
def server(tmp_path, env):
    started = WorkersProcess(tmp_path / "data", env).start()
    yield started
    if started.process is not None and started.process.poll() is None:
        started.terminate()


def client(target: str) -> KmsClient:
    return KmsClient(target, retry=RetryPolicy(max_attempts=1), timeout=30)


def test_two_workers_listen_on_the_one_port_and_only_the_workers_load_the_hsm(server):
    status = server.status()
    workers = status["workers"]
    pids = {worker["pid"] for worker in workers}
    assert len(pids) == 2 and status["supervisor_pid"] not in pids
    assert listening_pids(server.port) == pids  # the supervisor holds the port without listening
    assert health(server.target) == SERVING
    for index in range(2):
        assert health(server.worker_target(index)) == SERVING
    with client(server.target) as shared:
        shared.create_key("orders")
        data_key = shared.generate_data_key("orders", {"tenant": "a"})
    for index in range(2):
        with client(server.worker_target(index)) as worker:
            assert worker.decrypt_data_key(data_key.wrapped_key, {"tenant": "a"}).plaintext == data_key.plaintext
    # PKCS#11 is initialized in the workers, after they started, and never in the supervisor.
    assert "libsofthsm2" not in maps(status["supervisor_pid"])
    assert all("libsofthsm2" in maps(pid) for pid in pids)
    # Each worker journals audit records in a directory of its own.
    assert (server.data_dir / "audit-journal").is_dir() and (server.data_dir / "audit-journal-1").is_dir()


def test_a_worker_killed_with_sigkill_is_started_again(server):
    with client(server.worker_target(1)) as worker:
        worker.create_key("orders")
        for _ in range(20):
            worker.generate_data_key("orders", {})
    killed = server.worker(1)["pid"]
    os.kill(killed, signal.SIGKILL)
    workers = server.wait_workers_serving(not_pids=(killed,))
    assert workers[1]["restarts"] == 1 and workers[1]["last_exit"] == "signal 9"
    assert workers[0]["restarts"] == 0
    assert not alive(killed)
    with client(server.worker_target(1)) as worker:
        assert worker.generate_data_key("orders", {}).key_version == 1
        result = worker.verify_audit_log()
        assert result.intact
        issued = [e for e in worker.audit_events(key_id="orders") if e.rpc == "GenerateDataKey"]
    assert len(issued) == 21
    assert "kms_worker_restarts_total 1.0" in server.metrics()


def test_sigterm_drains_every_worker_and_the_server_exits_0(server):
    """SIGTERM reaches the supervisor, which forwards it to each worker. Each worker has a
    stream in flight when the signal arrives, and the stream's remaining messages are sent only
    once that worker refuses new calls: every item is answered all the same. Callers calling
    all along, through the shared port and each worker's own, are answered OK until they are
    refused."""
    pids = [worker["pid"] for worker in server.status()["workers"]]
    with client(server.target) as shared:
        shared.create_key("orders")
        issued = shared.generate_data_keys([("orders", {"n": str(n)}) for n in range(50)])
        shared.rotate_key("orders")
    refusing = [threading.Event() for _ in range(2)]
    streams = []
    with contextlib.ExitStack() as stack:
        for index in range(2):

            def items(index: int = index):
                for n, data_key in enumerate(issued):
                    if n == 1:
                        refusing[index].wait(30)
                    yield data_key.wrapped_key, {"n": str(n)}

            streaming = stack.enter_context(client(server.worker_target(index)))
            results = streaming.stream_rewrap(items(), items_per_message=1)
            streams.append((next(results), results))  # the worker is in the call
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def call_until_refused(target: str) -> None:
            with client(target) as caller:
                while True:
                    try:
                        caller.generate_data_key("orders", {})
                        outcome = "OK"
                    except KmsError as error:
                        outcome = error.code.name
                    with lock:
                        outcomes[outcome] += 1
                    if outcome != "OK":
                        return

        targets = [server.target, server.worker_target(0), server.worker_target(1)]
        callers = [threading.Thread(target=call_until_refused, args=(targets[i % 3],)) for i in range(6)]
        for caller in callers:
            caller.start()
        while sum(outcomes.values()) < 30:
            time.sleep(0.01)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        for index in range(2):
            _until_new_calls_are_refused(server.worker_target(index))
            refusing[index].set()
        rest = [list(results) for _, results in streams]
        assert server.process.wait(timeout=120) == 0
        for caller in callers:
            caller.join()
    for (first, _), later in zip(streams, rest, strict=True):
        assert [r.key_version for r in [first, *later]] == [2] * len(issued)  # every item, none cut off
    # A call that reaches a worker as it begins to shut down, before gRPC has handed it to the
    # service, is answered CANCELLED (as with one process, tests/e2e/test_serve.py); no call
    # that the service began was cut off or failed otherwise.
    assert outcomes["OK"] >= 30 and set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, outcomes
    assert not any(alive(pid) for pid in pids)
    log = server.log.read_text()
    assert "kms stopped worker=0" in log and "kms stopped worker=1" in log


def _until_new_calls_are_refused(target: str, timeout: float = 30) -> None:
    """Until a call on a new connection to ``target`` is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with client(target) as late:
            try:
                late.get_key("orders")
            except KmsError:
                return
        time.sleep(0.01)
    pytest.fail(f"new calls were still served {timeout}s after SIGTERM")


def test_health_says_serving_only_while_the_workers_serve(server, tmp_path):
    assert server.healthz() == 200 and server.status()["serving"]
    outage = tmp_path / "hsm-outage"
    outage.touch()  # the HSM stops answering (kms.hsm.outage)
    try:
        server.wait_healthz(503)
        for index in range(2):
            assert health(server.worker_target(index)) != SERVING
        assert not server.status()["serving"]
        with client(server.target) as shared, pytest.raises(KmsError) as refused:
            shared.create_key("orders")
        assert refused.value.code.name == "UNAVAILABLE"
    finally:
        outage.unlink()
    server.wait_healthz(200)
    server.wait_workers_serving()
    assert health(server.target) == SERVING
    with client(server.target) as shared:
        shared.create_key("orders")


def test_the_metrics_of_every_worker_appear_on_the_one_metrics_port(server):
    with client(server.target) as shared:
        shared.create_key("orders")
    calls = {0: 7, 1: 5}
    for index, count in calls.items():
        with client(server.worker_target(index)) as worker:
            for _ in range(count):
                worker.generate_data_key("orders", {})
    text = server.metrics()
    assert 'kms_rpcs_total{code="OK",method="GenerateDataKey"} 12.0' in text
    for worker in server.status()["workers"]:
        assert f'kms_metadata_ledger_seq{{pid="{worker["pid"]}"}}' in text
    assert "kms_workers 2.0" in text and "kms_workers_serving 2.0" in text


def test_due_rotations_happen_once_across_the_workers(server):
    period = timedelta(seconds=2)
    key_ids = [f"due-{n}" for n in range(12)]
    with client(server.worker_target(0)) as one:
        for key_id in key_ids:
            one.create_key(key_id, rotation_period=period)
        deadline = time.monotonic() + 120
        while min(len(one.get_key(key_id).versions) for key_id in key_ids) < 3:
            assert time.monotonic() < deadline, "scheduled rotations did not happen"
            time.sleep(0.2)
        keys = [one.get_key(key_id) for key_id in key_ids]
        scheduled = Counter(
            event.key_id for event in one.audit_events(identity="kms:scheduler") if event.rpc == "ScheduledRotation"
        )
    for key in keys:
        created = [version.create_time for version in key.versions]
        # Each rotation counts from the previous version's creation: two workers rotating the
        # same due key would leave two versions closer together than the period.
        assert all(later - earlier >= period for earlier, later in itertools.pairwise(created)), key
        assert scheduled[key.key_id] >= len(key.versions) - 1


def test_killing_the_supervisor_stops_its_workers(server):
    pids = [worker["pid"] for worker in server.status()["workers"]]
    server.kill()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)


def test_a_worker_that_refuses_its_configuration_stops_the_server_with_status_2(tmp_path, env):
    broken = {name: value for name, value in env.items() if name != "KMS_PKCS11_TOKEN_LABEL"}
    result = subprocess.run(
        kms_command("serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), "--workers", "2"),
        env=broken,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "also set KMS_PKCS11_TOKEN_LABEL" in result.stderr


def test_workers_without_tls_or_development_mode_are_refused(tmp_path, env):
    result = subprocess.run(
        kms_command("serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), "--workers", "2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no TLS configured" in result.stderr
