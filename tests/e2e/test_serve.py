"""``kms serve`` as a user runs it: embedded defaults, refusing unsafe listening, draining on
SIGTERM."""

from __future__ import annotations

import signal
import stat
import subprocess
import threading
import time

import grpc
import pytest

import kms_client
from tests.support.process import ServerProcess, clean_env, kms_command


def test_hsm_init_creates_a_private_development_token_once(tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    first, second = (
        subprocess.run(
            kms_command("hsm", "init", "--data-dir", str(data_dir)),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(2)
    )
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout  # the same token, found again
    assert f"export SOFTHSM2_CONF={data_dir / 'softhsm' / 'softhsm2.conf'}" in first.stdout
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    pin = (data_dir / "softhsm" / "user-pin").read_text().strip()
    assert pin not in first.stdout + first.stderr


def test_embedded_defaults_create_their_own_token_and_database(tmp_path):
    server = ServerProcess(tmp_path / "data", clean_env()).start()
    try:
        softhsm = tmp_path / "data" / "softhsm"
        assert (softhsm / "softhsm2.conf").exists()
        for pin_file in ("user-pin", "so-pin"):
            assert stat.S_IMODE((softhsm / pin_file).stat().st_mode) == 0o600
        assert stat.S_IMODE(softhsm.stat().st_mode) == 0o700
        assert (tmp_path / "data" / "kms.db").exists()
        with kms_client.KmsClient(server.target) as client:
            client.create_key("orders")
            issued = client.generate_data_key("orders", {"a": "b"})
            assert client.decrypt_data_key(issued.wrapped_key, {"a": "b"}).plaintext == issued.plaintext
        pin = (softhsm / "user-pin").read_text().strip()
        assert pin not in server.log.read_text()
    finally:
        assert server.terminate() == 0
    # A second start finds the same token and keys.
    server.start()
    try:
        with kms_client.KmsClient(server.target) as client:
            assert client.get_key("orders").primary_version == 1
    finally:
        server.terminate()


def test_plaintext_on_a_non_loopback_address_is_refused(tmp_path):
    result = subprocess.run(
        kms_command("serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no TLS configured" in result.stderr


def test_development_mode_still_refuses_a_non_loopback_address(tmp_path):
    result = subprocess.run(
        kms_command("serve", "--dev", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to serve plaintext gRPC on non-loopback address 0.0.0.0" in result.stderr


def test_plaintext_without_development_mode_is_refused_even_on_loopback(tmp_path):
    result = subprocess.run(
        kms_command("serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "KMS_DEV_MODE" in result.stderr and "superuser" in result.stderr


def test_sigterm_refuses_new_calls_and_lets_one_in_flight_finish(tmp_path, hsm_env):
    """The call in flight is a stream, so that the test knows it is in flight: the server has
    answered its first message before the signal is sent, and the rest of its messages are only
    sent once new calls are being refused."""
    env = clean_env({**hsm_env, "KMS_PKCS11_LABEL_PREFIX": "drain", "KMS_SHUTDOWN_GRACE": "60s"})
    server = ServerProcess(tmp_path, env).start()
    no_retry = kms_client.RetryPolicy(max_attempts=1)
    with kms_client.KmsClient(server.target, retry=no_retry) as client:
        client.create_key("drain")
        issued = client.generate_data_keys([("drain", {"n": str(n)}) for n in range(200)])
        client.rotate_key("drain")
        refusing = threading.Event()

        def items():
            for n, data_key in enumerate(issued):
                if n == 1:
                    refusing.wait(30)
                yield data_key.wrapped_key, {"n": str(n)}

        results = client.stream_rewrap(items(), items_per_message=1)
        first = next(results)  # the server is in the call
        server.process.send_signal(signal.SIGTERM)
        refused = _until_new_calls_are_refused(server.target)
        refusing.set()
        rest = list(results)
    assert isinstance(refused, (kms_client.Unavailable, kms_client.Cancelled)), refused
    assert [r.key_version for r in [first, *rest]] == [2] * len(issued)  # every item, none cut off
    assert server.wait_exit() == 0
    with pytest.raises(grpc.FutureTimeoutError), grpc.insecure_channel(server.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=1)


def _until_new_calls_are_refused(target: str, timeout: float = 10) -> kms_client.KmsError:
    """The error of the first call, made on a new connection, that the server refuses."""
    deadline = time.monotonic() + timeout
    with kms_client.KmsClient(target, retry=kms_client.RetryPolicy(max_attempts=1), timeout=5) as late:
        while time.monotonic() < deadline:
            try:
                late.get_key("drain")
            except kms_client.KmsError as error:
                return error
            time.sleep(0.01)
    pytest.fail(f"new calls were still served {timeout}s after SIGTERM")
