"""Ten thousand keys through a real ``kms serve`` on SQLite and on PostgreSQL: created by several
clients at once, each used, the server restarted, each used again.

Every call must succeed. The clients do not retry, so an UNAVAILABLE (a database lock given up
on, an audit chain held back by a busy database) fails the test instead of hiding in a retry.

Each key is created by a CreateKey call of its own: that is what is under test. The keys are
then used through batch calls, 500 keys to a call (every item names another key), so that the
run time goes to the server's work rather than to round trips; each key is still met cold, by
its first use and again after the restart (metadata read, binding checked, key unwrapped).
Creation takes most of the run: about 5 ms a key, one after the other whatever the number of
clients, since each commit extends the one metadata ledger chain and waits for its fsync.

The batches go from two clients, not eight: eight keep the server at 4,000-5,000 items a
second, each an audit record, which on PostgreSQL outruns the audit writer (about 3,000 records
a second measured on a loaded 2-core machine); the chain then lags past KMS_AUDIT_MAX_LAG and
calls fail closed, as designed. That bound is the audit log's, not this test's subject.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from kms_client import KmsClient, RetryPolicy
from tests.support.process import ServerProcess, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

KEYS = 10_000
CLIENTS = 8  # concurrent CreateKey callers, each on a channel of its own
BATCH_CLIENTS = 2  # concurrent batch callers (see above)
BATCH = 500  # items per BatchGenerateDataKey / BatchDecrypt

Item = TypeVar("Item")


def _context(key_id: str) -> dict[str, str]:
    return {"tenant": key_id}


def _in_parallel(
    target: str, items: Sequence[Item], work: Callable[[KmsClient, Item], None], clients: int = CLIENTS
) -> Counter[str]:
    """Runs ``work(client, item)`` for every item, spread over ``clients`` threads with a client
    each; returns the failures by kind (empty when every call succeeded)."""
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    def run(share: Sequence[Item]) -> None:
        with KmsClient(target, retry=RetryPolicy(max_attempts=1), timeout=60) as client:
            for item in share:
                try:
                    work(client, item)
                except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                    with lock:
                        failures[f"{type(error).__name__}: {error}"[:200]] += 1

    threads = [threading.Thread(target=run, args=(items[n::clients],)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def _batches(key_ids: Sequence[str]) -> list[Sequence[str]]:
    return [key_ids[start : start + BATCH] for start in range(0, len(key_ids), BATCH)]


def test_ten_thousand_keys_created_at_once_all_work_before_and_after_a_restart(tmp_path, hsm_env, database_url):
    env = clean_env(
        {**hsm_env, "KMS_PKCS11_LABEL_PREFIX": "s" + uuid.uuid4().hex[:10], "KMS_DATABASE_URL": database_url}
    )
    server = ServerProcess(tmp_path / "data", env).start()
    key_ids = [f"tenant-{n:05d}" for n in range(KEYS)]
    issued: dict[str, tuple[bytes, bytes]] = {}  # key id -> (wrapped key, plaintext)
    try:
        # Creating: 10,000 CreateKey calls from 8 clients at once, each answered with version 1.
        def create(client: KmsClient, key_id: str) -> None:
            assert client.create_key(key_id).primary_version == 1

        assert _in_parallel(server.target, key_ids, create) == Counter()
        with KmsClient(server.target) as client:
            listed = [key.key_id for key in client.iter_keys(page_size=1000)]
        assert listed == key_ids  # each exactly once

        # Using: a data key from every key.
        def generate(client: KmsClient, batch: Sequence[str]) -> None:
            results = client.generate_data_keys([(key_id, _context(key_id)) for key_id in batch])
            for key_id, result in zip(batch, results, strict=True):
                assert not isinstance(result, Exception), result
                assert (result.key_id, result.key_version) == (key_id, 1)
                issued[key_id] = (result.wrapped_key, result.plaintext)

        assert _in_parallel(server.target, _batches(key_ids), generate, BATCH_CLIENTS) == Counter()
        assert len(issued) == KEYS
    finally:
        assert server.terminate() == 0

    # After a restart every wrapped key still opens, and every key still issues data keys.
    server.start()
    try:

        def decrypt(client: KmsClient, batch: Sequence[str]) -> None:
            opened = client.decrypt_data_keys([(issued[key_id][0], _context(key_id)) for key_id in batch])
            for key_id, result in zip(batch, opened, strict=True):
                assert not isinstance(result, Exception), result
                assert (result.key_id, result.plaintext) == (key_id, issued[key_id][1])

        def generate_again(client: KmsClient, batch: Sequence[str]) -> None:
            results = client.generate_data_keys([(key_id, _context(key_id)) for key_id in batch])
            for key_id, result in zip(batch, results, strict=True):
                assert not isinstance(result, Exception), result
                assert (result.key_id, result.key_version) == (key_id, 1)
            # One per batch opens again: the decrypt pass above has opened every key already.
            sample = results[0]
            assert not isinstance(sample, Exception)
            opened = client.decrypt_data_key(sample.wrapped_key, _context(sample.key_id))
            assert (opened.key_id, opened.plaintext) == (sample.key_id, sample.plaintext)

        assert _in_parallel(server.target, _batches(key_ids), decrypt, BATCH_CLIENTS) == Counter()
        assert _in_parallel(server.target, _batches(key_ids), generate_again, BATCH_CLIENTS) == Counter()
    finally:
        assert server.terminate() == 0
