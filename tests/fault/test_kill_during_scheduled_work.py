"""kill -9 during the scheduler's work, then a restart: a scheduled rotation loses nothing, and
a destruction never leaves a usable version without its master key."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

import kms_client
from tests.fault.conftest import hsm_check

NO_RETRY = kms_client.RetryPolicy(max_attempts=1)
FAST = {"KMS_SCHEDULER_INTERVAL": "0.2s", "KMS_MIN_ROTATION_PERIOD": "1s", "KMS_MIN_DESTROY_PENDING_WINDOW": "1s"}


@pytest.fixture
def fast_env(server_env):
    return {**server_env, **FAST}


@pytest.mark.parametrize("point", ["after_hsm_create", "before_commit", "after_commit"])
def test_kill_during_a_scheduled_rotation(server_process, fast_env, point):
    server = server_process
    server.env = fast_env
    server.start(crash_at=f"scheduled_rotation.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        client.create_key("orders", rotation_period=timedelta(seconds=1))
        issued = [client.generate_data_key("orders", {"n": str(n)}) for n in range(5)]
    assert server.wait_exit(timeout=60) == -9  # the scheduler reached the crash point

    server.start()
    with kms_client.KmsClient(server.target) as client:
        for n, data_key in enumerate(issued):
            assert client.decrypt_data_key(data_key.wrapped_key, {"n": str(n)}).plaintext == data_key.plaintext
        deadline = time.monotonic() + 60
        while client.get_key("orders").primary_version < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # rotation goes on after the restart
        key = client.get_key("orders")
        assert key.primary_version >= 3
        assert [v.version for v in key.versions] == list(range(1, len(key.versions) + 1))
        client.update_key("orders", rotation_period=None)
    server.kill()
    report = hsm_check(server.env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [], report


def test_kill_between_destroying_the_master_key_and_recording_it(server_process, fast_env):
    server = server_process
    server.env = fast_env
    server.start(crash_at="destroy_version.after_hsm_destroy")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        client.create_key("orders")
        old = client.generate_data_key("orders", {})
        client.rotate_key("orders")
        new = client.generate_data_key("orders", {})
        client.schedule_key_version_destruction("orders", 1, pending_window=timedelta(seconds=1))
    assert server.wait_exit(timeout=60) == -9  # died right after C_DestroyObject

    server.start()
    with kms_client.KmsClient(server.target) as client:
        deadline = time.monotonic() + 60
        while client.get_key("orders").versions[0].state != "DESTROYED" and time.monotonic() < deadline:
            time.sleep(0.2)  # the next pass writes the tombstone
        assert [v.state for v in client.get_key("orders").versions] == ["DESTROYED", "ENABLED"]
        with pytest.raises(kms_client.KeyVersionDestroyed):
            client.decrypt_data_key(old.wrapped_key, {})
        assert client.decrypt_data_key(new.wrapped_key, {}).plaintext == new.plaintext
    server.kill()
    report = hsm_check(server.env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [], report
