"""A zoo of client certificates against a real mutual-TLS server: each one gets in as exactly
one identity of a stated kind, or is refused (UNAUTHENTICATED), or never completes the
handshake (UNAVAILABLE). Certificates are minted here with the development CA's key.

Each certificate is tried in both modes, without and with KMS_CN_IDENTITIES, against a world
where the bootstrap admin has made the key "orders" and granted group:payments encrypt on it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import kms_client
from tests.support.fixtures import ADMIN, APP, _running, make_settings

UNAUTHENTICATED = "UNAUTHENTICATED"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class Specimen:
    """A client certificate to mint (``dev`` names one scripts/make-dev-certs.sh made instead),
    and what the server must make of it without and with CN identities."""

    common_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    dev: str | None = None
    by_default: str = UNAUTHENTICATED
    with_cn_identities: str = UNAUTHENTICATED


ZOO = {
    "cn-only": Specimen(dev="cn-only", with_cn_identities="cn:cn-only"),
    "cn-spelling-the-admin-uri": Specimen(common_names=(ADMIN,), with_cn_identities=f"cn:{ADMIN}"),
    "cn-spelling-a-group": Specimen(common_names=("group:payments",), with_cn_identities="cn:group:payments"),
    "two-cns": Specimen(common_names=("payments", "group:payments")),
    "two-uri-sans": Specimen(common_names=("app",), uris=(APP, ADMIN)),
    "two-uri-sans-admin-first": Specimen(common_names=("admin",), uris=(ADMIN, APP)),
    "uri-san-naming-a-group": Specimen(common_names=("payments",), uris=("group:payments",)),
    "uri-san-naming-a-group-in-capitals": Specimen(common_names=("payments",), uris=("GROUP:payments",)),
    "uri-san-of-the-service-itself": Specimen(common_names=("scheduler",), uris=("kms:scheduler",)),
    "uri-san-claiming-a-cn-identity": Specimen(common_names=("x",), uris=("cn:cn-only",)),
    "uri-san-claiming-local": Specimen(common_names=("local",), uris=("local",)),
    "dns-san-only": Specimen(common_names=("dns-only",), dns=("dns-only.example",), with_cn_identities="cn:dns-only"),
    "uri-san-wins-over-an-admin-cn": Specimen(
        common_names=(ADMIN,), uris=(APP,), by_default=APP, with_cn_identities=APP
    ),
    "expired": Specimen(dev="expired", by_default=UNAVAILABLE, with_cn_identities=UNAVAILABLE),
    "from-another-ca": Specimen(dev="stranger", by_default=UNAVAILABLE, with_cn_identities=UNAVAILABLE),
}


@pytest.fixture(params=[False, True], ids=["by-default", "with-cn-identities"])
def cn_identities(request) -> bool:
    return request.param


@pytest.fixture
def zoo_server(hsm_token, tmp_path, sqlite_url, label_prefix, dev_certs, cn_identities):
    app = _running(
        make_settings(
            hsm_token,
            tmp_path,
            sqlite_url,
            label_prefix,
            tls_cert=dev_certs / "server.crt",
            tls_key=dev_certs / "server.key",
            client_ca=dev_certs / "ca.crt",
            bootstrap_admin=ADMIN,
            cn_identities=cn_identities,
        )
    )
    yield app
    app.stop(grace=1)


@pytest.fixture
def admin(zoo_server, connect):
    """The bootstrap admin, after making "orders" and granting group:payments encrypt on it."""
    client = connect(zoo_server, "admin")
    client.create_key("orders")
    client.grant_permissions("group:payments", "orders", ["encrypt"])
    return client


@pytest.fixture
def present(dev_certs, tmp_path):
    """present(server, specimen) -> a KmsClient presenting that certificate (no retries)."""
    opened = []
    names = itertools.count()

    def make(server, specimen: Specimen):
        if specimen.dev:
            cert, key = dev_certs / f"{specimen.dev}.crt", dev_certs / f"{specimen.dev}.key"
        else:
            cert, key = mint(dev_certs, tmp_path / f"specimen-{next(names)}", specimen)
        client = kms_client.KmsClient(
            server.target,
            credentials=kms_client.tls_credentials(str(dev_certs / "ca.crt"), str(cert), str(key)),
            retry=kms_client.RetryPolicy(max_attempts=1),
            timeout=10,
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def mint(dev_certs: Path, directory: Path, specimen: Specimen) -> tuple[Path, Path]:
    """A client certificate signed by the development CA, valid now, for client authentication."""
    ca_certificate = x509.load_pem_x509_certificate((dev_certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((dev_certs / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in specimen.common_names]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    names = [x509.UniformResourceIdentifier(u) for u in specimen.uris] + [x509.DNSName(d) for d in specimen.dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    directory.mkdir()
    cert_path, key_path = directory / "client.crt", directory / "client.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.parametrize("name", sorted(ZOO))
def test_each_certificate_is_one_identity_of_a_stated_kind_or_is_refused(
    zoo_server, admin, present, cn_identities, name
):
    specimen = ZOO[name]
    expected = specimen.with_cn_identities if cn_identities else specimen.by_default
    caller = present(zoo_server, specimen)
    attempts = {
        "create a key (admin only)": lambda: caller.create_key("zoo-made"),
        "encrypt under orders (group:payments)": lambda: caller.generate_data_key("orders", {}),
    }
    for what, attempt in attempts.items():
        if expected == UNAVAILABLE:
            with pytest.raises(kms_client.Unavailable):
                attempt()
        elif expected == UNAUTHENTICATED:
            with pytest.raises(kms_client.Unauthenticated):
                attempt()
        else:  # an identity without grants of its own: denied, and named in the denial
            with pytest.raises(kms_client.PermissionDenied) as denied:
                attempt()
            assert denied.value.message.startswith(f"{expected} "), (what, denied.value.message)
    with pytest.raises(kms_client.NotFound):
        admin.get_key("zoo-made")


@pytest.mark.parametrize("cn_identities", [True], ids=["with-cn-identities"])
def test_a_cn_identity_holds_exactly_the_grants_made_to_it(zoo_server, admin, present):
    admin.create_key("orders-archive")
    with pytest.raises(kms_client.InvalidArgument):  # the bare CN is no principal: it names no one
        admin.grant_permissions("cn-only", "orders", ["encrypt"])
    admin.grant_permissions("cn:cn-only", "orders", ["encrypt"])
    caller = present(zoo_server, ZOO["cn-only"])
    wrapped = caller.generate_data_key("orders", {"tenant": "acme"}).wrapped_key
    with pytest.raises(kms_client.PermissionDenied, match=r"^cn:cn-only lacks the decrypt permission"):
        caller.decrypt_data_key(wrapped, {"tenant": "acme"})
    with pytest.raises(kms_client.PermissionDenied, match=r"^cn:cn-only lacks the encrypt permission"):
        caller.generate_data_key("orders-archive", {})
    events = [e for e in admin.audit_events() if e.rpc == "GenerateDataKey" and e.key_id == "orders"]
    assert [(e.identity, e.outcome) for e in events] == [("cn:cn-only", "OK")]


@pytest.mark.parametrize("cn_identities", [True], ids=["with-cn-identities"])
def test_grants_cannot_name_what_no_certificate_can_be(admin):
    for principal in ("anonymous", "kms:scheduler", "KMS:scheduler", "Group:payments", "cn-only", "cn:", "local:x"):
        with pytest.raises(kms_client.InvalidArgument):
            admin.grant_permissions(principal, "orders", ["encrypt"])
