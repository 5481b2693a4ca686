"""TLS for the server: certificates reloaded without a restart, and who the client is.

Who the client is: exactly one identity per certificate, by the rules of identity_of (and
kms.domain.policy for what an identity may look like); a certificate that names none, or more
than one, is refused with UNAUTHENTICATED.

The certificate, key and client CA files are checked (stat) at every new handshake; when they
changed, they are read, checked to belong together, and used for new connections from then on.
Connections already open keep the certificate they were made with, so a rotation drops none. A
broken replacement (unreadable, or a key that does not match the certificate) is refused with
an error in the log, and the previous certificate stays in use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from kms.domain.policy import ANONYMOUS, CN_PREFIX, LOCAL, clipped, common_name_flaw, uri_identity_flaw
from kms.errors import Unauthenticated

log = logging.getLogger(__name__)


class CertificateUnusable(Exception):
    pass


def _stamp(paths: list[Path]) -> tuple:
    stamps = []
    for path in paths:
        status = os.stat(path)
        stamps.append((status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(stamps)


def load_pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    """The PEM key and certificate chain, after checking that the key is the certificate's."""
    chain, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    try:
        certificate = x509.load_pem_x509_certificate(chain)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise CertificateUnusable(f"cannot read the TLS certificate or key: {error}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise CertificateUnusable(f"{key_path} is not the private key of {cert_path}")
    return key_pem, chain


class ReloadingServerCredentials:
    def __init__(self, cert_path: Path, key_path: Path, client_ca: Path | None = None) -> None:
        self._cert, self._key, self._ca = cert_path, key_path, client_ca
        self._paths = [p for p in (cert_path, key_path, client_ca) if p is not None]
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)
        self._initial = self._configuration()
        self.reloads = 0

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # grpc-stubs omit that a fetcher may return None ("no change")
            require_client_authentication=self._ca is not None,
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        key_pem, chain = load_pair(self._cert, self._key)
        roots = self._ca.read_bytes() if self._ca is not None else None
        return grpc.ssl_server_certificate_configuration([(key_pem, chain)], root_certificates=roots)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration, or None for no change."""
        try:
            stamp = _stamp(self._paths)
        except OSError:
            return None  # a file is being replaced right now; keep serving the current one
        with self._lock:
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                configuration = self._configuration()
            except (CertificateUnusable, OSError) as error:
                log.error(
                    "TLS files changed but cannot be used; keeping the previous ones",
                    extra={"fields": {"error": str(error)}},
                )
                return None
            self.reloads += 1
        log.info("TLS certificate reloaded", extra={"fields": {"cert": str(self._cert)}})
        return configuration


class CertificateIdentity:
    """The caller is its verified client certificate, named by identity_of; without one (TLS
    without --client-ca) the caller is "anonymous", whom the authorizer refuses anything that
    needs a grant.

    Outcomes, identities and refusals alike, are remembered by certificate PEM (the hot path:
    every call of a connection presents the same certificate), at most ``cache_size`` of them,
    the least recently used forgotten first. A refusal is logged once, when first decided.
    """

    def __init__(self, *, cn_identities: bool = False, cache_size: int = 4096) -> None:
        self._cn_identities = cn_identities
        self._known: OrderedDict[bytes, str | _Refusal] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def authenticate(self, context: grpc.ServicerContext) -> tuple[str, frozenset[str]]:
        # grpc-stubs type each property as bytes; gRPC gives the list of its values.
        pems = cast("list[bytes] | None", context.auth_context().get("x509_pem_cert"))
        if not pems:
            return ANONYMOUS, frozenset()
        outcome = self._outcome(pems[0])
        if isinstance(outcome, _Refusal):
            raise Unauthenticated(outcome.reason)
        return outcome, frozenset()

    def _outcome(self, pem: bytes) -> str | _Refusal:
        with self._lock:
            outcome = self._known.get(pem)
            if outcome is not None:
                self._known.move_to_end(pem)
                return outcome
        outcome = self._decide(pem)
        with self._lock:
            self._known[pem] = outcome
            while len(self._known) > self._cache_size:
                self._known.popitem(last=False)
        return outcome

    def _decide(self, pem: bytes) -> str | _Refusal:
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return _Refusal("the client certificate cannot be read")
        try:
            return identity_of(certificate, cn_identities=self._cn_identities)
        except Unauthenticated as refused:
            fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
            log.warning(
                "client certificate refused", extra={"fields": {"reason": refused.message, "sha256": fingerprint}}
            )
            return _Refusal(refused.message)


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A certificate that names no acceptable identity, and why (the message the caller gets)."""

    reason: str


def identity_of(certificate: x509.Certificate, *, cn_identities: bool = False) -> str:
    """The one identity a verified client certificate names; raises Unauthenticated otherwise.

    - Exactly one URI SAN: the identity is that URI, if it is one (1-512 characters of
      printable ASCII without spaces, with a scheme) and its scheme is not reserved (``group``,
      ``cn``, ``kms``, ``local``, ``anonymous``, in any case; kms.domain.policy). Other SAN types
      are ignored.
    - Several URI SANs: refused, rather than picking one.
    - No URI SAN: refused, unless ``cn_identities``; then exactly one subject CN, of 1-256
      characters of printable ASCII without spaces, names the identity ``cn:<CN>``, a namespace
      of its own: a CN of ``spiffe://kms.dev/admin`` is ``cn:spiffe://kms.dev/admin``, never
      that URI, and a CN of ``group:x`` is ``cn:group:x``, never a group.

    Messages name the rule broken and quote the certificate's text only clipped and escaped.
    """
    uris = _uri_sans(certificate)
    if len(uris) > 1:
        raise Unauthenticated(f"the client certificate has {len(uris)} URI SANs; exactly one must name the caller")
    if uris:
        return _uri_identity(uris[0])
    if not cn_identities:
        raise Unauthenticated("the client certificate has no URI SAN to name the caller")
    return _common_name_identity(certificate)


def _uri_sans(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise Unauthenticated("the client certificate's extensions cannot be read") from None
    return names.get_values_for_type(x509.UniformResourceIdentifier)


def _uri_identity(uri: str) -> str:
    flaw = uri_identity_flaw(uri)
    if flaw:
        raise Unauthenticated(f"the client certificate's URI SAN {clipped(uri)} {flaw}")
    return uri


def _common_name_identity(certificate: x509.Certificate) -> str:
    try:
        common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        raise Unauthenticated("the client certificate's subject cannot be read") from None
    if len(common_names) != 1:
        raise Unauthenticated(
            f"the client certificate has no URI SAN and {len(common_names)} CNs; exactly one must name the caller"
        )
    value = common_names[0].value
    if not isinstance(value, str):
        raise Unauthenticated(f"the client certificate's CN {clipped(str(value))} is not text")
    flaw = common_name_flaw(value)
    if flaw:
        raise Unauthenticated(f"the client certificate's CN {clipped(value)} {flaw}")
    return CN_PREFIX + value


class LoopbackIdentity:
    """Plaintext is served on loopback only; every caller there is "local" (development)."""

    def authenticate(self, context: grpc.ServicerContext) -> tuple[str, frozenset[str]]:
        return LOCAL, frozenset()
