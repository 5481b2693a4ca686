"""kill -9 at each step of creating and rotating a key, then a restart: no committed version
is without its master key, every wrapped key issued before still opens, and the next
operations work. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import collections

import pytest

import kms_client
from kms.service.reconcile import RECOVERED_DESCRIPTION
from tests.fault.conftest import hsm_check
from tests.support.hsm import pkcs11_tool_secret_keys

NO_RETRY = kms_client.RetryPolicy(max_attempts=1)


@pytest.fixture
def server_env(server_env):
    """These crash orders are those of keys stored as HSM objects (each version a token object);
    tests/fault/test_kill_during_wrapped_keys.py has those of the key hierarchy."""
    return {**server_env, "KMS_KEY_STORAGE": "hsm_object"}


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
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client, pytest.raises(kms_client.Unavailable):
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
    committed = point == "after_commit"
    server = server_process.start(crash_at=f"create_key.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client, pytest.raises(kms_client.Unavailable):
        client.create_key("orders", description="first try")
    assert server.wait_exit() == -9
    prefix = server_env["KMS_PKCS11_LABEL_PREFIX"]
    first_object = f"{prefix}:orders:v1"

    # Before any restart. The master key was created first, so it exists at every point; the
    # database names it exactly when the crash came after the commit, and otherwise it is a
    # leftover. No committed version is ever without its object.
    assert sorted(_one_object_per_version(hsm_token, prefix)) == [first_object]
    found = hsm_check(server_env, server.data_dir)  # without --repair: reports, changes nothing
    assert found["missing"] == []
    assert [leftover["label"] for leftover in found["unresolved"]] == ([] if committed else [first_object])
    assert found["exit_code"] == (0 if committed else 1)

    server.start()  # start-up reconciliation adopts the leftover: the key is recovered from it
    with kms_client.KmsClient(server.target) as client:
        key = client.get_key("orders")
        assert key.description == ("first try" if committed else RECOVERED_DESCRIPTION)
        assert ([v.version for v in key.versions], key.primary_version) == ([1], 1)
        assert key.versions[0].hsm_label == first_object
        with pytest.raises(kms_client.KeyAlreadyExists):
            client.create_key("orders", description="second try")
        issued = _issue(client, 3)
        client.rotate_key("orders")
        _assert_all_open(client, issued)
    assert sorted(_one_object_per_version(hsm_token, prefix)) == [first_object, f"{prefix}:orders:v2"]
    server.kill()
    report = hsm_check(server_env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [] and report["unresolved"] == []
