"""An attacker who can write to the metadata database, on SQLite and PostgreSQL.

They can change every row; the HSM-sealed metadata ledger (kms.domain.ledger) and its HSM anchor
must turn each attempt into, at worst, a denial of service: never a grant, never a version back
in use, never a lower floor. Each tampering is reported (log, metric, audit record, health).
A second replica reads the tampered rows afresh, as a replica started after the change would.
"""

from __future__ import annotations

import logging

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

import kms_client
from kms.api.health import DETAIL_PREFIX
from tests.support.fixtures import ADMIN, APP

CONTEXT = {"tenant": "acme"}
PROTECTED = ("keys", "key_versions", "grants", "group_members", "ledger_entries", "ledger_head")


def _sql(app, statement: str, **params) -> None:
    with app.services.engine.begin() as connection:
        connection.execute(text(statement), params)


def _rows(app, table: str) -> list[dict]:
    with app.services.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(text(f"SELECT * FROM {table}"))]


def _insert(app, table: str, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    _sql_many(app, f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})", rows)


def _sql_many(app, statement: str, rows: list[dict]) -> None:
    with app.services.engine.begin() as connection:
        connection.execute(text(statement), rows)


def _health(app, service: str) -> int:
    import grpc

    credentials = grpc.ssl_channel_credentials(
        (app.settings.client_ca).read_bytes(),
        (app.settings.client_ca.parent / "admin.key").read_bytes(),
        (app.settings.client_ca.parent / "admin.crt").read_bytes(),
    )
    with grpc.secure_channel(app.target, credentials) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        )


def _reported(app, kind: str) -> bool:
    """The rejection shows in the audit log (as kms:integrity) and as a health detail."""
    from kms.service.calls import Call

    app.services.audit_log.flush()
    records = app.services.audit.events(Call(identity=ADMIN, method="ListAuditEvents"))
    audited = any(
        r.entry.rpc == "MetadataRejected" and r.entry.identity == "kms:integrity" and r.entry.detail.startswith(kind)
        for r in records
    )
    app.health.run_once()
    unhealthy = _health(app, DETAIL_PREFIX + "metadata") == health_pb2.HealthCheckResponse.NOT_SERVING
    return audited and unhealthy


@pytest.fixture
def world(deployment):
    app, replica, connect = deployment
    admin = connect(app, "admin")
    admin.create_key("orders")
    admin.rotate_key("orders")
    wrapped = admin.generate_data_key("orders", CONTEXT).wrapped_key  # under version 2
    return app, replica, connect, admin, wrapped


def test_an_inserted_grant_grants_nothing_and_is_reported(world, caplog):
    app, replica, connect, admin, wrapped = world
    _sql(
        app,
        "INSERT INTO grants (grant_id, principal, resource, permissions, context_json, created_by, create_time) "
        "VALUES ('forged0000000000000000000000000', :p, '*', 'admin,decrypt,encrypt', '{}', :a, :t)",
        p=APP,
        a=ADMIN,
        t="2026-01-01 00:00:00",
    )
    _sql(app, "UPDATE policy_state SET revision = revision + 1")  # what used to make replicas reload
    admin.grant_permissions("spiffe://kms.dev/other", "orders", ["encrypt"])  # a legitimate change: reload
    second = replica()
    for server in (app, second):
        with pytest.raises(kms_client.PermissionDenied):
            connect(server, "app").decrypt_data_key(wrapped, CONTEXT)
    with caplog.at_level(logging.ERROR):
        assert _reported(second, "grant")
    assert ("grant", "forged0000000000000000000000000") in second.services.integrity.rejected_rows()


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE grants SET permissions = 'decrypt,encrypt' WHERE principal = :p",
        "UPDATE grants SET resource = '*' WHERE principal = :p",
        "UPDATE grants SET context_json = '{}' WHERE principal = :p",
        "UPDATE grants SET principal = :o WHERE principal = :p",
    ],
    ids=["more-permissions", "wider-resource", "constraint-dropped", "other-principal"],
)
def test_a_changed_grant_grants_nothing_not_even_what_it_granted_before(world, change):
    app, replica, connect, admin, wrapped = world
    admin.grant_permissions(APP, "orders", ["encrypt"], encryption_context_equals=CONTEXT)
    _sql(app, change, p=APP, o="spiffe://kms.dev/other")
    second = replica()
    for name in ("app", "other"):
        client = connect(second, name)
        with pytest.raises(kms_client.PermissionDenied):
            client.decrypt_data_key(wrapped, CONTEXT)
        with pytest.raises(kms_client.PermissionDenied):
            client.generate_data_key("orders", CONTEXT)
    assert _reported(second, "grant")


