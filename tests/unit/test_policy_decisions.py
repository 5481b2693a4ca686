"""kms.domain.policy.decide: default deny, a grant allows its permissions on the keys its resource
covers, context constraints must all be met exactly, and a denial says when only a constraint
stood in the way."""

from __future__ import annotations

import pytest

from kms.domain.policy import Decision, Grant, Permission, decide

ENCRYPT, DECRYPT, ADMIN = Permission.ENCRYPT, Permission.DECRYPT, Permission.ADMIN
ACME = {"tenant": "acme"}


def grant(resource: str, *permissions: Permission, context: dict[str, str] | None = None) -> Grant:
    return Grant("spiffe://kms.dev/app", resource, frozenset(permissions or (ENCRYPT,)), context or {})


def test_no_grant_denies():
    assert decide([], ENCRYPT, "orders", {}) == Decision(False, context_mismatch=False)


@pytest.mark.parametrize("resource", ["orders", "*", "ord-*", "ord_*"])
def test_a_grant_allows_its_permission_on_a_key_its_resource_covers(resource):
    key_id = "orders" if resource in ("orders", "*") else resource[:-1] + "x"
    assert decide([grant(resource)], ENCRYPT, key_id, None) == Decision(True)


@pytest.mark.parametrize(
    ("resource", "key_id"),
    [
        ("orders", "orders2"),
        ("orders", "Orders"),
        ("ord-*", "ord"),
        ("ord-*", "ord_x"),
        ("ord-*", "ordx"),
        ("ord*", "ordx"),
    ],
)
def test_a_grant_does_not_reach_keys_outside_its_resource(resource, key_id):
    assert decide([grant(resource)], ENCRYPT, key_id, {}) == Decision(False)


def test_a_grant_gives_only_its_own_permissions():
    grants = [grant("*", ENCRYPT, DECRYPT)]
    assert decide(grants, DECRYPT, "orders", {}).allowed
    for other in set(Permission) - {ENCRYPT, DECRYPT}:
        assert decide(grants, other, "orders", {}) == Decision(False)


def test_any_one_grant_that_allows_is_enough_whatever_the_others_say():
    grants = [grant("billing"), grant("orders", DECRYPT), grant("orders", context=ACME), grant("ord-*")]
    assert decide(grants, ENCRYPT, "ord-1", {}) == Decision(True)
    assert decide(list(reversed(grants)), ENCRYPT, "ord-1", {}) == Decision(True)


@pytest.mark.parametrize(
    "context",
    [ACME, {**ACME, "table": "invoices"}, {"table": "invoices", **ACME}],
    ids=["exactly", "with-more-entries", "in-another-order"],
)
def test_a_constrained_grant_allows_a_context_that_carries_every_constrained_entry(context):
    assert decide([grant("orders", context=ACME)], ENCRYPT, "orders", context) == Decision(True)


@pytest.mark.parametrize(
    "context",
    [None, {}, {"tenant": "globex"}, {"Tenant": "acme"}, {"tenant": "acme "}, {"tenant": "ACME"}, {"table": "acme"}],
    ids=[
        "no-context",
        "empty",
        "other-value",
        "other-key-case",
        "trailing-space",
        "value-case",
        "value-under-another-key",
    ],
)
def test_a_constrained_grant_denies_any_other_context_and_says_so(context):
    assert decide([grant("orders", context=ACME)], ENCRYPT, "orders", context) == Decision(False, context_mismatch=True)


def test_every_constrained_entry_must_be_met():
    constrained = grant("orders", context={"tenant": "acme", "region": "eu"})
    assert not decide([constrained], ENCRYPT, "orders", ACME).allowed
    assert decide([constrained], ENCRYPT, "orders", {"tenant": "acme", "region": "eu"}).allowed


@pytest.mark.parametrize(
    ("constrained", "permission", "key_id"),
    [
        (grant("orders", context=ACME), DECRYPT, "orders"),
        (grant("billing", context=ACME), ENCRYPT, "orders"),
        (grant("ord-*", context=ACME), ENCRYPT, "billing"),
    ],
    ids=["other-permission", "other-key", "outside-the-prefix"],
)
def test_the_mismatch_flag_is_only_raised_when_the_constraint_alone_stood_in_the_way(constrained, permission, key_id):
    assert decide([constrained], permission, key_id, {"tenant": "globex"}) == Decision(False, context_mismatch=False)


def test_a_mismatch_among_other_denials_is_still_reported():
    grants = [grant("billing"), grant("orders", ADMIN), grant("orders", context=ACME)]
    assert decide(grants, ENCRYPT, "orders", {"tenant": "globex"}) == Decision(False, context_mismatch=True)


def test_an_unconstrained_grant_allows_whatever_the_context():
    for context in (None, {}, ACME, {"anything": "at all"}):
        assert decide([grant("orders")], ENCRYPT, "orders", context).allowed
