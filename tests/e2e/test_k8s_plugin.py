"""The Kubernetes KMS v2 plugin (kms.k8s, ``kms k8s-plugin``) as kube-apiserver sees it: a
client generated from the upstream api.proto, over a real unix socket, against a real KMS."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kms.errors import InvalidEncryptionContext
from kms.k8s import (
    CIPHERTEXT_REFUSED,
    MAX_CIPHERTEXT_BYTES,
    KeyManagementServicer,
    KeyStatus,
    KmsPlugin,
    PluginConfig,
    PluginServer,
    SocketInUse,
    SocketPathRefused,
    open_channel,
)
from kms_client import KmsClient, KmsError, Unavailable, tls_credentials
from kms_proto.k8s.kms.apis.v2 import api_pb2, api_pb2_grpc
from tests.support.fixtures import APP
from tests.support.process import ServerProcess, clean_env, kms_command

REPOSITORY = Path(__file__).resolve().parents[2]
KEY = "k8s"
SEED_BYTES = 32  # what kube-apiserver encrypts: a DEK seed


@contextlib.contextmanager
def plugin_on(
    target: str, socket_path: Path, credentials: grpc.ChannelCredentials | None = None, **config: object
) -> Iterator[PluginServer]:
    """The plugin in this process, serving ``socket_path``, reaching the KMS at ``target``."""
    config.setdefault("status_max_age", 0.0)
    # The product's 2 s suits an API server's 3 s; a test machine shared by parallel tests can
    # take longer for a first call, which is not what these tests are about.
    config.setdefault("kms_timeout", 20.0)
    channel = open_channel(target, credentials)
    server = PluginServer(KeyManagementServicer(KmsPlugin(PluginConfig(**config), channel)), socket_path)
    try:
        server.start()
        yield server
    finally:
        server.stop(grace=1)
        channel.close()


@contextlib.contextmanager
def apiserver(socket_path: Path) -> Iterator[api_pb2_grpc.KeyManagementServiceStub]:
    """What kube-apiserver holds: a stub of the upstream API on the plugin's socket."""
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        yield api_pb2_grpc.KeyManagementServiceStub(channel)


def encrypt(stub: api_pb2_grpc.KeyManagementServiceStub, plaintext: bytes) -> api_pb2.EncryptResponse:
    return stub.Encrypt(api_pb2.EncryptRequest(plaintext=plaintext, uid=os.urandom(8).hex()), timeout=10)


def decrypt(stub: api_pb2_grpc.KeyManagementServiceStub, sealed: api_pb2.EncryptResponse) -> bytes:
    request = api_pb2.DecryptRequest(
        ciphertext=sealed.ciphertext, key_id=sealed.key_id, annotations=sealed.annotations, uid=os.urandom(8).hex()
    )
    return stub.Decrypt(request, timeout=10).plaintext


def refused(call, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args)
    return raised.value.code()


def test_encrypt_and_decrypt_round_trip_over_the_unix_socket(server, client, tmp_path):
    client.create_key(KEY)
    seed = os.urandom(SEED_BYTES)
    with plugin_on(server.target, tmp_path / "kms.sock", key_id=KEY), apiserver(tmp_path / "kms.sock") as stub:
        status = stub.Status(api_pb2.StatusRequest(), timeout=10)
        first, second = encrypt(stub, seed), encrypt(stub, seed)
        assert (status.version, status.healthz, status.key_id) == ("v2", "ok", "k8s:v1")
        assert first.key_id == second.key_id == status.key_id
        assert not first.annotations
        assert 0 < len(first.ciphertext) <= MAX_CIPHERTEXT_BYTES
        assert first.ciphertext != second.ciphertext  # a fresh data key each time
        assert seed not in first.ciphertext
        assert decrypt(stub, first) == decrypt(stub, second) == seed
        # The key_id, annotations and uid of a Decrypt request are informational.
        anything = api_pb2.DecryptRequest(
            ciphertext=first.ciphertext, key_id="no:such", uid="other", annotations={"kms.example.com/x": b"1"}
        )
        assert stub.Decrypt(anything, timeout=10).plaintext == seed


