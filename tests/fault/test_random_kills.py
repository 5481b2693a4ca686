"""kill -9 at arbitrary instants while clients rotate keys and issue data keys: after every
restart, each wrapped key a client received still opens, and HSM and database agree."""

from __future__ import annotations

import random
import threading
import time

import kms_client
from tests.fault.conftest import hsm_check

NO_RETRY = kms_client.RetryPolicy(max_attempts=1)


def _load(target: str, stop: threading.Event, received: list[tuple[bytes, bytes, dict]], seed: int) -> None:
    rng = random.Random(seed)
    with kms_client.KmsClient(target, retry=NO_RETRY, timeout=5) as client:
        while not stop.is_set():
            key_id = f"k{rng.randrange(3)}"
            context = {"n": str(rng.randrange(1000))}
            try:
                if rng.random() < 0.15:
                    client.rotate_key(key_id)
                else:
                    issued = client.generate_data_key(key_id, context)
                    received.append((issued.wrapped_key, issued.plaintext, context))
            except kms_client.KmsError:
                if stop.is_set():
                    return


def test_random_kills_lose_nothing(server_process, server_env):
    server = server_process.start()
    with kms_client.KmsClient(server.target) as client:
        for n in range(3):
            client.create_key(f"k{n}")
    received: list[tuple[bytes, bytes, dict]] = []
    rng = random.Random(20261124)
    for round_number in range(4):
        stop = threading.Event()
        workers = [
            threading.Thread(target=_load, args=(server.target, stop, received, round_number * 10 + w))
            for w in range(4)
        ]
        for worker in workers:
            worker.start()
        time.sleep(rng.uniform(0.3, 1.2))
        server.kill()
        stop.set()
        for worker in workers:
            worker.join()
        server.start()
        with kms_client.KmsClient(server.target) as client:
            for wrapped, plaintext, context in received:
                assert client.decrypt_data_key(wrapped, context).plaintext == plaintext
    assert len(received) > 100
    server.kill()
    report = hsm_check(server_env, server.data_dir)
    assert report["exit_code"] == 0, report
