"""kill -9 at each step of creating and rotating a key, then a restart: no committed version
is without its master key, every wrapped key issued before still opens, and the next
operations work. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import collections

import pytest

import kms_client
from tests.fault.conftest import hsm_check
from tests.support.hsm import pkcs11_tool_secret_keys

NO_RETRY = kms_client.RetryPolicy(max_attempts=1)
CONTEXT = {"purpose": "fault"}


def _issue(client: kms_client.KmsClient, count: int) -> list[kms_client.DataKey]:
    return [client.generate_data_key("orders", CONTEXT) for _ in range(count)]


def _assert_all_open(client: kms_client.KmsClient, issued: list[kms_client.DataKey]) -> None:
    for data_key in issued:
        opened = client.decrypt_data_key(data_key.wrapped_key, CONTEXT)
        assert (opened.plaintext, opened.key_version) == (data_key.plaintext, data_key.key_version)


def _one_object_per_version(hsm_token, prefix: str) -> collections.Counter:
    """Master key objects of key "orders" by label (the audit seal key shares the prefix)."""
    labels = collections.Counter(
        o["label"] for o in pkcs11_tool_secret_keys(hsm_token) if o.get("label", "").startswith(prefix + ":orders:")
    )
    assert all(count == 1 for count in labels.values()), labels
    return labels


@pytest.mark.parametrize("point", ["after_hsm_create", "before_commit", "after_commit"])
def test_kill_during_rotation(server_process, server_env, hsm_token, point):
    server = server_process.start()
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        client.create_key("orders")
        issued = _issue(client, 5)
        client.rotate_key("orders")
        issued += _issue(client, 5)
    server.kill()

    server.start(crash_at=f"rotate_key.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        with pytest.raises(kms_client.Unavailable):
            client.rotate_key("orders")
    assert server.wait_exit() == -9

    server.start()  # start-up reconciliation runs before SERVING
    with kms_client.KmsClient(server.target) as client:
        _assert_all_open(client, issued)
        key = client.get_key("orders")
        # Committed: v3 is primary. Not committed: the leftover was adopted as v3 (not primary).
        assert [v.version for v in key.versions] == [1, 2, 3]
        assert key.primary_version == (3 if point == "after_commit" else 2)
        rotated = client.rotate_key("orders")
        assert rotated.primary_version == 4
        fresh = _issue(client, 3)
        _assert_all_open(client, issued + fresh)
    prefix = server_env["KMS_PKCS11_LABEL_PREFIX"]
    assert sorted(_one_object_per_version(hsm_token, prefix)) == [f"{prefix}:orders:v{n}" for n in (1, 2, 3, 4)]
    server.kill()
    report = hsm_check(server_env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [] and report["unresolved"] == []


@pytest.mark.parametrize("point", ["after_hsm_create", "before_commit", "after_commit"])
def test_kill_during_create(server_process, server_env, hsm_token, point):
    server = server_process.start(crash_at=f"create_key.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        with pytest.raises(kms_client.Unavailable):
            client.create_key("orders", description="first try")
    assert server.wait_exit() == -9

    server.start()
    with kms_client.KmsClient(server.target) as client:
        try:
            client.create_key("orders", description="second try")
        except kms_client.KeyAlreadyExists:
            pass  # the first attempt committed, or its leftover was recovered at start-up
        key = client.get_key("orders")
        assert [v.version for v in key.versions] == [1]
        issued = _issue(client, 3)
        client.rotate_key("orders")
        _assert_all_open(client, issued)
    prefix = server_env["KMS_PKCS11_LABEL_PREFIX"]
    assert sorted(_one_object_per_version(hsm_token, prefix)) == [f"{prefix}:orders:v1", f"{prefix}:orders:v2"]
    server.kill()
    assert hsm_check(server_env, server.data_dir)["exit_code"] == 0