def test_a_rotation_changes_the_key_id_and_old_ciphertexts_still_decrypt(server, client, tmp_path):
    client.create_key(KEY)
    seed = os.urandom(SEED_BYTES)
    with plugin_on(server.target, tmp_path / "kms.sock", key_id=KEY), apiserver(tmp_path / "kms.sock") as stub:
        before = encrypt(stub, seed)
        assert stub.Status(api_pb2.StatusRequest(), timeout=10).key_id == before.key_id == "k8s:v1"
        client.rotate_key(KEY)
        assert stub.Status(api_pb2.StatusRequest(), timeout=10).key_id == "k8s:v2"
        after = encrypt(stub, seed)
        assert after.key_id == "k8s:v2"
        client.rotate_key(KEY)
        assert encrypt(stub, seed).key_id == "k8s:v3"
        assert decrypt(stub, before) == decrypt(stub, after) == seed


def test_a_tampered_ciphertext_is_an_error_and_never_a_plaintext(server, client, tmp_path):
    client.create_key(KEY)
    seed = os.urandom(SEED_BYTES)
    with plugin_on(server.target, tmp_path / "kms.sock", key_id=KEY), apiserver(tmp_path / "kms.sock") as stub:
        sealed = encrypt(stub, seed)
        ciphertext = sealed.ciphertext
        flipped = [ciphertext[:i] + bytes([ciphertext[i] ^ 0x01]) + ciphertext[i + 1 :] for i in range(len(ciphertext))]
        cut = [
            ciphertext[:-1],
            ciphertext[:-17],
            ciphertext[:100],
            ciphertext + b"\x00",
            b"",
            bytes(MAX_CIPHERTEXT_BYTES + 1),
        ]
        outcomes = {}
        for candidate in flipped + cut:
            try:
                stub.Decrypt(api_pb2.DecryptRequest(ciphertext=candidate, key_id=sealed.key_id), timeout=10)
                outcomes.setdefault("plaintext", 0)
                outcomes["plaintext"] += 1
            except grpc.RpcError as error:
                outcomes.setdefault((error.code(), error.details()), 0)
                outcomes[(error.code(), error.details())] += 1
        assert outcomes == {(grpc.StatusCode.INVALID_ARGUMENT, CIPHERTEXT_REFUSED): len(flipped) + len(cut)}
        assert decrypt(stub, sealed) == seed  # the original is still good


def test_ciphertexts_of_another_cluster_or_application_are_refused(server, client, tmp_path):
    client.create_key(KEY)
    seed = os.urandom(SEED_BYTES)
    east, west = tmp_path / "east.sock", tmp_path / "west.sock"
    with (
        plugin_on(server.target, east, key_id=KEY, context={"cluster": "east"}),
        plugin_on(server.target, west, key_id=KEY, context={"cluster": "west"}),
        apiserver(east) as east_stub,
        apiserver(west) as west_stub,
    ):
        sealed = encrypt(east_stub, seed)
        assert decrypt(east_stub, sealed) == seed
        assert refused(decrypt, west_stub, sealed) == grpc.StatusCode.INVALID_ARGUMENT
        # Another application's ciphertext under the same key and even the same entries, but
        # without the plugin's purpose, does not open through the plugin.
        foreign = api_pb2.DecryptRequest(ciphertext=client.encrypt(seed, key_id=KEY, context={"cluster": "east"}))
        assert refused(east_stub.Decrypt, foreign) == grpc.StatusCode.INVALID_ARGUMENT


def test_plaintexts_beyond_what_fits_in_the_api_servers_ciphertext_are_refused(server, client, tmp_path):
    client.create_key(KEY)
    config = PluginConfig(KEY)
    with plugin_on(server.target, tmp_path / "kms.sock", key_id=KEY), apiserver(tmp_path / "kms.sock") as stub:
        largest = encrypt(stub, os.urandom(config.max_plaintext))
        assert len(largest.ciphertext) == MAX_CIPHERTEXT_BYTES
        assert refused(encrypt, stub, os.urandom(config.max_plaintext + 1)) == grpc.StatusCode.INVALID_ARGUMENT
        assert refused(encrypt, stub, b"") == grpc.StatusCode.INVALID_ARGUMENT


def test_a_context_too_long_for_the_api_servers_ciphertext_limit_is_refused_at_start():
    with pytest.raises(InvalidEncryptionContext, match="exceed the API server's 1024 bytes"):
        PluginConfig(KEY, {"cluster": "x" * 800})
    PluginConfig(KEY, {"cluster": "x" * 700})
    with pytest.raises(InvalidEncryptionContext, match="reserved"):
        PluginConfig(KEY, {"purpose": "mine"})