def test_a_revoked_grant_does_not_come_back_when_its_old_row_is_restored(world):
    app, replica, connect, admin, wrapped = world
    grant = admin.grant_permissions(APP, "orders", ["decrypt"])
    assert connect(app, "app").decrypt_data_key(wrapped, CONTEXT).key_id == "orders"
    saved = [row for row in _rows(app, "grants") if row["grant_id"] == grant.grant_id]
    admin.revoke_grant(grant.grant_id)
    _insert(app, "grants", saved)
    admin.grant_permissions("spiffe://kms.dev/other", "orders", ["encrypt"])  # make the first replica reload too
    second = replica()
    for server in (app, second):
        with pytest.raises(kms_client.PermissionDenied):
            connect(server, "app").decrypt_data_key(wrapped, CONTEXT)
    assert _reported(second, "grant")


def test_an_inserted_membership_gives_no_group_grants(world):
    app, replica, connect, admin, wrapped = world
    admin.grant_permissions("group:readers", "orders", ["decrypt"])
    _sql(app, "INSERT INTO group_members (group_name, identity) VALUES ('readers', :i)", i=APP)
    second = replica()
    with pytest.raises(kms_client.PermissionDenied):
        connect(second, "app").decrypt_data_key(wrapped, CONTEXT)
    assert _reported(second, "member")


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE key_versions SET state = 'ENABLED' WHERE key_id = 'orders' AND version = 2",
        "UPDATE keys SET min_decryption_version = 1 WHERE key_id = 'orders'",
        "UPDATE keys SET primary_version = 2 WHERE key_id = 'orders'",
    ],
    ids=["version-re-enabled", "floor-lowered", "primary-moved-back"],
)
def test_a_version_taken_out_of_use_stays_out_whatever_the_row_says(world, change):
    app, replica, connect, admin, wrapped = world
    admin.rotate_key("orders")  # version 3 primary; version 2 wrapped ``wrapped``
    admin.disable_key_version("orders", 2)
    admin.update_key("orders", min_decryption_version=2)
    _sql(app, change)
    second = replica()
    client = connect(second, "admin")
    with pytest.raises((kms_client.FailedPrecondition, kms_client.InvalidCiphertext)):
        client.decrypt_data_key(wrapped, CONTEXT)
    with pytest.raises(kms_client.FailedPrecondition):
        client.generate_data_key("orders", CONTEXT)  # the key's row does not verify: unusable
    assert _reported(second, "key")


def test_an_old_key_row_restored_is_refused(world):
    app, replica, connect, admin, wrapped = world
    admin.rotate_key("orders")
    saved_keys = [r for r in _rows(app, "keys") if r["key_id"] == "orders"]
    saved_versions = [r for r in _rows(app, "key_versions") if r["key_id"] == "orders"]
    admin.disable_key_version("orders", 2)
    _sql(app, "DELETE FROM key_versions WHERE key_id = 'orders'")
    _sql(app, "DELETE FROM keys WHERE key_id = 'orders'")
    _insert(app, "keys", saved_keys)
    _insert(app, "key_versions", saved_versions)
    second = replica()
    with pytest.raises(kms_client.FailedPrecondition):
        connect(second, "admin").decrypt_data_key(wrapped, CONTEXT)
    assert "an older row restored" in second.services.integrity.rejected_rows()[("key", "orders")]


def test_a_version_pointed_at_another_master_key_is_refused(world):
    app, replica, connect, _admin, _wrapped = world
    versions = {r["version"]: r for r in _rows(app, "key_versions") if r["key_id"] == "orders"}
    _sql(app, "UPDATE key_versions SET master_key_id = :m WHERE key_id = 'orders' AND version = 2", m="00" * 16)
    second = replica()
    with pytest.raises(kms_client.FailedPrecondition):
        connect(second, "admin").generate_data_key("orders", CONTEXT)
    assert versions[2]["master_key_id"] != "00" * 16


def test_a_forged_ledger_entry_is_refused_and_nothing_is_believed(world):
    """Extending the chain needs the HSM's seal: an entry appended with a made-up head MAC turns
    the whole ledger untrusted (denial of service), and grants nothing."""
    from kms.domain.ledger import GRANT, Change, entry_hash

    app, replica, connect, _admin, _wrapped = world
    head = _rows(app, "ledger_head")[0]
    forged = Change(GRANT, "forged0000000000000000000000001", 1, "ab" * 32)
    digest = entry_hash(head["seq"] + 1, forged, head["hash"])
    _insert(
        app,
        "ledger_entries",
        [
            {
                "seq": head["seq"] + 1,
                "kind": GRANT,
                "name": forged.name,
                "revision": 1,
                "digest": forged.digest,
                "prev_hash": head["hash"],
                "hash": digest,
            }
        ],
    )
    _sql(app, "UPDATE ledger_head SET seq = :s, hash = :h, mac = :m", s=head["seq"] + 1, h=digest, m="00" * 32)
    second = replica_not_serving(replica)
    assert "not sealed by the HSM" in second.services.integrity.problem
    with pytest.raises(kms_client.Unavailable):
        connect(second, "admin").generate_data_key("orders", CONTEXT)


