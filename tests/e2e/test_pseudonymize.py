"""Pseudonymize through a real server: the SDK's calls, who may (a permission of its own that
grants nothing else), keys used only for their purpose, what the audit log keeps (counts, never a
value or a token), and ``kms pseudonymize`` over a CSV."""

from __future__ import annotations

import csv
import io
import subprocess

import grpc
import pytest

import kms_client
from kms_client import token_version
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc
from tests.support.fixtures import APP
from tests.support.process import clean_env, kms_command

ANALYTICS = {"purpose": "analytics"}
SUPPORT = {"purpose": "support"}
EMAILS = ["ada@example.com", "bob@example.com", "ada@example.com"]


@pytest.fixture
def emails(client) -> str:
    client.create_key("emails", purpose="PSEUDONYMIZE")
    return "emails"


def test_tokens_through_the_sdk_are_deterministic_unlinkable_and_pinned_to_a_version(client, emails):
    key = client.get_key(emails)
    assert key.purpose == "PSEUDONYMIZE"
    tokens = client.pseudonymize(EMAILS, key_id=emails, context=ANALYTICS)
    assert tokens[0] == tokens[2] != tokens[1]
    assert client.pseudonymize([b"ada@example.com"], key_id=emails, context=ANALYTICS) == tokens[:1]
    assert not set(client.pseudonymize(EMAILS, key_id=emails, context=SUPPORT)) & set(tokens)
    client.rotate_key(emails)
    rotated = client.pseudonymize(EMAILS, key_id=emails, context=ANALYTICS)
    assert {token_version(t) for t in rotated} == {2} and not set(rotated) & set(tokens)
    pinned = client.pseudonymize(EMAILS, key_id=emails, context=ANALYTICS, key_version=token_version(tokens[0]))
    assert pinned == tokens


def test_many_values_go_in_calls_of_1000_all_under_one_version(server, client, emails):
    values = [f"user{n}@example.com" for n in range(2500)]
    tokens = client.pseudonymize(values, key_id=emails, context=ANALYTICS)
    assert len(tokens) == 2500 and len(set(tokens)) == 2500
    assert tokens[1234] == client.pseudonymize([values[1234]], key_id=emails, context=ANALYTICS)[0]
    with grpc.insecure_channel(server.target) as channel:
        raw = kms_pb2_grpc.KeyManagementServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            raw.Pseudonymize(pb.PseudonymizeRequest(key_id=emails, values=[b"v"] * 1001), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.value.trailing_metadata())["kms-error-reason"] == "BatchTooLarge"


def test_each_value_fails_alone(client, emails):
    results = client.pseudonymize_results(["ok", "x" * 4097, "ok"], key_id=emails)
    assert results[0] == results[2] and isinstance(results[1], kms_client.ValueTooLong)
    with pytest.raises(kms_client.ValueTooLong):
        client.pseudonymize(["ok", "x" * 4097], key_id=emails)


def test_a_key_of_the_other_purpose_is_failed_precondition_both_ways(client, emails):
    client.create_key("orders")
    with pytest.raises(kms_client.WrongKeyPurpose) as raised:
        client.pseudonymize(EMAILS, key_id="orders")
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(kms_client.WrongKeyPurpose):
        client.generate_data_key(emails)
    with pytest.raises(kms_client.WrongKeyPurpose):
        client.encrypt(b"secret", key_id=emails)
    wrapped = client.generate_data_key("orders").wrapped_key
    with pytest.raises(kms_client.WrongKeyPurpose):
        client.rewrap_data_key(wrapped, destination_key_id=emails)


def test_the_audit_log_keeps_one_record_per_call_with_its_count_and_no_value_or_token(server, client, emails):
    tokens = client.pseudonymize(EMAILS, key_id=emails, context=ANALYTICS)
    client.pseudonymize_results(["fine", "x" * 5000], key_id=emails, context=ANALYTICS)
    server.services.audit_log.flush()
    records = [e for e in client.audit_events(key_id=emails) if e.rpc == "Pseudonymize"]
    assert [(r.item, r.outcome, r.key_version, r.detail) for r in records] == [
        (-1, "OK", 1, "3 values"),
        (-1, "OK", 1, "2 values, 1 refused"),
    ]
    assert records[0].context_digest and records[0].context_digest == records[1].context_digest
    everything = repr(list(client.audit_events()))
    for secret in [*EMAILS, *tokens, "analytics", *(t.split(".")[2] for t in tokens)]:
        assert secret not in everything


# -- who may --------------------------------------------------------------------------------------


@pytest.fixture
def tenants(mtls_server, connect):
    """An admin with a PSEUDONYMIZE key and an ENCRYPT_DECRYPT key; the app, with no grant yet."""
    admin = connect(mtls_server, "admin")
    admin.create_key("emails", purpose="PSEUDONYMIZE")
    admin.create_key("orders")
    return admin, connect(mtls_server, "app")


