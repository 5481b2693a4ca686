"""Who may do what, over mutual TLS: default deny, every RPC against its permission, prefix and
group grants, encryption-context constraints, and a change reaching another replica in time."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

import kms_client
from tests.support.fixtures import ADMIN, APP

PERMISSIONS = ["admin", "encrypt", "decrypt", "rewrap", "rotate", "audit-read"]
CONTEXT = {"tenant": "acme"}


@pytest.fixture
def world(mtls_server, connect):
    """An admin with keys and wrapped keys; an application identity with no grants yet."""
    admin = connect(mtls_server, "admin")
    for key_id in ("orders", "orders-archive"):
        admin.create_key(key_id)
    admin.rotate_key("orders")
    admin.rotate_key("orders")
    wrapped = admin.generate_data_key("orders", CONTEXT).wrapped_key
    return admin, connect(mtls_server, "app"), wrapped


# RPC -> (permission it needs, what the application does)
ACTIONS = {
    "CreateKey": ("admin", lambda c, w: c.create_key("orders-new")),
    "UpdateKey": ("admin", lambda c, w: c.update_key("orders", description="d")),
    "DisableKeyVersion": ("admin", lambda c, w: c.disable_key_version("orders", 1)),
    "EnableKeyVersion": ("admin", lambda c, w: c.enable_key_version("orders", 1)),
    "ScheduleKeyVersionDestruction": (
        "admin",
        lambda c, w: c.schedule_key_version_destruction("orders", 1, pending_window=timedelta(days=2)),
    ),
    "CancelKeyVersionDestruction": ("admin", lambda c, w: c.cancel_key_version_destruction("orders", 1)),
    "RetireKeyVersion": (
        "admin",
        lambda c, w: c.retire_key_version("orders", 2, min_idle=timedelta(0), pending_window=timedelta(days=2)),
    ),
    "RotateKey": ("rotate", lambda c, w: c.rotate_key("orders")),
    "GenerateDataKey": ("encrypt", lambda c, w: c.generate_data_key("orders", CONTEXT)),
    "GenerateDataKeyWithoutPlaintext": (
        "encrypt",
        lambda c, w: c.generate_data_key_without_plaintext("orders", CONTEXT),
    ),
    "BatchGenerateDataKey": ("encrypt", lambda c, w: _item(c.generate_data_keys([("orders", CONTEXT)]))),
    "Decrypt": ("decrypt", lambda c, w: c.decrypt_data_key(w, CONTEXT)),
    "BatchDecrypt": ("decrypt", lambda c, w: _item(c.decrypt_data_keys([(w, CONTEXT)]))),
    "ReWrap": ("rewrap", lambda c, w: c.rewrap_data_key(w, CONTEXT)),
    "BatchReWrap": ("rewrap", lambda c, w: _item(c.rewrap_data_keys([(w, CONTEXT)]))),
    "StreamReWrap": ("rewrap", lambda c, w: _item(list(c.stream_rewrap([(w, CONTEXT)])))),
    "ListAuditEvents": ("audit-read", lambda c, w: list(c.audit_events())),
    "VerifyAuditLog": ("audit-read", lambda c, w: c.verify_audit_log()),
    "GrantPermissions": ("admin", lambda c, w: c.grant_permissions("spiffe://kms.dev/x", "orders", ["decrypt"])),
    "ListGrants": ("admin", lambda c, w: c.list_grants(resource="orders")),
}
# Audit and group administration are about everything, so they need their permission on "*".
GLOBAL = {"ListAuditEvents", "VerifyAuditLog"}
# What the admin does first, so that the action has something to change.
PREPARE = {
    "EnableKeyVersion": lambda admin: admin.disable_key_version("orders", 1),
    "CancelKeyVersionDestruction": lambda admin: admin.schedule_key_version_destruction(
        "orders", 1, pending_window=timedelta(days=2)
    ),
}


def _item(results: list) -> object:
    """Batch and stream items fail on their own: surface an item's error as the call's."""
    if isinstance(results[0], Exception):
        raise results[0]
    return results[0]


@pytest.mark.parametrize("rpc", sorted(ACTIONS))
def test_every_rpc_is_denied_without_its_permission_and_allowed_with_it(world, rpc):
    admin, app, wrapped = world
    needed, action = ACTIONS[rpc]
    PREPARE.get(rpc, lambda admin: None)(admin)
    resources = ["*"] if rpc in GLOBAL else ["orders", "orders-*"]  # orders, orders-new, orders-archive
    others = [p for p in PERMISSIONS if p != needed]
    for resource in resources:
        admin.grant_permissions(APP, resource, others)
    with pytest.raises(kms_client.PermissionDenied) as denied:
        action(app, wrapped)
    assert f"lacks the {needed} permission" in denied.value.message
    for resource in resources:
        admin.grant_permissions(APP, resource, [needed])
    action(app, wrapped)  # allowed now (and it worked)


def test_reading_a_key_needs_some_permission_on_it_and_listing_shows_only_those(world):
    admin, app, _ = world
    with pytest.raises(kms_client.PermissionDenied, match="holds no grant"):
        app.list_keys()  # an identity without any grant may do nothing at all
    admin.grant_permissions(APP, "orders-archive", ["rotate"])
    with pytest.raises(kms_client.PermissionDenied):
        app.get_key("orders")
    assert [k.key_id for k in app.iter_keys()] == ["orders-archive"]
    admin.grant_permissions(APP, "orders", ["decrypt"])
    assert app.get_key("orders").key_id == "orders"
    assert [k.key_id for k in app.iter_keys()] == ["orders", "orders-archive"]


def test_a_grant_held_to_a_context_shows_no_key_metadata(world):
    """A tenant constrained to its own context may use keys under that context, but must not
    list other tenants' keys nor read their usage."""
    admin, app, _ = world
    admin.grant_permissions(APP, "*", ["encrypt", "decrypt"], encryption_context_equals=CONTEXT)
    assert app.generate_data_key("orders", CONTEXT).key_id == "orders"
    assert [k.key_id for k in app.iter_keys()] == []
    for key_id in ("orders", "orders-archive"):
        with pytest.raises(kms_client.PermissionDenied):
            app.get_key(key_id)


