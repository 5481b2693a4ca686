"""Tink's KMS seam for this service: a ``tink.KmsClient`` whose AEADs use a key of the service as
key-encryption key (docs/integrations/tink.md has the full story and a runnable example).

    from tink import aead
    from kms_client import KmsClient
    from kms_client.integrations.tink import TinkKmsClient

    aead.register()
    kms = KmsClient("127.0.0.1:50051")
    remote = TinkKmsClient(kms, encryption_context={"app": "billing"}).get_aead("kms-grpc://orders")
    envelope_aead = aead.KmsEnvelopeAead(aead.aead_key_templates.AES256_GCM, remote)

Key URIs are ``kms-grpc://<key id>``: the prefix, then the key id exactly as the service spells
it (1 to 64 characters of ``[A-Za-z0-9_-]``) and nothing else: no host, path, query or trailing
slash. The server's address and credentials belong to the wrapped ``kms_client.KmsClient``, so
one URI names the same key in every deployment.

The remote AEAD. The service never encrypts caller data, so ``encrypt`` is the SDK's envelope
encryption (``KmsClient.encrypt``, docs/envelope-format.md): a fresh data key from
GenerateDataKey, AES-256-GCM frames, key commitment, under the encryption context

    {**encryption_context, "tink-associated-data-sha256": SHA-256(associated_data) in lower-case hex}

and its ciphertext is exactly that envelope ciphertext, nothing added or removed. The associated
data is bound twice through its digest: by the service to the wrapped data key, and by the
envelope's header tag to the message. ``decrypt`` refuses, before any call to the service, a
ciphertext whose header names another key id or another context (which is how other associated
data, or another base context, shows up), and otherwise lets the service and the envelope check
everything else. The digest, like the whole context, is stored in clear in the header:
associated data is authenticated, never secret (RFC 5116), but a guessable one can be confirmed
from its digest.

Errors follow Tink: every failure of ``encrypt`` and ``decrypt`` is a ``tink.TinkError`` whose
message names the SDK error's reason (``InvalidCiphertext``, ``EncryptionContextMismatch``,
``PermissionDenied``, ``Unavailable``...) and whose ``__cause__`` is that ``kms_client.KmsError``.
No message, repr or log line carries a key, a plaintext or associated data.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from types import MappingProxyType

try:
    import tink
    from tink import aead
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError("kms_client.integrations.tink needs Tink: pip install 'kms-client[tink]'") from missing

from kms_client._context import encode_context
from kms_client.client import KmsClient
from kms_client.envelope import parse_header_bytes
from kms_client.errors import KmsError

KEY_URI_PREFIX = "kms-grpc://"
ASSOCIATED_DATA_CONTEXT_KEY = "tink-associated-data-sha256"

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DIGEST_PLACEHOLDER = "0" * 64  # a SHA-256 digest in hex has this length


def key_uri(key_id: str) -> str:
    """The key URI of ``key_id``: ``"kms-grpc://" + key_id``. Raises ValueError for a key id the
    service would refuse."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ValueError("a key id is 1 to 64 characters of [A-Za-z0-9_-]")
    return KEY_URI_PREFIX + key_id


def _key_id_of(uri: str) -> str | None:
    if not isinstance(uri, str) or not uri.startswith(KEY_URI_PREFIX):
        return None
    key_id = uri[len(KEY_URI_PREFIX) :]
    return key_id if _KEY_ID.fullmatch(key_id) else None


def _associated_data_digest(associated_data: bytes) -> str:
    return hashlib.sha256(bytes(associated_data)).hexdigest()


