"""TLS and mutual TLS: who gets in, who they are, and certificates replaced while serving.

Which identity each kind of client certificate yields, or why it is refused, is the subject of
test_certificate_zoo.py."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

import kms_client
from tests.support.fixtures import ADMIN
from tests.support.process import clean_env, kms_command


def test_a_client_certificate_from_the_ca_gets_in_and_is_named_by_its_uri_san(mtls_server, connect):
    admin = connect(mtls_server, "admin")
    admin.create_key("orders")
    events = [e for e in admin.audit_events() if e.rpc == "CreateKey"]
    assert [e.identity for e in events] == [ADMIN]


@pytest.mark.parametrize(
    ("name", "ca"),
    [("expired", "ca.crt"), ("stranger", "ca.crt"), (None, "ca.crt")],
    ids=["expired-client-certificate", "client-certificate-from-another-ca", "no-client-certificate"],
)
def test_bad_or_missing_client_certificates_are_refused_at_the_handshake(mtls_server, connect, name, ca):
    with pytest.raises(kms_client.Unavailable):
        connect(mtls_server, name, ca).list_keys()


def test_a_client_that_does_not_trust_the_server_is_refused(mtls_server, connect):
    with pytest.raises(kms_client.Unavailable):
        connect(mtls_server, "admin", ca="other-ca.crt").list_keys()


def test_plaintext_clients_cannot_talk_to_a_tls_server(mtls_server):
    with (
        kms_client.KmsClient(mtls_server.target, retry=kms_client.RetryPolicy(max_attempts=1), timeout=5) as client,
        pytest.raises(kms_client.Unavailable),
    ):
        client.list_keys()


def test_certificate_replaced_on_disk_is_used_for_new_connections_without_dropping_open_ones(
    hsm_token, tmp_path, sqlite_url, label_prefix, dev_certs, connect
):
    from tests.support.fixtures import _running, make_settings

    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(dev_certs / name, live / name)
    app = _running(
        make_settings(
            hsm_token,
            tmp_path,
            sqlite_url,
            label_prefix,
            tls_cert=live / "server.crt",
            tls_key=live / "server.key",
            client_ca=dev_certs / "ca.crt",
            bootstrap_admin=ADMIN,
        )
    )
    try:
        open_client = connect(app, "admin")
        open_client.create_key("orders")
        # A new server certificate from another CA: new connections must present it.
        replacement = tmp_path / "replacement"
        _make_server_cert_from(dev_certs / "other-ca.crt", dev_certs / "other-ca.key", replacement)
        time.sleep(0.01)
        (live / "server.key").write_bytes((replacement / "server.key").read_bytes())
        (live / "server.crt").write_bytes((replacement / "server.crt").read_bytes())
        # The connection made before the change keeps working.
        assert open_client.get_key("orders").key_id == "orders"
        # New connections: trusted only by a client that trusts the new issuer.
        with pytest.raises(kms_client.Unavailable):
            connect(app, "admin").get_key("orders")
        assert connect(app, "admin", ca="other-ca.crt").get_key("orders").key_id == "orders"
        assert app.tls.reloads == 1
        # A broken replacement is refused and the current certificate stays.
        (live / "server.key").write_bytes((dev_certs / "app.key").read_bytes())
        assert connect(app, "admin", ca="other-ca.crt").get_key("orders").key_id == "orders"
        assert app.tls.reloads == 1
    finally:
        app.stop(grace=1)


def _make_server_cert_from(ca_cert, ca_key, directory) -> None:
    directory.mkdir()
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)  # noqa: E731
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    run("openssl", "req", "-new", "-key", str(key), "-subj", "/CN=localhost", "-out", str(csr))
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )


def test_tls_may_listen_on_any_address_and_the_flags_are_the_documented_ones(tmp_path, hsm_env, dev_certs):
    env = clean_env({**hsm_env, "KMS_PKCS11_LABEL_PREFIX": "tlsflags", "KMS_BOOTSTRAP_ADMIN": ADMIN})
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        kms_command(
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--port-file",
            str(port_file),
            "--data-dir",
            str(tmp_path),
            "--tls-cert",
            str(dev_certs / "server.crt"),
            "--tls-key",
            str(dev_certs / "server.key"),
            "--client-ca",
            str(dev_certs / "ca.crt"),
        ),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None, f"kms serve exited with {process.returncode}"
            assert time.monotonic() < deadline, "kms serve wrote no port file"
            time.sleep(0.05)
        credentials = kms_client.tls_credentials(
            str(dev_certs / "ca.crt"), str(dev_certs / "admin.crt"), str(dev_certs / "admin.key")
        )
        target = f"127.0.0.1:{int(port_file.read_text())}"
        with kms_client.KmsClient(target, credentials=credentials, timeout=10) as client:
            assert client.create_key("reachable").key_id == "reachable"
    finally:
        process.terminate()
        process.wait(timeout=30)
