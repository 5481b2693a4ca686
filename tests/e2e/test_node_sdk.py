"""The TypeScript SDK (clients/node) against real servers, and its interoperability with the
Python SDK.

- ``npm --prefix clients/node test`` runs the Node suite (node:test) against a plaintext server
  and a mutual-TLS server started here, with every variable it reads set and
  KMS_TEST_REQUIRE_SERVER=1, so that none of its tests can skip.
- Every condition the service reports (a KmsError subclass anywhere under kms/) has a class in
  the Node SDK's registry, under the same status code.
- Ciphertexts cross between the SDKs both ways, as single messages and as multi-frame streams:
  Python's KmsClient on one side, on the other the Node CLI (dist/cli.js, streams) or a small
  Node program (test/programs/interop.mjs, in memory).

The Node packages are installed by scripts/setup.sh (npm ci); without them these tests fail,
they never skip.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import kms_client
from tests.support.fixtures import ADMIN, make_settings

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
CLI = NODE_DIR / "dist" / "cli.js"
INTEROP = NODE_DIR / "test" / "programs" / "interop.mjs"
MiB = 1024 * 1024
CONTEXT = {"tenant": "acme", "région": "Île-de-France", "🔑": "✓", "empty": ""}


def _node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without KMS_* settings (a developer's shell may have some), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    env.update(extra or {})
    return env


def _show(done: subprocess.CompletedProcess) -> str:
    out = done.stdout if isinstance(done.stdout, str) else done.stdout.decode(errors="replace")
    err = done.stderr if isinstance(done.stderr, str) else done.stderr.decode(errors="replace")
    return f"exit status {done.returncode}\n--- stdout ---\n{out[-20000:]}\n--- stderr ---\n{err[-20000:]}"


@pytest.fixture(scope="module")
def node_sdk() -> SimpleNamespace:
    """Node, npm and a fresh build of the SDK; fails (never skips) when setup has not run."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required for the TypeScript SDK: run scripts/setup.sh")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules is missing: run scripts/setup.sh (npm ci in clients/node)")
    done = subprocess.run(
        [npm, "--prefix", str(NODE_DIR), "run", "--silent", "build"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, "the TypeScript build failed:\n" + _show(done)
    return SimpleNamespace(node=node, npm=npm)


@pytest.fixture
def mtls_settings(hsm_token, tmp_path, label_prefix, dev_certs):
    """The shared fixture's mutual-TLS server, in a directory, database and HSM label space of
    its own, so that it can run beside the plaintext ``server`` of the same test."""
    directory = tmp_path / "mtls"
    directory.mkdir()
    return make_settings(
        hsm_token,
        directory,
        f"sqlite:///{directory / 'kms.db'}",
        f"{label_prefix}m",
        tls_cert=dev_certs / "server.crt",
        tls_key=dev_certs / "server.key",
        client_ca=dev_certs / "ca.crt",
        bootstrap_admin=ADMIN,
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the Node suite streams 528 MiB through the server in its memory test
def test_the_node_suite_passes_against_a_plaintext_and_a_mutual_tls_server(node_sdk, server, mtls_server, dev_certs):
    env = _node_env(
        {
            "KMS_TARGET": server.target,
            "KMS_TLS_TARGET": mtls_server.target,
            "KMS_TLS_CA": str(dev_certs / "ca.crt"),
            "KMS_TLS_CERT": str(dev_certs / "admin.crt"),
            "KMS_TLS_KEY": str(dev_certs / "admin.key"),
            "KMS_TLS_APP_CERT": str(dev_certs / "app.crt"),  # an identity without any grant
            "KMS_TLS_APP_KEY": str(dev_certs / "app.key"),
            "KMS_TEST_REQUIRE_SERVER": "1",
        }
    )
    done = subprocess.run(
        [node_sdk.npm, "--prefix", str(NODE_DIR), "test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    summary = {
        name: int(count)
        for name, count in re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", done.stdout, re.MULTILINE)
    }
    assert done.returncode == 0, _show(done)
    assert summary.get("fail") == 0 and summary.get("cancelled") == 0, _show(done)
    assert summary.get("skipped") == 0 and summary.get("todo") == 0, "the Node suite skipped tests:\n" + _show(done)
    assert summary.get("pass") == summary.get("tests") and summary["tests"] >= 100, _show(done)


def _service_conditions() -> dict[str, str]:
    """Every KmsError subclass the running service can raise, by reason (its class name), with
    its status code: those defined anywhere in the modules the composition root (kms.app) loads."""
    importlib.import_module("kms.app")
    from kms.errors import KmsError

    found: dict[str, str] = {}
    pending = [KmsError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] == "kms":
                found[sub.__name__] = sub.code
            pending.append(sub)
    return found


def test_every_condition_the_service_reports_has_a_node_class_of_the_same_code(node_sdk):
    conditions = _service_conditions()
    assert {"KeyNotFound", "InvalidCiphertext", "PermissionDenied", "KeyVersionDisabled"} <= conditions.keys()
    done = subprocess.run(
        [node_sdk.node, "-e", "console.log(JSON.stringify(require('kms-client').registeredReasons()))"],
        cwd=NODE_DIR,
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, _show(done)
    registered = json.loads(done.stdout)
    missing = sorted(name for name in conditions if name not in registered)
    assert not missing, f"the Node SDK has no class for {missing} (add one line each to clients/node/src/errors.ts)"
    wrong = {name: (code, registered[name]) for name, code in conditions.items() if registered[name] != code}
    assert not wrong, f"service code vs Node SDK code: {wrong}"


# -- interoperability --------------------------------------------------------------------------


def _node(node_sdk, args: list[str], data: bytes) -> bytes:
    done = subprocess.run(
        [node_sdk.node, *args], input=data, env=_node_env(), capture_output=True, timeout=300, check=False
    )
    assert done.returncode == 0, _show(done)
    return done.stdout


def _context_flags(context: dict[str, str]) -> list[str]:
    return [flag for key, value in context.items() for flag in ("-c", f"{key}={value}")]


def node_encrypt_message(node_sdk, target: str, key_id: str, plaintext: bytes) -> bytes:
    """KmsClient.encrypt, in memory."""
    return _node(node_sdk, [str(INTEROP), "encrypt", target, key_id, json.dumps(CONTEXT), "65536"], plaintext)


def node_decrypt_message(node_sdk, target: str, ciphertext: bytes) -> bytes:
    """KmsClient.decrypt, in memory."""
    return _node(node_sdk, [str(INTEROP), "decrypt", target, json.dumps(CONTEXT)], ciphertext)


def node_encrypt_stream(node_sdk, target: str, key_id: str, plaintext: bytes, frame_size: int) -> bytes:
    """KmsClient.encryptStream, through the CLI (stdin to stdout)."""
    args = ["encrypt", "--target", target, "--key-id", key_id, "--frame-size", str(frame_size)]
    return _node(node_sdk, [str(CLI), *args, *_context_flags(CONTEXT)], plaintext)


def node_decrypt_stream(node_sdk, target: str, ciphertext: bytes) -> bytes:
    """KmsClient.decryptStream, through the CLI (stdin to stdout)."""
    return _node(node_sdk, [str(CLI), "decrypt", "--target", target, *_context_flags(CONTEXT)], ciphertext)


@pytest.fixture
def interop_key(client) -> str:
    client.create_key("interop")
    return "interop"


def test_python_encrypts_a_message_and_node_decrypts_it(node_sdk, server, client, interop_key):
    plaintext = os.urandom(1000)
    ciphertext = client.encrypt(plaintext, key_id=interop_key, context=CONTEXT)
    assert node_decrypt_message(node_sdk, server.target, ciphertext) == plaintext
    assert node_decrypt_stream(node_sdk, server.target, ciphertext) == plaintext


def test_node_encrypts_a_message_and_python_decrypts_it(node_sdk, server, client, interop_key):
    plaintext = os.urandom(1000)
    ciphertext = node_encrypt_message(node_sdk, server.target, interop_key, plaintext)
    header = kms_client.parse_header_bytes(ciphertext)
    assert (header.key_id, dict(header.context), header.frame_size) == (interop_key, CONTEXT, 65536)
    assert client.decrypt(ciphertext, context=CONTEXT) == plaintext


def test_python_encrypts_a_multi_frame_stream_and_node_decrypts_it(node_sdk, server, client, interop_key):
    plaintext = os.urandom(3 * MiB + 5)
    sealed = io.BytesIO()
    client.encrypt_stream(io.BytesIO(plaintext), sealed, key_id=interop_key, context=CONTEXT, frame_size=64 * 1024)
    ciphertext = sealed.getvalue()
    assert kms_client.parse_header_bytes(ciphertext).frame_size == 64 * 1024
    assert node_decrypt_stream(node_sdk, server.target, ciphertext) == plaintext
    assert node_decrypt_message(node_sdk, server.target, ciphertext) == plaintext


def test_node_encrypts_a_multi_frame_stream_and_python_decrypts_it(node_sdk, server, client, interop_key):
    plaintext = os.urandom(3 * MiB + 5)
    ciphertext = node_encrypt_stream(node_sdk, server.target, interop_key, plaintext, 64 * 1024)
    header = kms_client.parse_header_bytes(ciphertext)
    assert (header.key_id, dict(header.context), header.frame_size) == (interop_key, CONTEXT, 64 * 1024)
    assert len(ciphertext) == header.length + len(plaintext) + 16 * (len(plaintext) // (64 * 1024) + 1)
    out = io.BytesIO()
    assert client.decrypt_stream(io.BytesIO(ciphertext), out, context=CONTEXT) == len(plaintext)
    assert out.getvalue() == plaintext
    assert client.decrypt(ciphertext, context=CONTEXT) == plaintext


def test_each_sdk_refuses_the_others_ciphertext_under_another_context(node_sdk, server, client, interop_key):
    from_python = client.encrypt(b"x", key_id=interop_key, context=CONTEXT)
    done = subprocess.run(
        [node_sdk.node, str(CLI), "decrypt", "--target", server.target, "-c", "tenant=other"],
        input=from_python,
        env=_node_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and b"EncryptionContextMismatch" in done.stderr, _show(done)
    assert done.stdout == b""
    from_node = node_encrypt_stream(node_sdk, server.target, interop_key, b"x", 64 * 1024)
    with pytest.raises(kms_client.EncryptionContextMismatch):
        client.decrypt(from_node, context={"tenant": "other"})