def test_the_socket_is_private_and_only_a_stale_one_is_replaced(server, client, tmp_path):
    client.create_key(KEY)
    path = tmp_path / "kms.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a killed plugin leaves
    os.chmod(path, 0o777)
    with plugin_on(server.target, path, key_id=KEY):
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        with pytest.raises(SocketInUse), plugin_on(server.target, path, key_id=KEY):
            pass
        with apiserver(path) as stub:  # the first plugin still serves
            assert stub.Status(api_pb2.StatusRequest(), timeout=10).healthz == "ok"
    assert not path.exists()  # removed on stop
    path.write_text("not a socket")
    with pytest.raises(SocketPathRefused, match="not a socket"), plugin_on(server.target, path, key_id=KEY):
        pass
    assert path.read_text() == "not a socket"


def test_the_plugin_identity_needs_only_encrypt_and_decrypt_under_its_context(
    mtls_server, connect, dev_certs, tmp_path
):
    admin = connect(mtls_server, "admin")
    admin.create_key(KEY)
    admin.grant_permissions(
        APP, KEY, ["encrypt", "decrypt"], encryption_context_equals={"purpose": "kubernetes-kms-v2", "cluster": "east"}
    )

    def as_identity(name: str) -> grpc.ChannelCredentials:
        files = (dev_certs / "ca.crt", dev_certs / f"{name}.crt", dev_certs / f"{name}.key")
        return tls_credentials(*map(str, files))

    seed = os.urandom(SEED_BYTES)
    good, other, wrong_context = tmp_path / "good.sock", tmp_path / "other.sock", tmp_path / "wrong.sock"
    with (
        plugin_on(mtls_server.target, good, as_identity("app"), key_id=KEY, context={"cluster": "east"}),
        plugin_on(mtls_server.target, other, as_identity("other"), key_id=KEY, context={"cluster": "east"}),
        plugin_on(mtls_server.target, wrong_context, as_identity("app"), key_id=KEY, context={"cluster": "west"}),
    ):
        with apiserver(good) as stub:
            assert stub.Status(api_pb2.StatusRequest(), timeout=10).healthz == "ok"
            assert decrypt(stub, encrypt(stub, seed)) == seed
        for path in (other, wrong_context):
            with apiserver(path) as stub:
                status = stub.Status(api_pb2.StatusRequest(), timeout=10)
                assert status.healthz == "KMS PERMISSION_DENIED: PermissionDenied"
                assert refused(encrypt, stub, seed) == grpc.StatusCode.PERMISSION_DENIED


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s")
        time.sleep(0.1)


def _status(socket_path: Path) -> api_pb2.StatusResponse:
    with apiserver(socket_path) as stub:
        return stub.Status(api_pb2.StatusRequest(), timeout=10)


def _serving(socket_path: Path) -> bool:
    try:
        _status(socket_path)
        return True
    except grpc.RpcError:
        return False