def test_a_denial_never_says_whether_the_key_exists(world):
    _, app, wrapped = world
    messages = []
    for key_id in ("orders", "no-such-key"):
        with pytest.raises(kms_client.PermissionDenied) as denied:
            app.get_key(key_id)
        messages.append(denied.value.message.replace(key_id, "K"))
    assert messages[0] == messages[1]
    forged = wrapped[:1] + b"\x0bno-such-key" + wrapped[8:]
    with pytest.raises(kms_client.PermissionDenied):
        app.decrypt_data_key(forged, CONTEXT)


def test_prefix_grants_cover_a_family_of_keys_and_nothing_else(world):
    admin, app, _ = world
    for key_id in ("tenant-a", "tenant-b", "tenantx"):
        admin.create_key(key_id)
    admin.grant_permissions(APP, "tenant-*", ["encrypt"])
    assert app.generate_data_key("tenant-a", {}).key_id == "tenant-a"
    assert app.generate_data_key("tenant-b", {}).key_id == "tenant-b"
    for outside in ("tenantx", "orders"):
        with pytest.raises(kms_client.PermissionDenied):
            app.generate_data_key(outside, {})


def test_context_constrained_grants_hold_a_caller_to_its_tenant(world):
    admin, app, _ = world
    admin.grant_permissions(APP, "orders", ["encrypt", "decrypt"], encryption_context_equals={"tenant": "acme"})
    mine = app.generate_data_key("orders", {"tenant": "acme", "table": "invoices"})
    assert app.decrypt_data_key(mine.wrapped_key, {"tenant": "acme", "table": "invoices"}).plaintext == mine.plaintext
    for context in ({"tenant": "globex"}, {}, {"Tenant": "acme"}):
        with pytest.raises(kms_client.PermissionDenied, match="for this encryption context"):
            app.generate_data_key("orders", context)


def test_group_grants_reach_members_and_stop_when_they_leave(world):
    admin, app, _ = world
    admin.grant_permissions("group:payments", "orders", ["encrypt"])
    with pytest.raises(kms_client.PermissionDenied):
        app.generate_data_key("orders", CONTEXT)
    assert admin.add_group_member("payments", APP) is True
    assert app.generate_data_key("orders", CONTEXT).key_id == "orders"
    assert admin.list_group_members("payments") == [("payments", APP)]
    admin.remove_group_member("payments", APP)
    with pytest.raises(kms_client.PermissionDenied):
        app.generate_data_key("orders", CONTEXT)


def test_revoking_takes_the_permission_away(world):
    admin, app, _ = world
    grant = admin.grant_permissions(APP, "orders", ["encrypt"])
    assert app.generate_data_key("orders", CONTEXT)
    assert [g.grant_id for g in admin.list_grants(principal=APP)] == [grant.grant_id]
    admin.revoke_grant(grant.grant_id)
    with pytest.raises(kms_client.PermissionDenied):
        app.generate_data_key("orders", CONTEXT)
    with pytest.raises(kms_client.GrantNotFound):
        admin.revoke_grant(grant.grant_id)
    with pytest.raises(kms_client.PermissionDenied):  # whether a grant exists is an admin's business
        app.revoke_grant(grant.grant_id)


