"""TLS for the server: certificates reloaded without a restart, and who the client is.

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
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from kms.errors import Unauthenticated

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
LOCAL = "local"


class CertificateError(Exception):
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
        raise CertificateError(f"cannot read the TLS certificate or key: {error}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise CertificateError(f"{key_path} is not the private key of {cert_path}")
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
            self._initial, self._fetch, require_client_authentication=self._ca is not None
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
            except (CertificateError, OSError) as error:
                log.error("TLS files changed but cannot be used; keeping the previous ones",
                          extra={"fields": {"error": str(error)}})
                return None
            self.reloads += 1
        log.info("TLS certificate reloaded", extra={"fields": {"cert": str(self._cert)}})
        return configuration


class CertificateIdentity:
    """The caller is its client certificate: its first URI SAN (spiffe://...), else its CN.
    Without a verified client certificate the caller is "anonymous"."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._known: OrderedDict[bytes, str] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def authenticate(self, context: grpc.ServicerContext) -> tuple[str, frozenset[str]]:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            return ANONYMOUS, frozenset()
        pem = pems[0]
        with self._lock:
            identity = self._known.get(pem)
            if identity is not None:
                self._known.move_to_end(pem)
                return identity, frozenset()
        identity = identity_of(x509.load_pem_x509_certificate(pem))
        with self._lock:
            self._known[pem] = identity
            if len(self._known) > self._cache_size:
                self._known.popitem(last=False)
        return identity, frozenset()


def identity_of(certificate: x509.Certificate) -> str:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return uris[0]
    except x509.ExtensionNotFound:
        pass
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common_names and isinstance(common_names[0].value, str) and common_names[0].value:
        return common_names[0].value
    raise Unauthenticated("the client certificate names no identity (no URI SAN, no CN)")


class LoopbackIdentity:
    """Plaintext is served on loopback only; every caller there is "local" (development)."""

    def authenticate(self, context: grpc.ServicerContext) -> tuple[str, frozenset[str]]:
        return LOCAL, frozenset()
