"""``kms serve`` as a user runs it: embedded defaults, refusing unsafe listening, draining on
SIGTERM."""

from __future__ import annotations

import stat
import subprocess
import threading
import time

import grpc
import pytest

import kms_client
from tests.support.process import ServerProcess, clean_env, free_port, kms_command


def test_hsm_init_creates_a_private_development_token_once(tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    first, second = (
        subprocess.run(kms_command("hsm", "init", "--data-dir", str(data_dir)), env=clean_env(),
                       capture_output=True, text=True, timeout=60)
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
        kms_command("serve", "--listen", f"0.0.0.0:{free_port()}", "--data-dir", str(tmp_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no TLS configured" in result.stderr


def test_development_mode_still_refuses_a_non_loopback_address(tmp_path):
    result = subprocess.run(
        kms_command("serve", "--dev", "--listen", f"0.0.0.0:{free_port()}", "--data-dir", str(tmp_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to serve plaintext gRPC on non-loopback address 0.0.0.0" in result.stderr


def test_plaintext_without_development_mode_is_refused_even_on_loopback(tmp_path):
    result = subprocess.run(
        kms_command("serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "KMS_DEV_MODE" in result.stderr and "superuser" in result.stderr


def test_sigterm_lets_in_flight_calls_finish(tmp_path, hsm_env):
    server = ServerProcess(tmp_path, clean_env({**hsm_env, "KMS_PKCS11_LABEL_PREFIX": "drain"})).start()
    with kms_client.KmsClient(server.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client:
        client.create_key("drain")
        outcomes: list[object] = []

        def big_batch() -> None:
            try:
                outcomes.append(len(client.generate_data_keys([("drain", {})] * 1000, timeout=60)))
            except kms_client.KmsError as error:
                outcomes.append(error)

        callers = [threading.Thread(target=big_batch) for _ in range(4)]
        for caller in callers:
            caller.start()
        time.sleep(0.05)  # let the calls reach the server; each takes several times longer
        assert server.terminate() == 0
        for caller in callers:
            caller.join()
    # Every call that had started finished with all its items; none was cut off. A call that
    # arrives once shutdown has begun is refused before it starts (UNAVAILABLE or CANCELLED).
    not_started = (kms_client.Unavailable, kms_client.errors.Cancelled)
    assert all(outcome == 1000 for outcome in outcomes if not isinstance(outcome, not_started)), outcomes
    assert any(outcome == 1000 for outcome in outcomes)
    with pytest.raises(grpc.FutureTimeoutError):
        with grpc.insecure_channel(server.target) as channel:
            grpc.channel_ready_future(channel).result(timeout=1)