@pytest.mark.slow
def test_the_command_reports_a_kms_outage_in_status_recovers_and_drains_on_sigterm(hsm_env, label_prefix, tmp_path):
    kms = ServerProcess(tmp_path / "data", clean_env({**hsm_env, "KMS_PKCS11_LABEL_PREFIX": label_prefix})).start()
    path, log = tmp_path / "kms.sock", tmp_path / "plugin.log"
    seed = os.urandom(SEED_BYTES)
    with log.open("wb") as output:
        plugin = subprocess.Popen(
            kms_command(
                "k8s-plugin",
                "--socket",
                str(path),
                "--key-id",
                KEY,
                "--target",
                kms.target,
                "--context",
                "cluster=east",
                "--status-max-age",
                "0s",
                "--kms-timeout",
                "1s",
                "--log-format",
                "text",
                "--log-level",
                "DEBUG",
            ),
            env=clean_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: _serving(path) or plugin.poll() is not None, 30, "serving")
        assert plugin.poll() is None, log.read_text()
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        second = subprocess.run(
            kms_command("k8s-plugin", "--socket", str(path), "--key-id", KEY, "--target", kms.target),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2
        assert second.stderr.strip() == f"kms k8s-plugin: another process is serving on {path}"
        assert _status(path).healthz == "KMS NOT_FOUND: KeyNotFound"
        with KmsClient(kms.target) as client:
            client.create_key(KEY)
        assert (_status(path).healthz, _status(path).key_id) == ("ok", "k8s:v1")
        with apiserver(path) as stub:
            sealed = encrypt(stub, seed)

        assert kms.terminate() == 0
        down = _status(path)
        assert down.healthz == "KMS UNAVAILABLE: Unavailable" and down.key_id == "k8s:v1"
        with apiserver(path) as stub:
            assert refused(encrypt, stub, seed) == grpc.StatusCode.UNAVAILABLE

        kms.start(same_port=True)  # back at the address the plugin was given
        _wait_for(lambda: _status(path).healthz == "ok", 30, "ok again")
        with apiserver(path) as stub:
            assert decrypt(stub, sealed) == seed

        plugin.send_signal(signal.SIGTERM)
        assert plugin.wait(timeout=30) == 0
        assert not path.exists()
    finally:
        if plugin.poll() is None:
            plugin.kill()
            plugin.wait()
        if kms.process is not None and kms.process.poll() is None:
            kms.terminate()
    text = log.read_text()
    assert "k8s encrypt" in text and "k8s decrypt" in text  # DEBUG logs each call...
    for secret in (seed.hex(), repr(seed)[2:-1], base64.b64encode(seed).decode()):
        assert secret not in text  # ...and never its data


def test_status_probes_are_reused_for_their_max_age_and_the_key_id_never_goes_back():
    now = [100.0]
    answers: list[int | KmsError] = [1, Unavailable("down"), 3, 2]
    probes = []

    def probe() -> int:
        probes.append(now[0])
        answer = answers.pop(0)
        if isinstance(answer, KmsError):
            raise answer
        return answer

    status = KeyStatus(KEY, probe, max_age=5, monotonic=lambda: now[0])
    assert (status.report().healthz, status.report().key_id) == ("ok", "k8s:v1")
    now[0] += 4.9
    assert status.report().healthz == "ok" and len(probes) == 1
    now[0] += 0.1
    assert status.report().healthz == "KMS UNAVAILABLE: Unavailable"
    now[0] += 1
    assert status.report().healthz != "ok" and len(probes) == 2  # a failure is reused too
    now[0] += 5
    assert status.report().key_id == "k8s:v3"
    status.observe(4)  # an Encrypt saw version 4 before any probe did
    now[0] += 5
    assert status.report().key_id == "k8s:v4"  # the probe's 2 does not take it back
    assert len(probes) == 4


def _example_blocks(markdown: str) -> dict[str, str]:
    """Fenced blocks that follow an ``<!-- example: NAME -->`` marker, by name."""
    return dict(re.findall(r"<!-- example: ([\w-]+) -->\s*```\w*\n(.*?)```", markdown, flags=re.DOTALL))


def test_the_documented_example_runs(server, tmp_path):
    """docs/integrations/kubernetes.md: its commands and its client, as written, but with this
    test's server (KMS_TARGET) and a socket under tmp_path."""
    blocks = _example_blocks((REPOSITORY / "docs" / "integrations" / "kubernetes.md").read_text())
    documented = re.search(r"--socket (\S+)", blocks["run-plugin"]).group(1)
    assert f"endpoint: unix://{documented}" in blocks["encryption-configuration"]
    path = tmp_path / "kms.sock"
    env = clean_env({"KMS_TARGET": server.target})
    plugin = None
    try:
        for line in blocks["run-plugin"].replace(documented, str(path)).splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            words = shlex.split(line.rstrip("& "))
            assert words[0] == "kms", line
            if line.rstrip().endswith("&"):
                started = subprocess.Popen(
                    kms_command(*words[1:]), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                plugin = started
                _wait_for(lambda process=started: _serving(path) or process.poll() is not None, 30, "serving")
                assert started.poll() is None, started.stderr.read().decode()
            else:
                done = subprocess.run(
                    kms_command(*words[1:]), env=env, capture_output=True, text=True, timeout=60, check=False
                )
                assert done.returncode == 0, done.stderr
        assert plugin is not None
        exec(compile(blocks["check-plugin"].replace(documented, str(path)), "kubernetes.md", "exec"), {})
    finally:
        if plugin is not None and plugin.poll() is None:
            plugin.terminate()
            plugin.wait(timeout=30)
