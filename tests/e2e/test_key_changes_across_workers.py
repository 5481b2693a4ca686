"""A key created, rotated, disabled or destroyed through one worker of ``kms serve --workers 2``,
as the other worker sees it, within the bounds docs/operations.md states ("Workers"):

- created or rotated: at once. A worker that does not know a key, or a version of one, reads the
  ledger in a read that begins after the call did before it says so; a call made after the
  change was answered, through either worker, finds it. Raced here round after round, in both
  directions, for both ways a version's key is kept (a token object that one worker's SoftHSM
  made is found by the other's, through the token's file store);
- disabled, scheduled for destruction, destroyed, and a new primary for new data keys: once the
  other worker has read the ledger entry of the change, which it does every
  KMS_POLICY_POLL_INTERVAL. The test waits for that worker's ledger position
  (kms_metadata_ledger_seq), not for time;
- many writers at once through both workers, on one SQLite file: nobody is answered
  UNAVAILABLE, and every change happens exactly once.

Each worker is reached on its own port (--worker-listen) to choose which one a call goes to.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from kms_client import KeyAlreadyExists, KmsClient, KmsError, RetryPolicy
from tests.support import postgres
from tests.support.workers import WorkersProcess, ledger_head, workers_env

pytestmark = pytest.mark.slow

STORAGES = ("WRAPPED", "HSM_OBJECT")
ROUNDS = 12  # per storage and direction
CONTEXT = {"tenant": "a"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the embedded default: <data dir>/kms.db
        return
    if not postgres.available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432")
    with postgres.temporary_database() as url:
        yield url


@pytest.fixture
def server(hsm_env, tmp_path, database_url):
    extra = {"KMS_DATABASE_URL": database_url} if database_url else {}
    started = WorkersProcess(tmp_path / "data", workers_env(hsm_env, tmp_path, **extra)).start()
    yield started
    if started.process is not None and started.process.poll() is None:
        started.terminate()


def client(target: str) -> KmsClient:
    return KmsClient(target, retry=RetryPolicy(max_attempts=1), timeout=30)


def test_created_and_rotated_keys_are_usable_through_the_other_worker_at_once(server):
    with client(server.worker_target(0)) as zero, client(server.worker_target(1)) as one:
        workers = (zero, one)
        for storage in STORAGES:
            for round_ in range(2 * ROUNDS):
                changing, other = workers[round_ % 2], workers[1 - round_ % 2]
                key_id = f"race-{storage.lower()}-{round_}"
                changing.create_key(key_id, storage=storage)
                first = other.generate_data_key(key_id, CONTEXT)
                assert first.key_version == 1
                changing.rotate_key(key_id)
                second = changing.generate_data_key(key_id, CONTEXT)
                assert second.key_version == 2
                assert other.decrypt_data_key(second.wrapped_key, CONTEXT).plaintext == second.plaintext
                assert changing.decrypt_data_key(first.wrapped_key, CONTEXT).plaintext == first.plaintext


@pytest.mark.parametrize("storage", STORAGES)
def test_other_changes_reach_the_other_worker_once_it_has_read_the_ledger(server, storage):
    other_pid = server.worker(1)["pid"]

    def other_has_read_the_ledger() -> None:
        server.wait_ledger(other_pid, ledger_head(server.data_dir, server.env.get("KMS_DATABASE_URL")))

    with client(server.worker_target(0)) as one, client(server.worker_target(1)) as other:
        one.create_key("orders", storage=storage)
        first = other.generate_data_key("orders", CONTEXT)
        one.rotate_key("orders")
        other_has_read_the_ledger()
        second = other.generate_data_key("orders", CONTEXT)
        assert second.key_version == 2  # the new primary, for new data keys

        one.disable_key_version("orders", 1)
        other_has_read_the_ledger()
        assert _refusal(lambda: other.decrypt_data_key(first.wrapped_key, CONTEXT)) == "KeyVersionDisabled"

        one.schedule_key_version_destruction("orders", 1, pending_window=timedelta(seconds=1))
        other_has_read_the_ledger()
        assert _refusal(lambda: other.decrypt_data_key(first.wrapped_key, CONTEXT)) == "KeyVersionDestroyScheduled"

        deadline = time.monotonic() + 60  # the scheduler of either worker destroys it
        while one.get_key("orders").versions[0].state != "DESTROYED":
            assert time.monotonic() < deadline, "version 1 was never destroyed"
            time.sleep(0.1)
        other_has_read_the_ledger()
        assert other.get_key("orders").versions[0].state == "DESTROYED"
        assert _refusal(lambda: other.decrypt_data_key(first.wrapped_key, CONTEXT)) == "KeyVersionDestroyed"
        assert other.decrypt_data_key(second.wrapped_key, CONTEXT).plaintext == second.plaintext


def _refusal(call: Callable[[], object]) -> str:
    with pytest.raises(KmsError) as refused:
        call()
    return refused.value.reason


CLIENTS = 8  # half through each worker
OWN_KEYS = 4  # distinct keys each client creates
SHARED = 3  # keys every client creates, then rotates
ROTATIONS = 3  # rotations of each shared key per client


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_writers_in_both_workers_on_one_sqlite_file_are_exactly_once_and_never_unavailable(server):
    targets = [server.worker_target(n % 2) for n in range(CLIENTS)]
    outcomes: Counter[str] = Counter()
    rotated_to: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def attempt(call: Callable[..., object], *args: object, **kwargs: object) -> object:
        try:
            result = call(*args, **kwargs)
        except KmsError as error:
            with lock:
                outcomes[type(error).__name__] += 1
            return None
        with lock:
            outcomes["ok"] += 1
        return result

    def create_everything(caller: KmsClient, number: int) -> None:
        for n in range(max(OWN_KEYS, SHARED)):
            if n < OWN_KEYS:
                attempt(caller.create_key, f"own-{number}-{n}", storage=STORAGES[n % 2])
            if n < SHARED:
                attempt(caller.create_key, f"shared-{n}", storage=STORAGES[n % 2])

    _together(create_everything, targets)
    assert outcomes == {"ok": CLIENTS * OWN_KEYS + SHARED, KeyAlreadyExists.__name__: SHARED * (CLIENTS - 1)}

    outcomes.clear()

    def rotate(caller: KmsClient, number: int) -> None:
        for _ in range(ROTATIONS):
            for n in range(SHARED):
                key = attempt(caller.rotate_key, f"shared-{n}")
                if key is not None:
                    with lock:
                        rotated_to[f"shared-{n}"].append(key.primary_version)  # type: ignore[attr-defined]

    _together(rotate, targets)
    assert outcomes == {"ok": CLIENTS * ROTATIONS * SHARED}
    with client(server.target) as reader:
        for n in range(SHARED):
            numbers = [version.version for version in reader.get_key(f"shared-{n}").versions]
            assert numbers == list(range(1, CLIENTS * ROTATIONS + 2))  # no gaps, none twice
            assert sorted(rotated_to[f"shared-{n}"]) == numbers[1:]  # each rotation made its own


def _together(work: Callable[[KmsClient, int], None], targets: list[str]) -> None:
    """Runs ``work(client, n)`` in one thread per target, released at the same instant."""
    start = threading.Barrier(len(targets))

    def run(number: int) -> None:
        with KmsClient(targets[number], retry=RetryPolicy(max_attempts=1), timeout=60) as caller:
            start.wait()
            work(caller, number)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
