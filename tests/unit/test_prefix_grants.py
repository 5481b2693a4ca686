"""Prefix grants end at a separator: ``tenant-acme-*`` covers tenant acme's keys and never
``tenant-acme2-...``; what a grant covers (resource_covers, decide) and what an admin over a
resource administers (resource_includes) agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.domain.policy import (
    Decision,
    Grant,
    Permission,
    decide,
    resource_covers,
    resource_includes,
    validate_resource,
)
from kms.errors import InvalidArgument

ENCRYPT = frozenset({Permission.ENCRYPT})

key_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
# Separated prefixes short enough that a longer key id always exists beneath them.
separated_prefixes = st.from_regex(r"[A-Za-z0-9_-]{0,62}[-_]", fullmatch=True)
resources = st.one_of(st.just("*"), key_ids, separated_prefixes.map(lambda prefix: prefix + "*"))
# Tenant names follow the naming advice: '-' between levels, '_' only inside a name (a name that
# ended in '_' would make tenant-acme_* a separated prefix of its own, covering tenant-acme_corp).
tenant_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_]{0,14}[A-Za-z0-9])?", fullmatch=True)


def _accepted(resource: str) -> bool:
    try:
        validate_resource(resource)
    except InvalidArgument:
        return False
    return True


# --- what a grant may be made on ----------------------------------------------------------------


@pytest.mark.parametrize("resource", ["*", "orders", "tenant-acme-*", "tenant_acme_*", "tenant-*", "a-"])
def test_all_keys_a_key_id_and_separated_prefixes_are_resources(resource):
    assert validate_resource(resource) == resource


def test_an_unseparated_prefix_is_refused_with_the_separated_form_suggested():
    with pytest.raises(InvalidArgument) as refused:
        validate_resource("tenant-acme*")
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "'tenant-acme-*'" in refused.value.message
    assert "'tenant-acme2'" in refused.value.message


@pytest.mark.parametrize(
    "resource",
    [
        "orders*",
        "a*",
        "tenant-acme*",
        "x" * 64 + "*",
        "",
        "**",
        "*-*",
        "orders-**",
        "bad resource",
        "bad resource-*",
        "é-*",
        "x" * 65 + "-*",
        "tenant-*-*",
    ],
)
def test_everything_else_is_refused(resource):
    with pytest.raises(InvalidArgument):
        validate_resource(resource)


# --- what a grant covers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "key_id", "covered"),
    [
        ("tenant-acme-*", "tenant-acme-orders", True),
        ("tenant-acme-*", "tenant-acme-", True),
        ("tenant-acme-*", "tenant-acme", False),
        ("tenant-acme-*", "tenant-acme2-orders", False),
        ("tenant-acme-*", "tenant-acme_corp-orders", False),
        ("tenant_*", "tenant_acme", True),
        ("tenant_*", "tenant-acme", False),
        ("*", "anything", True),
        ("orders", "orders", True),
        ("orders", "orders-archive", False),
        # Unseparated prefixes stored before the rule cover nothing, not even their own stem.
        ("tenant-acme*", "tenant-acme2-orders", False),
        ("tenant-acme*", "tenant-acme-orders", False),
        ("tenant-acme*", "tenant-acme*", False),
    ],
)
def test_a_grant_covers_its_key_its_separated_family_or_everything(resource, key_id, covered):
    assert resource_covers(resource, key_id) is covered


@given(separated_prefixes, key_ids)
def test_a_separated_prefix_covers_exactly_the_key_ids_that_start_with_it(prefix, key_id):
    assert resource_covers(prefix + "*", key_id) is key_id.startswith(prefix)


@given(st.from_regex(r"[A-Za-z0-9_-]{1,12}\*?", fullmatch=True), st.from_regex(r"[A-Za-z0-9_-]{0,12}", fullmatch=True))
def test_no_grant_that_can_be_made_covers_a_key_id_beyond_a_separator_boundary(resource, suffix):
    key_id = resource.removesuffix("*") + suffix
    if _accepted(resource) and resource_covers(resource, key_id) and key_id != resource:
        stem = resource.removesuffix("*")
        assert resource.endswith("*") and stem[-1] in "-_" and key_id.startswith(stem)


@given(tenant_names, st.from_regex(r"[A-Za-z0-9_]{1,16}", fullmatch=True), key_ids)
def test_one_tenants_grant_never_reaches_a_tenant_whose_name_extends_it(tenant, extra, rest):
    """tenant-acme-* and tenant-acme2-...: whichever spelling of a prefix grant is accepted."""
    other_tenant = tenant + extra
    for resource in (f"tenant-{tenant}*", f"tenant-{tenant}-*"):
        if _accepted(resource):
            assert not resource_covers(resource, f"tenant-{other_tenant}-{rest}"[:64])
            assert not resource_covers(resource, f"tenant-{other_tenant}")


def test_decide_allows_through_a_separated_prefix_only_within_its_family():
    grants = [Grant("spiffe://kms.dev/acme", "tenant-acme-*", ENCRYPT)]
    assert decide(grants, Permission.ENCRYPT, "tenant-acme-orders", None) == Decision(True)
    assert decide(grants, Permission.ENCRYPT, "tenant-acme2-orders", None) == Decision(False)
    assert decide(grants, Permission.DECRYPT, "tenant-acme-orders", None) == Decision(False)


def test_a_stored_unseparated_prefix_grant_fails_closed():
    grants = [Grant("spiffe://kms.dev/acme", "tenant-acme*", ENCRYPT, {"tenant": "acme"})]
    for key_id in ("tenant-acme-orders", "tenant-acme2-orders", "tenant-acme"):
        assert decide(grants, Permission.ENCRYPT, key_id, {"tenant": "acme"}) == Decision(False)
        assert decide(grants, Permission.ENCRYPT, key_id, {}) == Decision(False, context_mismatch=False)


# --- who administers which grants ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("outer", "inner", "included"),
    [
        ("*", "*", True),
        ("*", "tenant-acme-*", True),
        ("tenant-*", "tenant-acme-*", True),
        ("tenant-*", "tenant-acme", True),
        ("tenant-*", "tenant-", True),
        ("tenant-acme-*", "tenant-acme-*", True),
        ("tenant-acme-*", "tenant-*", False),
        ("tenant-acme-*", "tenant-acme", False),
        ("tenant-acme-*", "tenant-acme2-orders", False),
        ("tenant-acme-*", "*", False),
        ("orders", "orders", True),
        ("orders", "orders-*", False),
        ("orders-", "orders-*", False),
        # A stored unseparated prefix: managed only by an admin over every key id it claims...
        ("*", "tenant-acme*", True),
        ("tenant-*", "tenant-acme*", True),
        ("tenant-acme-*", "tenant-acme*", False),
        # ...and, as it covers nothing, it administers nothing, not even itself.
        ("tenant-acme*", "tenant-acme*", False),
        ("tenant-acme*", "tenant-acme2-orders", False),
    ],
)
def test_an_admin_over_a_resource_administers_exactly_the_grants_within_it(outer, inner, included):
    assert resource_includes(outer, inner) is included


@given(resources, resources, st.data())
def test_includes_holds_exactly_when_every_key_the_inner_grant_covers_the_outer_covers(outer, inner, data):
    stem = inner.removesuffix("*")
    suffix = data.draw(st.from_regex(r"[A-Za-z0-9_-]{0,8}", fullmatch=True))
    candidates = [stem + suffix, stem + "x", stem, "a", "b", data.draw(key_ids)]
    witnesses = [k for k in candidates if 1 <= len(k) <= 64 and resource_covers(inner, k)]
    escapes = [k for k in witnesses if not resource_covers(outer, k)]
    if resource_includes(outer, inner):
        assert escapes == []
    else:
        assert escapes, f"{outer!r} covers every witness of {inner!r} yet does not include it"
