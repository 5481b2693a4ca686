"""Per-identity rate limits: bursts pass, sustained excess is throttled with retry information,
other identities are unaffected, and the SDK waits as told."""

from __future__ import annotations

import grpc
import pytest

import kms_client
from tests.support.fixtures import APP, _running


@pytest.fixture(params=["0.1:10"])
def limited(request, mtls_settings):
    """Bursts of 10; at 0.1/s no token comes back during a test, so counts are exact."""
    app = _running(mtls_settings.model_copy(update={"quota_encrypt": request.param}))
    yield app
    app.stop(grace=1)


@pytest.fixture
def clients(limited, connect):
    admin = connect(limited, "admin")
    admin.create_key("orders")
    for identity in (APP, "spiffe://kms.dev/other"):
        admin.grant_permissions(identity, "orders", ["encrypt"])
    return connect(limited, "app"), connect(limited, "other")


def test_a_burst_passes_then_excess_is_refused_with_retry_information(clients):
    app, other = clients
    for _ in range(10):
        app.generate_data_key("orders", {})
    with pytest.raises(kms_client.ResourceExhausted) as refused:
        app.generate_data_key("orders", {})
    assert 9 < refused.value.retry_after <= 10  # one token at 0.1/s
    assert "rate limit for encrypt exceeded" in refused.value.message
    # Another identity has its own bucket.
    for _ in range(10):
        other.generate_data_key("orders", {})


def test_batch_items_count_one_each(clients):
    app, _ = clients
    results = app.generate_data_keys([("orders", {})] * 15)
    refused = [r for r in results if isinstance(r, kms_client.ResourceExhausted)]
    assert (len(results) - len(refused), len(refused)) == (10, 5)


@pytest.mark.parametrize("limited", ["50:5"], indirect=True)
def test_the_sdk_backs_off_as_told_and_gets_through(limited, dev_certs, clients):
    credentials = kms_client.tls_credentials(str(dev_certs / "ca.crt"), str(dev_certs / "app.crt"), str(dev_certs / "app.key"))
    calls = []

    class Count(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            calls.append(details.method)
            return continuation(details, request)

    channel = grpc.intercept_channel(grpc.secure_channel(limited.target, credentials), Count())
    with kms_client.KmsClient(channel=channel, retry=kms_client.RetryPolicy(max_attempts=50), timeout=60) as patient:
        for _ in range(30):
            patient.generate_data_key("orders", {})
    channel.close()
    assert len(calls) > 30  # some calls were refused and retried, none failed
