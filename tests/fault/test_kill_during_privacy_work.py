"""kill -9 during an erasure, while subjects are carried onto a new version, and during a
destruction by retention, then a restart, on SQLite and PostgreSQL: nothing is lost (every live
subject's data still opens, every committed erasure still holds) and nothing comes back (an
erased subject stays erased, a destroyed version stays destroyed)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

import kms_client
from tests.fault.conftest import hsm_check

NO_RETRY = kms_client.RetryPolicy(max_attempts=1)
FAST = {
    "KMS_SCHEDULER_INTERVAL": "0.2s",
    "KMS_MIN_ROTATION_PERIOD": "1s",
    "KMS_MIN_DESTROY_PENDING_WINDOW": "1s",
    "KMS_RETENTION_PENDING_WINDOW": "1s",
}
SUBJECTS = 30
FINALITY = timedelta(seconds=20)


@pytest.fixture
def fast_env(server_env):
    return {**server_env, **FAST}


def _context(n: int) -> dict[str, str]:
    return {"user_id": f"user-{n}", "table": "orders"}


def _wait(condition, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("point", ["after_delete", "before_commit", "after_commit"])
def test_kill_during_an_erasure(server_process, fast_env, point):
    server = server_process
    server.env = fast_env
    server.start(crash_at=f"erase_subject.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        client.create_key("people", subject_field="user_id")
        issued = [client.generate_data_key("people", _context(n)) for n in range(3)]
        with pytest.raises(kms_client.KmsError):
            client.erase_subject("people", "user-0")  # the server dies on the way
    assert server.wait_exit(timeout=60) == -9

    server.start()
    with kms_client.KmsClient(server.target) as client:
        if point == "after_commit":  # committed before the kill: it holds, with no retry
            with pytest.raises(kms_client.SubjectErased):
                client.decrypt_data_key(issued[0].wrapped_key, _context(0))
        else:  # rolled back: the subject is as it was, and the caller's retry erases it
            assert client.decrypt_data_key(issued[0].wrapped_key, _context(0)).plaintext == issued[0].plaintext
        receipt = client.erase_subject("people", "user-0")
        assert receipt.subject_known and receipt.final_after_version == 1
        with pytest.raises(kms_client.SubjectErased):
            client.decrypt_data_key(issued[0].wrapped_key, _context(0))
        for n in (1, 2):
            assert client.decrypt_data_key(issued[n].wrapped_key, _context(n)).plaintext == issued[n].plaintext
        assert [e.subject_digest for e in client.iter_erasures("people")] == [receipt.subject_digest]
    server.kill()
    report = hsm_check(server.env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [], report


@pytest.mark.parametrize("point", ["after_hsm_rewrap", "before_commit", "after_commit"])
def test_kill_while_subjects_are_carried_onto_a_new_version(server_process, fast_env, point):
    server = server_process
    server.env = fast_env
    server.start(crash_at=f"carry_subjects.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        # A short finality, so that the cadence itself destroys version 1 while the test waits
        # (it also rotates every F/2, so later versions may appear: rows only move forward).
        client.create_key("people", subject_field="user_id", erasure_finality=FINALITY)
        issued = [client.generate_data_key("people", _context(n)) for n in range(SUBJECTS)]
        client.erase_subject("people", "user-7")
        client.rotate_key("people")  # the scheduler's next pass carries the subjects
    assert server.wait_exit(timeout=60) == -9

    server.start()
    with kms_client.KmsClient(server.target) as client:

        def carried() -> bool:
            opened = client.decrypt_data_keys([(d.wrapped_key, _context(n)) for n, d in enumerate(issued) if n != 7])
            return all(getattr(o, "key_version", 0) >= 2 for o in opened)

        _wait(carried, "every live subject carried off version 1")
        for n, data_key in enumerate(issued):
            if n == 7:
                with pytest.raises(kms_client.SubjectErased):
                    client.decrypt_data_key(data_key.wrapped_key, _context(n))
            else:
                assert client.decrypt_data_key(data_key.wrapped_key, _context(n)).plaintext == data_key.plaintext
        # Version 1 wraps nothing now: the cadence destroys it F/2 after it stopped being
        # primary, and everything live still opens after it is gone.
        _wait(lambda: client.get_key("people").versions[0].state == "DESTROYED", "version 1 destroyed by the cadence")
        assert client.decrypt_data_key(issued[0].wrapped_key, _context(0)).plaintext == issued[0].plaintext
    server.kill()
    report = hsm_check(server.env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [], report


@pytest.mark.parametrize(
    "point",
    ["policy_destruction.before_commit", "policy_destruction.after_commit", "destroy_version.after_hsm_destroy"],
)
def test_kill_during_a_destruction_by_retention(server_process, fast_env, point):
    server = server_process
    server.env = fast_env
    server.start(crash_at=point)
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        client.create_key("logs", retention_period=timedelta(seconds=2))
        old = client.generate_data_key("logs", {"day": "1"})
        client.rotate_key("logs")
        new = client.generate_data_key("logs", {"day": "2"})
    assert server.wait_exit(timeout=60) == -9  # the scheduler reached the point

    server.start()
    with kms_client.KmsClient(server.target) as client:
        _wait(lambda: client.get_key("logs").versions[0].state == "DESTROYED", "version 1 destroyed by retention")
        key = client.get_key("logs")
        assert [v.state for v in key.versions] == ["DESTROYED", "ENABLED"]  # the primary is never touched
        with pytest.raises(kms_client.KeyVersionDestroyed):
            client.decrypt_data_key(old.wrapped_key, {"day": "1"})
        assert client.decrypt_data_key(new.wrapped_key, {"day": "2"}).plaintext == new.plaintext
    server.kill()
    report = hsm_check(server.env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [], report
