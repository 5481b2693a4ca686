"""Rate limits and the failure budget as the Authorizer applies them, on a hand-moved clock
(QuotaBook's ``monotonic``): counts are exact whatever the machine's speed."""

from __future__ import annotations

import pytest

from kms.domain.policy import Grant, Permission
from kms.domain.quota import Limit
from kms.errors import PermissionDenied, RateLimited, Unauthenticated
from kms.service.authz import Authorizer, QuotaBook
from kms.service.calls import Call

APP, OTHER, ADMIN = "spiffe://kms.dev/app", "spiffe://kms.dev/other", "spiffe://kms.dev/admin"
ENCRYPT, DECRYPT = Permission.ENCRYPT, Permission.DECRYPT


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Policies:
    """The grants in force, as the Authorizer asks for them (PolicyCache), all of them believed."""

    def __init__(self, *grants: Grant) -> None:
        self._grants = grants

    def check_trusted(self) -> None:
        pass

    def grants(self, identity: str, groups=()) -> list[Grant]:
        return [grant for grant in self._grants if grant.principal == identity]


def may(identity: str, *permissions: Permission, resource: str = "orders") -> Grant:
    return Grant(identity, resource, frozenset(permissions))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def authorizer(clock: Clock, limits: dict, failures: Limit | None = None, superusers=()) -> Authorizer:
    policies = Policies(may(APP, ENCRYPT, DECRYPT), may(OTHER, ENCRYPT))
    return Authorizer(policies, QuotaBook(limits, failures, monotonic=clock), superusers)


def encrypt(authz: Authorizer, identity: str = APP) -> None:
    authz.require(Call(identity=identity), ENCRYPT, "orders", {})


def test_a_burst_passes_then_excess_is_refused_with_the_exact_wait(clock):
    authz = authorizer(clock, {ENCRYPT: Limit(0.1, 10)})
    for _ in range(10):
        encrypt(authz)
    with pytest.raises(RateLimited) as refused:
        encrypt(authz)
    assert refused.value.retry_after == pytest.approx(10.0)  # one token at 0.1/s
    assert refused.value.message == "rate limit for encrypt exceeded; retry in 10.000s"


def test_each_identity_has_its_own_bucket(clock):
    authz = authorizer(clock, {ENCRYPT: Limit(0.1, 10)})
    for _ in range(10):
        encrypt(authz, APP)
    for _ in range(10):
        encrypt(authz, OTHER)
    for identity in (APP, OTHER):
        with pytest.raises(RateLimited):
            encrypt(authz, identity)


def test_each_permission_has_its_own_bucket_and_one_without_a_limit_has_none(clock):
    authz = authorizer(clock, {ENCRYPT: Limit(1, 2)})
    encrypt(authz)
    encrypt(authz)
    with pytest.raises(RateLimited):
        encrypt(authz)
    for _ in range(1000):
        authz.require(Call(identity=APP), DECRYPT, "orders", {})


def test_tokens_come_back_at_the_rate_and_no_sooner(clock):
    authz = authorizer(clock, {ENCRYPT: Limit(0.5, 2)})
    encrypt(authz)
    encrypt(authz)
    clock.now += 1.5
    with pytest.raises(RateLimited) as refused:
        encrypt(authz)
    assert refused.value.retry_after == pytest.approx(0.5)  # 0.75 of a token back, 0.25 to go
    clock.now += 0.5
    encrypt(authz)
    with pytest.raises(RateLimited):
        encrypt(authz)


def test_every_item_of_a_batch_counts_as_one_call(clock):
    """The data key service asks the Authorizer once per item (with the item's own call)."""
    authz = authorizer(clock, {ENCRYPT: Limit(0.1, 10)})
    batch = Call(identity=APP)
    outcomes = []
    for _ in range(15):
        try:
            authz.require(batch.for_item(), ENCRYPT, "orders", {})
            outcomes.append("ok")
        except RateLimited:
            outcomes.append("limited")
    assert outcomes == ["ok"] * 10 + ["limited"] * 5


def test_a_denied_call_spends_no_token(clock):
    authz = authorizer(clock, {ENCRYPT: Limit(0.1, 1)})
    for _ in range(5):
        with pytest.raises(PermissionDenied):
            authz.require(Call(identity=APP), ENCRYPT, "billing", {})
    encrypt(authz)


def test_the_superuser_needs_no_grant_but_is_limited_like_anyone(clock):
    authz = authorizer(clock, {ENCRYPT: Limit(0.1, 3)}, superusers=[ADMIN])
    for _ in range(3):
        encrypt(authz, ADMIN)
    with pytest.raises(RateLimited):
        encrypt(authz, ADMIN)


def test_spent_failures_close_the_door_until_the_budget_refills(clock):
    authz = authorizer(clock, {}, failures=Limit(2, 5))
    call = Call(identity=APP)
    authz.admit(call)
    authz.charge_failures(call, 4)
    authz.admit(call)  # one failure left in the budget
    authz.charge_failures(call, 1)
    with pytest.raises(RateLimited) as refused:
        authz.admit(call)
    assert refused.value.retry_after == pytest.approx(0.5)
    assert refused.value.message == "rate limit for failed calls exceeded; retry in 0.500s"
    authz.admit(Call(identity=OTHER))  # another identity's budget is its own
    clock.now += 0.5
    authz.admit(call)


def test_a_flood_of_failures_is_paid_off_in_bounded_time(clock):
    authz = authorizer(clock, {}, failures=Limit(2, 5))
    call = Call(identity=APP)
    authz.charge_failures(call, 1_000_000)
    with pytest.raises(RateLimited) as refused:
        authz.admit(call)
    assert refused.value.retry_after == pytest.approx(3.0)  # from -5 to 1 token at 2/s: debt stops at -burst


def test_the_superuser_and_the_service_itself_have_no_failure_budget(clock):
    authz = authorizer(clock, {}, failures=Limit(1, 1), superusers=[ADMIN])
    for identity in (ADMIN, "kms:scheduler"):
        call = Call(identity=identity)
        authz.charge_failures(call, 100)
        authz.admit(call)
    authz.charge_failures(Call(identity="kms:scheduler"), 100)
    authz.admit(Call(identity="kms:scheduler"))


def test_without_any_grant_the_door_is_shut(clock):
    authz = authorizer(clock, {})
    with pytest.raises(PermissionDenied, match="holds no grant"):
        authz.admit(Call(identity="spiffe://kms.dev/stranger"))
    with pytest.raises(Unauthenticated):
        authz.admit(Call(identity="anonymous"))


def test_a_call_of_many_values_takes_one_token_each_and_one_larger_than_the_burst_is_not_starved(clock):
    pseudonymizer = Authorizer(
        Policies(may(APP, Permission.PSEUDONYMIZE)),
        QuotaBook({Permission.PSEUDONYMIZE: Limit(rate=100, burst=100)}, monotonic=clock),
        (),
    )
    pseudonymizer.require(Call(identity=APP), Permission.PSEUDONYMIZE, "orders", uses=60)
    with pytest.raises(RateLimited):
        pseudonymizer.require(Call(identity=APP), Permission.PSEUDONYMIZE, "orders", uses=60)  # 40 left
    clock.now += 0.6  # 100 again
    pseudonymizer.require(Call(identity=APP), Permission.PSEUDONYMIZE, "orders", uses=1000)  # a full bucket
    with pytest.raises(RateLimited) as refused:
        pseudonymizer.require(Call(identity=APP), Permission.PSEUDONYMIZE, "orders")
    assert refused.value.retry_after == pytest.approx(1.01)  # in debt by the burst: -100 + 1 needed