class TinkKmsClient(tink.KmsClient):
    """A ``tink.KmsClient`` for ``kms-grpc://<key id>`` URIs, over a ``kms_client.KmsClient``.

    ``encryption_context`` is the base context of every AEAD this client returns: non-secret
    strings that ciphertexts are bound to, stored in clear in them, and required verbatim to
    decrypt (a client with another base context gets ``tink.TinkError``). It must not use the
    key ``"tink-associated-data-sha256"``, which carries the associated data's digest.

    ``key_uri`` binds the client to one URI, as Tink's own clients do: ``does_support`` is then
    true for that URI only. Bind one client per URI to give each key its own base context, in
    particular when registering clients with ``tink.register_kms_client`` (the first registered
    client that supports a URI serves it).

    Raises ValueError for a malformed ``key_uri`` or an ``encryption_context`` the service would
    refuse (not strings, over its limits together with the digest entry, or using the reserved
    key). The ``KmsClient`` stays the caller's: closing it is the caller's business.
    """

    def __init__(
        self,
        client: KmsClient,
        *,
        key_uri: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(client, KmsClient):
            raise TypeError("client must be a kms_client.KmsClient")
        if key_uri is not None and _key_id_of(key_uri) is None:
            raise ValueError(f"a key URI is {KEY_URI_PREFIX}<key id>, the key id 1 to 64 characters of [A-Za-z0-9_-]")
        context = dict(encryption_context or {})
        if ASSOCIATED_DATA_CONTEXT_KEY in context:
            raise ValueError(f"the encryption context key {ASSOCIATED_DATA_CONTEXT_KEY!r} is reserved")
        try:
            encode_context({**context, ASSOCIATED_DATA_CONTEXT_KEY: _DIGEST_PLACEHOLDER})
        except KmsError as error:
            raise ValueError(f"invalid encryption context: {error.message}") from None
        self._client = client
        self._key_uri = key_uri
        self._context = MappingProxyType(context)

    def __repr__(self) -> str:
        bound = f"key_uri={self._key_uri!r}, " if self._key_uri else ""
        return f"TinkKmsClient({bound}encryption_context={dict(self._context)!r})"

    def does_support(self, key_uri: str) -> bool:
        """True for a well-formed ``kms-grpc://<key id>`` URI (the bound one, if any)."""
        if _key_id_of(key_uri) is None:
            return False
        return self._key_uri is None or key_uri == self._key_uri

    def get_aead(self, key_uri: str) -> aead.Aead:
        """The remote AEAD of ``key_uri`` (see the module docstring for its bytes). No call to the
        service is made here. Raises ``tink.TinkError`` for a URI this client does not support."""
        if not self.does_support(key_uri):
            if self._key_uri is not None:
                raise tink.TinkError(f"this client is bound to {self._key_uri} and cannot use {key_uri!r}")
            raise tink.TinkError(f"not a key URI of this service (expected {KEY_URI_PREFIX}<key id>): {key_uri!r}")
        key_id = _key_id_of(key_uri)
        assert key_id is not None
        return RemoteAead(self._client, key_id, self._context)


class RemoteAead(aead.Aead):
    """``tink.aead.Aead`` over one key of the service; made by ``TinkKmsClient.get_aead``.

    ``encrypt(plaintext, associated_data)`` returns an envelope ciphertext v1
    (docs/envelope-format.md) of ``plaintext`` under a fresh data key of the key, with the
    encryption context ``{**base context, "tink-associated-data-sha256": hex SHA-256 of
    associated_data}``. ``decrypt(ciphertext, associated_data)`` returns the plaintext of such a
    ciphertext made under the same key id, base context and associated data. Both raise
    ``tink.TinkError`` on any failure: a malformed, truncated or altered ciphertext, another key
    id, context or associated data, or any error of the service (``__cause__`` is the
    ``kms_client.KmsError``).
    """

    def __init__(self, client: KmsClient, key_id: str, base_context: Mapping[str, str]) -> None:
        self._client = client
        self._key_id = key_id
        self._base_context = base_context

    def __repr__(self) -> str:
        return f"RemoteAead(key_uri={KEY_URI_PREFIX + self._key_id!r})"

    def _context(self, associated_data: bytes) -> dict[str, str]:
        return {**self._base_context, ASSOCIATED_DATA_CONTEXT_KEY: _associated_data_digest(associated_data)}

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        try:
            return self._client.encrypt(plaintext, key_id=self._key_id, context=self._context(associated_data))
        except KmsError as error:
            raise tink.TinkError(f"kms-grpc encryption with key {self._key_id} failed: {error.reason}") from error

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        try:
            # The header is public: refusing a ciphertext of another key here costs no service
            # call, and keeps this AEAD from opening what another key id's AEAD encrypted.
            if parse_header_bytes(ciphertext).key_id != self._key_id:
                raise tink.TinkError(
                    f"kms-grpc decryption with key {self._key_id} failed: the ciphertext is under another key"
                )
            return self._client.decrypt(ciphertext, context=self._context(associated_data))
        except KmsError as error:
            raise tink.TinkError(f"kms-grpc decryption with key {self._key_id} failed: {error.reason}") from error
