"""One certificate, one identity of a stated kind: identity_of over crafted certificates, the
principals a grant may name, and the identity cache (no server, no TLS handshake)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

import kms.api.tls as tls
from kms.api.tls import CertificateIdentity, identity_of
from kms.domain.policy import validate_identity, validate_principal
from kms.errors import InvalidArgument, Unauthenticated

ADMIN = "spiffe://kms.dev/admin"
# X.509 bounds a CN at 64 characters and cryptography warns past that; certificates in the wild
# exceed it, and the identity rule has its own bound (256).
LONG_CN = pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")
_KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(*, uris=(), common_names=("someone",), dns=()) -> x509.Certificate:
    """A self-signed client certificate: identity_of reads names, the handshake checks trust."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False) for cn in common_names])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(_KEY, hashes.SHA256())


def refusal(cert: x509.Certificate, *, cn_identities: bool = False) -> str:
    with pytest.raises(Unauthenticated) as refused:
        identity_of(cert, cn_identities=cn_identities)
    assert refused.value.code == "UNAUTHENTICATED"
    return refused.value.message


# --- URI SANs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cn_identities", [False, True])
def test_exactly_one_uri_san_is_the_identity_whatever_the_cn_says(cn_identities):
    cert = certificate(uris=[ADMIN], common_names=["group:admins"], dns=["admin.example"])
    assert identity_of(cert, cn_identities=cn_identities) == ADMIN


@pytest.mark.parametrize("uris", [[ADMIN, "spiffe://kms.dev/app"], ["spiffe://kms.dev/app", ADMIN], [ADMIN, ADMIN]])
def test_several_uri_sans_are_refused_rather_than_one_picked(uris):
    assert "2 URI SANs" in refusal(certificate(uris=uris), cn_identities=True)


@pytest.mark.parametrize(
    "uri",
    [
        "group:payments",
        "GROUP:payments",
        "kms:scheduler",
        "Kms:scheduler",
        "cn:admin",
        "CN:spiffe://kms.dev/admin",
        "local:x",
        "anonymous:x",
    ],
)
def test_a_uri_san_with_a_reserved_scheme_is_refused_in_any_case(uri):
    message = refusal(certificate(uris=[uri]), cn_identities=True)
    assert f"reserved scheme {uri.split(':')[0]!r}" in message


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("local", "no URI scheme"),
        ("anonymous", "no URI scheme"),
        ("admin", "no URI scheme"),
        ("1spiffe://kms.dev/admin", "no URI scheme"),
        ("spiffe://kms.dev/a b", "printable ASCII without spaces"),
        ("spiffe://kms.dev/a\tb", "printable ASCII without spaces"),
        ("spiffe://kms.dev/a\x7fb", "printable ASCII without spaces"),
        ("spiffe://kms.dev/" + "a" * 496, "longer than 512"),
    ],
)
def test_a_uri_san_that_is_no_uri_identity_is_refused(uri, why):
    assert why in refusal(certificate(uris=[uri]), cn_identities=True)


def test_the_longest_uri_identity_is_512_characters():
    uri = "spiffe://kms.dev/" + "a" * 495
    assert identity_of(certificate(uris=[uri])) == uri


def test_refusals_quote_the_certificate_only_clipped_and_escaped():
    forged = "group:" + "x" * 300 + "\r\nINFO granted admin"
    message = refusal(certificate(uris=[forged]))
    assert len(message) < 120
    assert "x" * 30 not in message and "granted" not in message and "\n" not in message


# --- no URI SAN -------------------------------------------------------------------------------


@pytest.mark.parametrize("dns", [(), ("app.example",)])
def test_without_a_uri_san_the_certificate_is_refused_by_default(dns):
    assert "no URI SAN" in refusal(certificate(common_names=["orders-service"], dns=dns))


@pytest.mark.parametrize("dns", [(), ("app.example",)])
def test_with_cn_identities_the_cn_is_an_identity_in_its_own_namespace(dns):
    cert = certificate(common_names=["orders-service"], dns=dns)
    assert identity_of(cert, cn_identities=True) == "cn:orders-service"


@pytest.mark.parametrize("cn", [ADMIN, "group:admins", "kms:scheduler", "local", "anonymous", "cn:x"])
def test_a_cn_never_names_a_uri_identity_a_group_or_a_reserved_principal(cn):
    assert identity_of(certificate(common_names=[cn]), cn_identities=True) == f"cn:{cn}"


@LONG_CN
@pytest.mark.parametrize(
    ("common_names", "why"),
    [
        ((), "0 CNs"),
        (("orders-service", "admin"), "2 CNs"),
        (("orders service",), "printable ASCII without spaces"),
        (("adm\u0131n",), "printable ASCII without spaces"),
        (("a" * 257,), "longer than 256"),
    ],
)
def test_a_cn_that_does_not_name_exactly_one_identity_is_refused(common_names, why):
    message = refusal(certificate(common_names=common_names), cn_identities=True)
    assert why in message
    assert message.isascii()


