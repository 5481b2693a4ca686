"""Per-identity rate limits over the wire: a refusal arrives as RateLimited with its retry-after,
and the SDK waits as told. The server's buckets run on the test's clock (kms.app builds its
QuotaBook with the ``monotonic`` given here), so counts and waits are exact whatever the
machine's speed; the rules themselves are tested in tests/unit/test_quotas.py."""

from __future__ import annotations

import functools

import pytest

import kms.app
import kms_client
from kms.service.authz import QuotaBook
from tests.support.fixtures import APP, _running


class QuotaClock:
    """The server's quota clock: moves only when the test (or the SDK's sleep) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def quota_clock() -> QuotaClock:
    return QuotaClock()


@pytest.fixture(params=["0.1:10"])
def limited(request, mtls_settings, monkeypatch, quota_clock):
    """Bursts of 10, one token back every 10 s of the quota clock."""
    monkeypatch.setattr(kms.app, "QuotaBook", functools.partial(QuotaBook, monotonic=quota_clock))
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


def test_a_burst_passes_then_excess_is_refused_with_retry_information(clients, quota_clock):
    app, other = clients
    for _ in range(10):
        app.generate_data_key("orders", {})
    with pytest.raises(kms_client.RateLimited) as refused:
        app.generate_data_key("orders", {})
    assert refused.value.retry_after == 10.0  # retry-after-ms: one token at 0.1/s
    assert refused.value.message == "rate limit for encrypt exceeded; retry in 10.000s"
    for _ in range(10):  # another identity has its own bucket
        other.generate_data_key("orders", {})
    quota_clock.advance(10)
    app.generate_data_key("orders", {})
    with pytest.raises(kms_client.RateLimited):
        app.generate_data_key("orders", {})


def test_batch_items_count_one_each(clients):
    app, _ = clients
    results = app.generate_data_keys([("orders", {})] * 15)
    assert [type(r).__name__ for r in results] == ["DataKey"] * 10 + ["RateLimited"] * 5


class SleepingOnTheQuotaClock:
    """The SDK's RetryPolicy, whose waits move the server's quota clock instead of taking real
    time; remembers each refusal's retry-after and each wait."""

    def __init__(self, clock: QuotaClock) -> None:
        self._clock = clock
        self._policy = kms_client.RetryPolicy(max_attempts=50)
        self.refusals: list[float] = []
        self.waits: list[float] = []

    def run(self, attempt, deadline):
        def observed(remaining):
            try:
                return attempt(remaining)
            except kms_client.RateLimited as refused:
                self.refusals.append(refused.retry_after)
                raise

        def sleep(seconds: float) -> None:
            self.waits.append(seconds)
            self._clock.advance(seconds)

        return self._policy.run(observed, deadline, sleep)


@pytest.mark.parametrize("limited", ["50:5"], indirect=True)
def test_the_sdk_backs_off_as_told_and_gets_through(limited, dev_certs, clients, quota_clock):
    credentials = kms_client.tls_credentials(
        str(dev_certs / "ca.crt"), str(dev_certs / "app.crt"), str(dev_certs / "app.key")
    )
    retry = SleepingOnTheQuotaClock(quota_clock)
    with kms_client.KmsClient(limited.target, credentials=credentials, retry=retry, timeout=60) as patient:
        issued = [patient.generate_data_key("orders", {}) for _ in range(30)]
    assert len(issued) == 30
    assert retry.refusals[0] == pytest.approx(0.02, abs=0.001)  # the sixth call: the burst was 5, at 50/s
    assert len(retry.waits) == len(retry.refusals)  # every refusal was retried, none given up
    assert all(wait >= told for wait, told in zip(retry.waits, retry.refusals, strict=True))