def test_delegated_admins_manage_grants_only_within_their_resource(world, connect, mtls_server):
    admin, app, _ = world
    admin.grant_permissions(APP, "orders-*", ["admin"])
    app.grant_permissions("spiffe://kms.dev/other", "orders-archive", ["decrypt"])
    with pytest.raises(kms_client.PermissionDenied):
        app.grant_permissions("spiffe://kms.dev/other", "*", ["decrypt"])
    with pytest.raises(kms_client.PermissionDenied):
        app.add_group_member("payments", "spiffe://kms.dev/other")
    assert {g.resource for g in app.list_grants()} == {"orders-*", "orders-archive"}


def test_invalid_grants_are_refused(world):
    admin, _, _ = world
    for principal, resource, permissions in (
        (APP, "orders", ["fly"]),
        (APP, "bad resource", ["encrypt"]),
        ("has space", "orders", ["encrypt"]),
        (APP, "orders", []),
        ("group:bad name", "orders", ["encrypt"]),
        (APP, "orders*", ["encrypt"]),
    ):
        with pytest.raises(kms_client.InvalidArgument):
            admin.grant_permissions(principal, resource, permissions)


def test_a_caller_without_a_certificate_is_unauthenticated(hsm_token, tmp_path, sqlite_url, label_prefix, dev_certs):
    """TLS without client verification: callers are anonymous, and anonymous may do nothing."""
    from tests.support.fixtures import _running, make_settings

    app = _running(
        make_settings(
            hsm_token,
            tmp_path,
            sqlite_url,
            label_prefix,
            tls_cert=dev_certs / "server.crt",
            tls_key=dev_certs / "server.key",
            bootstrap_admin=ADMIN,
        )
    )
    try:
        credentials = kms_client.tls_credentials(str(dev_certs / "ca.crt"))
        with (
            kms_client.KmsClient(app.target, credentials=credentials, timeout=10) as anonymous,
            pytest.raises(kms_client.Unauthenticated),
        ):
            anonymous.generate_data_key("orders", {})
    finally:
        app.stop(grace=1)


def test_a_policy_change_reaches_another_replica_within_a_second_of_its_poll(
    hsm_token, tmp_path, postgres_url, label_prefix, dev_certs, connect
):
    """Two replicas on one PostgreSQL database. A replica polls for policy changes every
    KMS_POLICY_POLL_INTERVAL (250 ms), and the service promises that a change made on any
    replica applies on every other within a second of that: a grant and its revocation made on
    the first replica are honoured by the second by then."""
    from tests.support.fixtures import _running, make_settings, own_journal

    settings = make_settings(
        hsm_token,
        tmp_path,
        postgres_url,
        label_prefix,
        tls_cert=dev_certs / "server.crt",
        tls_key=dev_certs / "server.key",
        client_ca=dev_certs / "ca.crt",
        bootstrap_admin=ADMIN,
    )
    promised = settings.policy_poll_interval.total_seconds() + 1.0
    first = _running(settings)
    second = _running(own_journal(settings, "second"))
    try:
        admin, app_on_second = connect(first, "admin"), connect(second, "app")
        admin.create_key("orders")
        with pytest.raises(kms_client.PermissionDenied):
            app_on_second.generate_data_key("orders", CONTEXT)
        grant = admin.grant_permissions(APP, "orders", ["encrypt"])
        granted = _seconds_until(lambda: _allowed(app_on_second), promised)
        admin.revoke_grant(grant.grant_id)
        revoked = _seconds_until(lambda: not _allowed(app_on_second), promised)
    finally:
        first.stop(grace=1)
        second.stop(grace=1)
    print(f"grant honoured after {granted:.3f}s, revocation after {revoked:.3f}s (promised {promised:.2f}s)")


def _allowed(app) -> bool:
    try:
        app.generate_data_key("orders", CONTEXT)
    except kms_client.PermissionDenied:
        return False
    return True


def _seconds_until(condition, promised: float) -> float:
    """How long after now ``condition`` first holds; fails once ``promised`` seconds have passed."""
    since = time.monotonic()
    while not condition():
        if time.monotonic() - since > promised:
            pytest.fail(f"not seen on the other replica {promised:.2f}s after the change")
        time.sleep(0.02)
    return time.monotonic() - since