@LONG_CN
def test_the_longest_cn_identity_is_256_characters():
    assert identity_of(certificate(common_names=["a" * 256]), cn_identities=True) == "cn:" + "a" * 256


# --- what a grant may name --------------------------------------------------------------------


@pytest.mark.parametrize(
    "principal",
    [
        ADMIN,
        "https://id.example/svc",
        "urn:example:svc",
        "cn:orders-service",
        "cn:spiffe://kms.dev/admin",
        "local",
        "group:payments",
    ],
)
def test_a_grant_may_name_every_kind_of_identity_that_holds_grants_and_groups(principal):
    assert validate_principal(principal) == principal


@pytest.mark.parametrize(
    "principal",
    [
        "anonymous",
        "kms:scheduler",
        "KMS:scheduler",
        "Group:payments",
        "CN:x",
        "cn:",
        "cn:a b",
        "orders-service",
        "local:x",
        "group:bad name",
        "group:",
        "spiffe://kms.dev/a b",
        "",
        "x:" + "a" * 511,
    ],
)
def test_a_grant_may_not_name_what_no_certificate_can_be(principal):
    with pytest.raises(InvalidArgument):
        validate_principal(principal)


def test_groups_are_principals_but_not_identities():
    with pytest.raises(InvalidArgument):
        validate_identity("group:payments")


@given(st.text(min_size=1, max_size=80))
def test_every_accepted_principal_is_of_exactly_one_kind(text):
    try:
        validate_principal(text)
    except InvalidArgument:
        return
    kinds = [
        text == "local",
        text.startswith("group:"),
        text.startswith("cn:"),
        ":" in text and text.split(":")[0].lower() not in {"group", "cn", "kms", "local", "anonymous"},
    ]
    assert kinds.count(True) == 1


_printable = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=48)
_claims = st.one_of(
    _printable,
    st.sampled_from(["local", "anonymous", "LOCAL"]),
    st.tuples(
        st.sampled_from(["group", "Group", "kms", "KMS", "cn", "Cn", "local", "anonymous", "spiffe"]), _printable
    ).map(":".join),
)


@given(_claims)
def test_no_certificate_identity_is_a_group_an_internal_principal_or_anonymous(text):
    """Whatever a CA puts in a URI SAN or a CN, the identity it yields is none of these."""
    identities = []
    for cert, cn_identities in ((certificate(uris=[text]), False), (certificate(common_names=[text]), True)):
        with contextlib.suppress(Unauthenticated):
            identities.append(identity_of(cert, cn_identities=cn_identities))
    for identity in identities:
        assert identity.split(":")[0].lower() not in {"group", "kms", "local", "anonymous"}
        assert identity not in {"local", "anonymous"}
        assert validate_identity(identity) == identity


# --- CertificateIdentity ----------------------------------------------------------------------


class _Context:
    def __init__(self, pem: bytes | None) -> None:
        self._pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def test_without_a_client_certificate_the_caller_is_anonymous():
    assert CertificateIdentity().authenticate(_Context(None)) == ("anonymous", frozenset())


def test_the_authenticator_applies_the_cn_setting():
    context = _Context(_pem(certificate(common_names=["orders-service"])))
    with pytest.raises(Unauthenticated):
        CertificateIdentity().authenticate(context)
    assert CertificateIdentity(cn_identities=True).authenticate(context) == ("cn:orders-service", frozenset())


def test_an_unreadable_certificate_is_unauthenticated_not_an_internal_error():
    with pytest.raises(Unauthenticated, match="cannot be read"):
        CertificateIdentity().authenticate(_Context(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))


def test_outcomes_are_remembered_by_certificate_and_the_memory_is_bounded(monkeypatch):
    parsed = []

    def counting(cert, *, cn_identities=False):
        parsed.append(cert)
        return identity_of(cert, cn_identities=cn_identities)

    monkeypatch.setattr(tls, "identity_of", counting)
    authenticator = CertificateIdentity(cache_size=2)
    first, refused, third = (_Context(_pem(certificate(uris=uris))) for uris in ([ADMIN], [ADMIN, ADMIN], ["a:b"]))
    for _ in range(3):
        assert authenticator.authenticate(first)[0] == ADMIN
        with pytest.raises(Unauthenticated, match="2 URI SANs"):
            authenticator.authenticate(refused)
    assert len(parsed) == 2  # each certificate read once, refusals included
    authenticator.authenticate(third)  # evicts the least recently used: ``first``
    authenticator.authenticate(first)
    assert len(parsed) == 4