def test_pseudonymize_needs_its_own_permission_and_grants_nothing_else(tenants):
    admin, app = tenants
    every_other = ["admin", "encrypt", "decrypt", "rewrap", "rotate"]
    grant = admin.grant_permissions(APP, "*", every_other)
    with pytest.raises(kms_client.PermissionDenied, match="pseudonymize"):
        app.pseudonymize(EMAILS, key_id="emails")
    admin.revoke_grant(grant.grant_id)
    admin.grant_permissions(APP, "*", ["pseudonymize"])
    assert len(app.pseudonymize(EMAILS, key_id="emails")) == 3
    wrapped = admin.generate_data_key("orders").wrapped_key
    ciphertext = admin.encrypt(b"secret", key_id="orders")
    for refused in (
        lambda: app.decrypt_data_key(wrapped),
        lambda: app.decrypt(ciphertext),
        lambda: app.generate_data_key("orders"),
        lambda: app.rewrap_data_key(wrapped),
        lambda: app.rotate_key("emails"),
        lambda: app.create_key("mine", purpose="PSEUDONYMIZE"),
    ):
        with pytest.raises(kms_client.PermissionDenied):
            refused()


def test_a_grant_held_to_a_context_pseudonymizes_only_under_it(tenants):
    admin, app = tenants
    admin.grant_permissions(APP, "emails", ["pseudonymize"], encryption_context_equals=ANALYTICS)
    assert len(app.pseudonymize(EMAILS, key_id="emails", context={**ANALYTICS, "region": "eu"})) == 3
    with pytest.raises(kms_client.PermissionDenied, match="for this encryption context"):
        app.pseudonymize(EMAILS, key_id="emails", context=SUPPORT)


# -- kms pseudonymize -------------------------------------------------------------------------------


def _kms(*args: str, target: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        kms_command(*args, "--target", target),
        input=stdin.encode(),
        env=clean_env(),
        capture_output=True,
        timeout=120,
    )


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def test_kms_pseudonymize_replaces_one_column_of_a_csv_streaming_in_batches(server, client, emails):
    rows = [["id", "email", "note"]] + [
        [str(n), f"user{n % 1500}@example.com" if n % 7 else "", f'say "{n}", twice'] for n in range(2600)
    ]
    done = _kms(
        "pseudonymize", emails, "--column", "email", "-c", "purpose=analytics", target=server.target, stdin=_csv(rows)
    )
    assert done.returncode == 0, done.stderr.decode()
    out = list(csv.reader(io.StringIO(done.stdout.decode())))
    assert out[0] == rows[0] and len(out) == len(rows)
    assert [(r[0], r[2]) for r in out] == [(r[0], r[2]) for r in rows]
    assert all((r[1] == "") == (s[1] == "") for r, s in zip(out[1:], rows[1:], strict=True))
    by_value = {s[1]: r[1] for r, s in zip(out[1:], rows[1:], strict=True) if s[1]}
    assert all(r[1] == by_value[s[1]] for r, s in zip(out[1:], rows[1:], strict=True) if s[1])
    assert (
        by_value["user7@example.com"] == client.pseudonymize(["user7@example.com"], key_id=emails, context=ANALYTICS)[0]
    )
    assert "user1@example.com" not in done.stdout.decode()

    client.rotate_key(emails)
    again = _kms(
        "pseudonymize",
        emails,
        "--column",
        "email",
        "-c",
        "purpose=analytics",
        "--key-version",
        "1",
        target=server.target,
        stdin=_csv(rows[:50]),
    )
    assert again.stdout.decode() == "".join(done.stdout.decode().splitlines(keepends=True)[:50])
    fresh = _kms("pseudonymize", emails, "--column", "email", target=server.target, stdin=_csv(rows[:50]))
    assert {token_version(r[1]) for r in list(csv.reader(io.StringIO(fresh.stdout.decode())))[1:] if r[1]} == {2}


def test_kms_pseudonymize_refuses_what_it_cannot_do_with_a_nonzero_status(server, client, emails):
    client.create_key("orders")
    table = _csv([["id", "email"], ["1", "ada@example.com"], ["2", "x" * 5000]])
    missing = _kms("pseudonymize", emails, "--column", "mail", target=server.target, stdin=table)
    assert missing.returncode == 2 and b"no column 'mail'" in missing.stderr
    wrong = _kms("pseudonymize", "orders", "--column", "email", target=server.target, stdin=table)
    assert wrong.returncode == 1 and b"FAILED_PRECONDITION" in wrong.stderr
    too_long = _kms("pseudonymize", emails, "--column", "email", target=server.target, stdin=table)
    assert too_long.returncode == 1 and b"row 2: INVALID_ARGUMENT" in too_long.stderr
    assert b"xxxx" not in too_long.stderr