def test_a_rolled_back_database_is_refused_until_an_operator_accepts_it(world):
    """The whole database restored to a consistent earlier state (a backup): the chain and its
    seal verify, but the HSM anchor has moved past it. Nothing is believed: the revocation made
    after the backup cannot be undone silently."""
    app, replica, connect, admin, wrapped = world
    grant = admin.grant_permissions(APP, "orders", ["decrypt"])
    backup = {table: _rows(app, table) for table in PROTECTED}
    admin.revoke_grant(grant.grant_id)  # moves the anchor before it returns
    for table in reversed(PROTECTED):
        _sql(app, f"DELETE FROM {table}")
    for table in PROTECTED:
        _insert(app, table, backup[table])
    second = replica_not_serving(replica)
    assert "rolled back" in second.services.integrity.problem
    with pytest.raises(kms_client.Unavailable):
        connect(second, "app").decrypt_data_key(wrapped, CONTEXT)
    # The operator who restored it on purpose accepts it; the revoked grant is then back, as the
    # command says it will be.
    before, after = second.services.integrity.accept_restore(second.services.anchor)
    assert after < before
    third = replica()
    assert connect(third, "app").decrypt_data_key(wrapped, CONTEXT).key_id == "orders"


def test_an_emptied_ledger_is_a_rollback_not_a_fresh_start(world):
    app, replica, connect, _admin, wrapped = world
    _sql(app, "DELETE FROM ledger_entries")
    _sql(app, "UPDATE ledger_head SET seq = 0, hash = :h, mac = ''", h="0" * 64)
    _sql(
        app,
        "INSERT INTO grants (grant_id, principal, resource, permissions, context_json, created_by, create_time) "
        "VALUES ('forged0000000000000000000000002', :p, '*', 'decrypt', '{}', :a, :t)",
        p=APP,
        a=ADMIN,
        t="2026-01-01 00:00:00",
    )
    second = replica_not_serving(replica)
    assert "rolled back" in second.services.integrity.problem
    with pytest.raises(kms_client.Unavailable):
        connect(second, "app").decrypt_data_key(wrapped, CONTEXT)


def test_a_deleted_key_is_a_denial_of_service_and_is_reported(world):
    app, replica, connect, _admin, wrapped = world
    _sql(app, "DELETE FROM key_versions WHERE key_id = 'orders'")
    _sql(app, "DELETE FROM keys WHERE key_id = 'orders'")
    second = replica()
    with pytest.raises(kms_client.FailedPrecondition):
        connect(second, "admin").decrypt_data_key(wrapped, CONTEXT)
    assert "deleted outside the service" in second.services.integrity.rejected_rows()[("key", "orders")]
    assert _reported(second, "key")


def replica_not_serving(replica):
    """A replica started on a database whose ledger does not verify: it starts, reports
    NOT_SERVING, and refuses every key and grant."""
    server = replica()
    server.health.run_once()
    assert not server.health.serving
    return server


def test_a_change_through_the_service_never_seals_a_tampered_row(world):
    """An admin's innocent update of a key whose row was altered must not bless the alteration."""
    app, replica, connect, admin, wrapped = world
    admin.rotate_key("orders")
    admin.disable_key_version("orders", 2)
    _sql(app, "UPDATE key_versions SET state = 'ENABLED' WHERE key_id = 'orders' AND version = 2")
    second = replica()
    client = connect(second, "admin")
    for change in (lambda: client.update_key("orders", description="innocent"), lambda: client.rotate_key("orders")):
        with pytest.raises(kms_client.FailedPrecondition):
            change()
    with pytest.raises(kms_client.FailedPrecondition):
        client.decrypt_data_key(wrapped, CONTEXT)


def test_reconciliation_does_not_rebuild_a_deleted_key_from_its_hsm_objects(world):
    """The HSM still holds every version's master key; rebuilding the key from them would bring
    back the version its admin disabled."""
    app, replica, connect, admin, _ = world
    admin.create_key("objects", storage="HSM_OBJECT")
    admin.rotate_key("objects")
    wrapped = admin.generate_data_key("objects", CONTEXT).wrapped_key  # under version 2
    admin.rotate_key("objects")
    admin.disable_key_version("objects", 2)
    _sql(app, "DELETE FROM key_versions WHERE key_id = 'objects'")
    _sql(app, "DELETE FROM keys WHERE key_id = 'objects'")
    second = replica()
    report = second.services.reconciler.reconcile()
    assert report.adopted == [] and {o.version for o in report.unresolved if o.key_id == "objects"} == {1, 2, 3}
    with pytest.raises(kms_client.FailedPrecondition):
        connect(second, "admin").decrypt_data_key(wrapped, CONTEXT)
