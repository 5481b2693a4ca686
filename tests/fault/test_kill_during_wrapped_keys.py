"""kill -9 at each step of creating and rotating a key stored in the key hierarchy (WRAPPED, the
default), and of rotating the root key, on SQLite and PostgreSQL: nothing committed is lost,
nothing is left behind in the HSM, every wrapped key issued before still opens, and the next
operations work."""

from __future__ import annotations

import subprocess

import pytest

import kms_client
from tests.fault.conftest import hsm_check
from tests.support.hsm import pkcs11_tool_secret_keys
from tests.support.process import kms_command

NO_RETRY = kms_client.RetryPolicy(max_attempts=1)
CONTEXT = {"purpose": "fault"}
POINTS = ["after_hsm_create", "before_commit", "after_commit"]


def _labels(hsm_token, prefix: str) -> list[str]:
    return sorted(o["label"] for o in pkcs11_tool_secret_keys(hsm_token) if o.get("label", "").startswith(prefix + ":"))


def _assert_all_open(client, issued) -> None:
    for data_key in issued:
        opened = client.decrypt_data_key(data_key.wrapped_key, CONTEXT)
        assert (opened.plaintext, opened.key_version) == (data_key.plaintext, data_key.key_version)


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_create(server_process, server_env, hsm_token, point):
    committed = point == "after_commit"
    server = server_process.start(crash_at=f"create_key.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client, pytest.raises(kms_client.Unavailable):
        client.create_key("orders", description="first try")
    assert server.wait_exit() == -9
    prefix = server_env["KMS_PKCS11_LABEL_PREFIX"]
    # Only the root and the seal key are HSM objects: the version's key exists only wrapped.
    assert _labels(hsm_token, prefix) == [f"{prefix}:audit-seal", f"{prefix}:root"]

    server.start()
    with kms_client.KmsClient(server.target) as client:
        if committed:
            key = client.get_key("orders")
            assert (key.description, [v.version for v in key.versions]) == ("first try", [1])
        else:
            with pytest.raises(kms_client.KeyNotFound):
                client.get_key("orders")
            client.create_key("orders", description="second try")
        issued = [client.generate_data_key("orders", CONTEXT) for _ in range(3)]
        client.rotate_key("orders")
        _assert_all_open(client, issued)
    server.kill()
    report = hsm_check(server_env, server.data_dir)
    assert report["exit_code"] == 0 and report["missing"] == [] and report["unresolved"] == []


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_rotation(server_process, server_env, point):
    server = server_process.start()
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client:
        client.create_key("orders")
        issued = [client.generate_data_key("orders", CONTEXT) for _ in range(3)]
    server.kill()

    server.start(crash_at=f"rotate_key.{point}")
    with kms_client.KmsClient(server.target, retry=NO_RETRY) as client, pytest.raises(kms_client.Unavailable):
        client.rotate_key("orders")
    assert server.wait_exit() == -9

    server.start()
    with kms_client.KmsClient(server.target) as client:
        key = client.get_key("orders")
        assert [v.version for v in key.versions] == ([1, 2] if point == "after_commit" else [1])
        _assert_all_open(client, issued)
        rotated = client.rotate_key("orders")
        issued += [client.generate_data_key("orders", CONTEXT)]
        assert issued[-1].key_version == rotated.primary_version
        _assert_all_open(client, issued)


@pytest.mark.parametrize("point", ["after_root_created", "before_commit", "after_commit"])
def test_kill_during_root_rotation_loses_nothing_and_a_rerun_finishes(server_process, server_env, point):
    """The root rotation runs beside a serving server (kms hsm rotate-root); it is killed at a
    step, rerun to completion, and the server opens everything throughout."""
    server = server_process.start()
    with kms_client.KmsClient(server.target) as client:
        issued = []
        for n in range(4):
            client.create_key(f"k{n}")
            issued += [client.generate_data_key(f"k{n}", CONTEXT)]
            client.rotate_key(f"k{n}")
            issued += [client.generate_data_key(f"k{n}", CONTEXT)]

        def rotate_root(crash_at: str | None = None) -> subprocess.CompletedProcess:
            env = dict(server_env)
            if crash_at:
                env["KMS_CRASH_AT"] = crash_at
            return subprocess.run(
                kms_command("hsm", "rotate-root", "--json", "--data-dir", str(server.data_dir)),
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        killed = rotate_root(f"root_rotation.{point}")
        assert killed.returncode == -9, killed.stderr
        for data_key in issued:  # opened by the server while the rotation is half done
            assert client.decrypt_data_key(data_key.wrapped_key, CONTEXT).plaintext == data_key.plaintext
        finished = rotate_root()
        assert finished.returncode == 0, finished.stderr
        roots = {v.root_key_id for n in range(4) for v in client.get_key(f"k{n}").versions}
        assert len(roots) == 1
        for data_key in issued:
            assert client.decrypt_data_key(data_key.wrapped_key, CONTEXT).plaintext == data_key.plaintext
