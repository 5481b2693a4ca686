"""AES-256-GCM inside the HSM (CKM_AES_GCM) with a caller-supplied 96-bit IV and 128-bit tag."""

from __future__ import annotations

import pkcs11
from pkcs11 import Mechanism
from pkcs11.mechanisms import GCMParams

from kms.errors import InvalidCiphertext

IV_LENGTH = 12
TAG_BITS = 128


def encrypt(key: pkcs11.SecretKey, iv: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Returns the ciphertext followed by the 16-byte tag."""
    if len(iv) != IV_LENGTH:
        raise ValueError("GCM IVs are 96 bits here")
    # buffer_size: the exact output, instead of python-pkcs11's 8 KiB allocation per call.
    # python-pkcs11 mixes encrypt and decrypt into a key's class at run time; its type hints
    # do not declare them on SecretKey.
    return key.encrypt(  # type: ignore[attr-defined]
        plaintext,
        mechanism=Mechanism.AES_GCM,
        mechanism_param=GCMParams(iv, associated_data, TAG_BITS),
        buffer_size=len(plaintext) + TAG_BITS // 8,
    )


def decrypt(
    key: pkcs11.SecretKey,
    iv: bytes,
    sealed: bytes,
    associated_data: bytes,
    auth_failures: tuple[type[pkcs11.PKCS11Error], ...],
) -> bytes:
    """Opens ciphertext-and-tag; raises InvalidCiphertext when authentication fails."""
    if len(iv) != IV_LENGTH or len(sealed) < TAG_BITS // 8:
        raise InvalidCiphertext()
    try:
        return key.decrypt(  # type: ignore[attr-defined]
            sealed,
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(iv, associated_data, TAG_BITS),
            buffer_size=max(1, len(sealed) - TAG_BITS // 8),
        )
    except auth_failures:
        raise InvalidCiphertext() from None
