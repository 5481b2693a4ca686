"""What the audit log and the service log must never give away, from the side of someone who
reads them: encryption contexts (recorded only as keyed digests, which still find equal
contexts), grant constraint values, the HSM PIN, data keys and plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging

import grpc
import pytest
from pydantic import SecretStr

import kms_client
from kms.crypto.context import encode_context
from kms_proto.kms.v1 import kms_pb2 as pb
from tests.support.attack import Stubs, channel, log_text, refused
from tests.support.fixtures import ADMIN, APP, _running, make_settings

CONTEXT = {"tenant": "acme", "region": "eu-west"}
SAME_CONTEXT = {"region": "eu-west", "tenant": "acme"}  # the same map, in another order
SECRET_CONSTRAINT = "very-secret-value"


def _reads(client: kms_client.KmsClient, **filters) -> list:
    return [e for e in client.audit_events(**filters) if e.rpc != "ListAuditEvents"]


# --- context digests ---------------------------------------------------------------------


def test_context_digests_are_keyed_equal_for_equal_contexts_and_filtering_finds_exactly_the_matching_calls(settings):
    app = _running(settings)
    try:
        with kms_client.KmsClient(app.target) as client:
            client.create_key("orders")
            matching = [client.generate_data_key("orders", CONTEXT), client.generate_data_key("orders", SAME_CONTEXT)]
            client.decrypt_data_key(matching[0].wrapped_key, SAME_CONTEXT)
            for near in ({"tenant": "acme"}, {"tenant": "acme", "region": "eu-west2"}, {"tenant": "acmeregion"}, {}):
                client.generate_data_key("orders", near)
            records = _reads(client)
            found = _reads(client, context=CONTEXT)
    finally:
        app.stop(grace=1)

    digests = {}
    for event in records:
        if event.rpc in ("GenerateDataKey", "Decrypt"):
            digests.setdefault(event.context_digest, []).append(event.rpc)
    assert len(digests) == 5  # one per distinct context, whatever the order of its entries
    [digest] = {e.context_digest for e in found}
    assert sorted(digests[digest]) == ["Decrypt", "GenerateDataKey", "GenerateDataKey"]
    assert [(e.rpc, e.seq) for e in found] == [(e.rpc, e.seq) for e in records if e.context_digest == digest]
    encoded = encode_context(CONTEXT)
    for unkeyed in (
        hashlib.sha256(encoded).hexdigest(),
        hmac.new(b"", encoded, hashlib.sha256).hexdigest(),
        hashlib.sha256(encoded + b"audit-context-digest").hexdigest(),
        encoded.hex()[:64],
    ):
        assert digest != unkeyed


def test_a_context_digest_is_the_same_after_a_restart_so_old_records_are_still_found(settings):
    for restart in range(2):
        app = _running(settings)
        try:
            with kms_client.KmsClient(app.target) as client:
                if restart == 0:
                    client.create_key("orders")
                client.generate_data_key("orders", CONTEXT)
                found = _reads(client, context=SAME_CONTEXT)
        finally:
            app.stop(grace=1)
    assert [e.rpc for e in found] == ["GenerateDataKey", "GenerateDataKey"]
    assert len({e.context_digest for e in found}) == 1


# --- grant constraints ------------------------------------------------------------------------


def test_a_grant_constraint_value_never_appears_in_an_audit_record_a_log_line_or_an_error_message(
    mtls_server, connect, dev_certs, caplog
):
    caplog.set_level(logging.DEBUG)
    admin, app = connect(mtls_server, "admin"), connect(mtls_server, "app")
    admin.create_key("orders")
    pinned = {"tenant": SECRET_CONSTRAINT}
    grant = admin.grant_permissions(APP, "orders", ["encrypt", "decrypt"], encryption_context_equals=pinned)
    assert grant.encryption_context_equals == pinned  # the admin who made it may read it back

    messages = []
    for attempt in (
        lambda: app.generate_data_key("orders", {"tenant": "guess"}),
        lambda: app.generate_data_key("orders", {}),
        lambda: app.get_key("orders"),  # a constrained grant shows no metadata
        lambda: admin.grant_permissions("not an identity", "orders", ["decrypt"], encryption_context_equals=pinned),
        lambda: admin.grant_permissions(APP, "orders*", ["decrypt"], encryption_context_equals=pinned),
        lambda: admin.grant_permissions(APP, "orders", ["decrypt", "steal"], encryption_context_equals=pinned),
        lambda: admin.grant_permissions(
            APP, "orders", ["decrypt"], encryption_context_equals={"tenant": SECRET_CONSTRAINT * 100}
        ),
        lambda: admin.grant_permissions(
            APP, "orders", ["decrypt"], encryption_context_equals={f"k{n}": SECRET_CONSTRAINT for n in range(17)}
        ),
        lambda: app.grant_permissions(APP, "orders", ["admin"], encryption_context_equals=pinned),
    ):
        with pytest.raises(kms_client.KmsError) as failed:
            attempt()
        messages.append(f"{failed.value.code} {failed.value.reason} {failed.value.message}")
    issued = app.generate_data_key("orders", pinned)
    assert app.decrypt_data_key(issued.wrapped_key, pinned).plaintext == issued.plaintext
    admin.revoke_grant(grant.grant_id)
    with pytest.raises(kms_client.PermissionDenied) as revoked:
        app.decrypt_data_key(issued.wrapped_key, pinned)
    messages.append(revoked.value.message)

    records = list(admin.audit_events())
    grant_record = next(e for e in records if e.rpc == "GrantPermissions" and e.outcome == "OK")
    used = next(e for e in records if e.rpc == "Decrypt" and e.identity == APP and e.outcome == "OK")
    assert grant_record.context_digest == used.context_digest != ""  # keyed digest, as for any context
    assert "tenant" in grant_record.detail  # which entries are pinned is said; to what is not
    for where, text in (
        ("error messages", "\n".join(messages)),
        ("audit records", repr(records)),
        ("log", log_text(caplog.records)),
    ):
        assert SECRET_CONSTRAINT not in text, f"the constraint value appears in the {where}"


# --- the PIN, keys and plaintext ----------------------------------------------------------


def test_hsm_settings_settings_and_services_never_show_the_pin(hsm_token, tmp_path, sqlite_url, label_prefix):
    from kms.app import Application, HsmSettings, hsm_settings

    pin = hsm_token.read_pin()
    assert len(pin) >= 8  # long enough that finding it in text is no accident
    settings = make_settings(
        hsm_token, tmp_path, sqlite_url, label_prefix, pkcs11_pin_file=None, pkcs11_pin=SecretStr(pin)
    )
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        repr(HsmSettings("module.so", "token", pin)),
        str(HsmSettings("module.so", "token", pin)),
        repr(hsm_settings(settings)),
    ]
    app = Application(settings)
    try:
        shown += [repr(app.services), str(app.services), repr(app.settings)]
        shown += [repr(value) for value in vars(app.services).values()]
    finally:
        app.stop(grace=0)
    for text in shown:
        assert pin not in text


def test_no_pin_key_plaintext_or_context_value_reaches_the_log_during_a_full_set_of_calls(
    hsm_token, tmp_path, sqlite_url, label_prefix, dev_certs, caplog
):
    caplog.set_level(logging.DEBUG)
    pin = hsm_token.read_pin()
    context = {"patient": "ctx-secret-patient-42"}
    settings = make_settings(
        hsm_token,
        tmp_path,
        sqlite_url,
        label_prefix,
        pkcs11_pin_file=None,
        pkcs11_pin=SecretStr(pin),
        tls_cert=dev_certs / "server.crt",
        tls_key=dev_certs / "server.key",
        client_ca=dev_certs / "ca.crt",
        bootstrap_admin=ADMIN,
    )
    app = _running(settings)
    secrets: list[bytes] = []
    try:
        admin = Stubs(channel(app, dev_certs, "admin"))
        other = Stubs(channel(app, dev_certs, "app"))
        admin.keys.CreateKey(pb.CreateKeyRequest(key_id="orders"), timeout=10)
        issued = admin.keys.GenerateDataKey(
            pb.GenerateDataKeyRequest(key_id="orders", encryption_context=context), timeout=10
        )
        secrets.append(issued.plaintext)
        assert (
            admin.keys.Decrypt(
                pb.DecryptRequest(wrapped_key=issued.wrapped_key, encryption_context=context), timeout=10
            ).plaintext
            == issued.plaintext
        )
        batch = admin.keys.BatchGenerateDataKey(
            pb.BatchGenerateDataKeyRequest(
                requests=[
                    pb.GenerateDataKeyRequest(key_id="orders", encryption_context=context),
                    pb.GenerateDataKeyRequest(key_id="missing", encryption_context=context),
                ]
            ),
            timeout=10,
        )
        secrets.append(batch.results[0].data_key.plaintext)
        admin.keys.RotateKey(pb.RotateKeyRequest(key_id="orders"), timeout=10)
        admin.keys.ReWrap(pb.ReWrapRequest(wrapped_key=issued.wrapped_key, encryption_context=context), timeout=10)
        tampered = bytearray(issued.wrapped_key)
        tampered[-1] ^= 1
        failures = [
            lambda: admin.keys.Decrypt(
                pb.DecryptRequest(wrapped_key=issued.wrapped_key, encryption_context={"patient": "ctx-secret-guess"}),
                timeout=10,
            ),
            lambda: admin.keys.Decrypt(
                pb.DecryptRequest(wrapped_key=bytes(tampered), encryption_context=context), timeout=10
            ),
            lambda: other.keys.Decrypt(
                pb.DecryptRequest(wrapped_key=issued.wrapped_key, encryption_context=context), timeout=10
            ),
            lambda: admin.keys.GenerateDataKey(
                pb.GenerateDataKeyRequest(
                    key_id="orders", encryption_context={"patient": "ctx-secret-patient-42" * 100}
                ),
                timeout=10,
            ),
            lambda: admin.keys.DisableKeyVersion(pb.DisableKeyVersionRequest(key_id="orders", version=2), timeout=10),
        ]
        errors = [refused(attempt) for attempt in failures]
        assert {e.code() for e in errors} <= {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.FAILED_PRECONDITION,
        }
        records = list(admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(), timeout=30))
        admin.channel.close()
        other.channel.close()
    finally:
        app.stop(grace=1)

    logged = log_text(caplog.records)
    assert "key created" in logged  # the log was captured at all
    shown = {"log": logged, "error messages": "\n".join(e.details() for e in errors), "audit records": repr(records)}
    for where, text in shown.items():
        assert pin not in text, f"the PIN appears in the {where}"
        assert "ctx-secret" not in text, f"a context value appears in the {where}"
        for secret in secrets:
            for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]):
                assert form not in text, f"a data key appears in the {where}"


def test_a_wrong_pin_is_reported_without_being_shown(hsm_token, tmp_path, sqlite_url, label_prefix, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-pin-" + hsm_token.read_pin()[::-1]
    settings = make_settings(
        hsm_token, tmp_path, sqlite_url, label_prefix, pkcs11_pin_file=None, pkcs11_pin=SecretStr(wrong)
    )
    app = _running(settings)
    try:
        with (
            kms_client.KmsClient(app.target, retry=kms_client.RetryPolicy(max_attempts=1)) as client,
            pytest.raises(kms_client.Unavailable) as refused_,
        ):
            client.create_key("orders")
        assert not app.health.serving
        problems = repr(app.health.problems)
    finally:
        app.stop(grace=1)
    logged = log_text(caplog.records)
    assert "PinIncorrect" in logged + problems  # the cause is said...
    for text in (logged, problems, refused_.value.message):
        assert wrong not in text and hsm_token.read_pin() not in text  # ...the PIN is not
