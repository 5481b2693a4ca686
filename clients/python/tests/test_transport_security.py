"""Plaintext only to this host unless the caller asks for it by name, in the SDK and the CLI."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from click.testing import CliRunner

from kms.cli.main import cli
from kms_client import KmsClient, ResourceExhausted, tls_credentials
from kms_client._retry import NO_RETRY
from kms_client.client import is_loopback_target

LOOPBACK = [
    "127.0.0.1:50051",
    "127.200.0.9:1",
    "localhost:50051",
    "LocalHost",
    "[::1]:50051",
    "[::1]",
    "::1",
    "[::ffff:127.0.0.1]:1",
    "dns:localhost:1",
    "dns:///localhost:50051",
    "dns:///127.0.0.1:1",
    "dns:///[::1]:1",
    "dns://10.0.0.53/127.0.0.1:1",
    "ipv4:127.0.0.1:1,127.0.0.2:2",
    "ipv4:127.0.0.1",
    "ipv6:::1",
    "ipv6:[::1]:1,[::1]:2",
    "unix:/run/kms.sock",
    "unix:///run/kms.sock",
    "unix:relative.sock",
    "unix-abstract:kms",
]
REMOTE = [
    "10.1.2.3:50051",
    "kms.example.com:443",
    "[2001:db8::1]:443",
    "0.0.0.0:50051",
    "[::]:50051",
    "localhost.:1",  # a fully qualified name may go to a DNS server, which can answer anything
    "dns://10.0.0.53/localhost:1",  # resolved by that server
    "dns:///10.1.2.3:1",
    "ipv4:127.0.0.1:1,10.1.2.3:1",
    "ipv4:[::1]:1",
    "ipv6:127.0.0.1:1",
    "vsock:3:50051",
    "xds:///kms",
    "DNS:///localhost:1",
    "dns:///%6cocalhost:1",
    "127.0.0.1:50051@kms.example.com",
    "127.0.0.1:1/x",
    "127.0.0.1:",
    "127.1:1",
    "0127.0.0.1:1",
    "localhost:1:2",
    "[localhost]:1",
    "[::1]x",
    "[::1",
    ":50051",
    "",
    " 127.0.0.1:1",
]


@pytest.mark.parametrize("target", LOOPBACK)
def test_loopback_and_unix_targets_take_plaintext_without_opt_in(target):
    assert is_loopback_target(target)
    KmsClient(target).close()  # channels are lazy: nothing connects


@pytest.mark.parametrize("target", REMOTE)
def test_plaintext_to_any_other_target_is_refused_and_says_what_to_do(target):
    assert not is_loopback_target(target)
    advice = r"not a loopback address.*credentials=tls_credentials\(\.\.\.\).*insecure=True"
    with pytest.raises(ValueError, match=advice):
        KmsClient(target)


def test_insecure_true_allows_plaintext_to_a_remote_target():
    KmsClient("10.1.2.3:50051", insecure=True).close()


def test_tls_needs_no_opt_in_and_contradicts_insecure():
    KmsClient("10.1.2.3:50051", credentials=tls_credentials()).close()
    with pytest.raises(ValueError, match="contradict"):
        KmsClient("10.1.2.3:50051", credentials=tls_credentials(), insecure=True)


def test_a_channel_given_by_the_caller_is_the_callers_business():
    channel = grpc.insecure_channel("10.1.2.3:50051")
    KmsClient(channel=channel).close()
    channel.close()


@pytest.fixture
def dead_proxy(monkeypatch) -> Iterator[str]:
    """An HTTP proxy in the environment whose port refuses connections."""
    with socket.socket() as bound:  # bound, never listening: connecting gets a reset
        bound.bind(("127.0.0.1", 0))
        for name in ("no_grpc_proxy", "no_proxy", "NO_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        proxy = f"http://127.0.0.1:{bound.getsockname()[1]}"
        monkeypatch.setenv("grpc_proxy", proxy)
        yield proxy


def test_plaintext_to_loopback_never_goes_through_a_proxy_from_the_environment(server, dead_proxy):
    with KmsClient(server.target, retry=NO_RETRY, timeout=10) as client:
        assert client.list_keys() == ([], "")


def test_the_callers_channel_options_win_over_the_sdks_defaults(server, client):
    client.create_key("orders", description="x" * 200)
    with (
        KmsClient(server.target, options=[("grpc.max_receive_message_length", 64)], retry=NO_RETRY) as small,
        pytest.raises(ResourceExhausted),
    ):
        small.get_key("orders")


# -- the CLI ---------------------------------------------------------------------------------

CLEAN = dict.fromkeys(
    ("KMS_TARGET", "KMS_INSECURE", "KMS_TIMEOUT", "KMS_CLIENT_CA", "KMS_CLIENT_CERT", "KMS_CLIENT_KEY")
)


def kms(*args: str, **env: str):
    return CliRunner().invoke(cli, list(args), env={**CLEAN, **env})


def test_the_cli_refuses_plaintext_to_a_remote_target_and_says_why():
    result = kms("keys", "get", "x", "--target", "10.1.2.3:1")
    assert result.exit_code == 2
    assert "refusing plaintext to 10.1.2.3:1: it is not a loopback address" in result.output
    assert "--tls-ca" in result.output and "--insecure" in result.output


@pytest.mark.parametrize("how", [("--insecure",), ()])
def test_the_cli_tries_a_remote_target_when_told_it_may(how):
    start = time.monotonic()
    result = kms(
        "keys", "get", "x", "--target", "10.1.2.3:1", "--timeout", "1", *how, **({} if how else {"KMS_INSECURE": "1"})
    )
    assert time.monotonic() - start < 15
    assert result.exit_code == 1, result.output
    assert "warning: plaintext to 10.1.2.3:1 (--insecure)" in result.output
    assert "error: " in result.output and "not a loopback address" not in result.output


def test_kms_insecure_false_keeps_the_refusal():
    assert kms("keys", "get", "x", "--target", "10.1.2.3:1", KMS_INSECURE="0").exit_code == 2


def test_the_cli_refuses_a_client_key_without_its_certificate(tmp_path):
    key = tmp_path / "client.key"
    key.write_text("not read")
    result = kms("keys", "get", "x", "--target", "10.1.2.3:1", "--tls-key", str(key))
    assert result.exit_code == 2
    assert "a client certificate needs its private key" in result.output


def test_the_cli_refuses_insecure_together_with_tls(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("not read")
    result = kms("keys", "list", "--target", "10.1.2.3:1", "--tls-ca", str(ca), "--insecure")
    assert result.exit_code == 2 and "--insecure contradicts" in result.output


def test_the_cli_speaks_plaintext_to_loopback_without_opt_in(server):
    result = kms("keys", "list", "--json", "--target", server.target)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
