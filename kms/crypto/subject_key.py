"""Subject keys and the wrapped key format 2 (docs/wrapped-key-format.md, "Format 2").

A key with a ``subject_field`` wraps each data key with the key of its data subject, in
software, with AES-256-GCM; the subject's key is itself wrapped by a master key version inside
the HSM. Format 2 is what GenerateDataKey returns for such a key:

    offset  size  field
    0       1     format version, 0x02
    1       1     L, length of the key id (1-64)
    2       L     key id, ASCII [A-Za-z0-9_-]
    2+L     12    IV for AES-256-GCM, random
    14+L    32    encrypted data key
    46+L    16    GCM tag

The header is bytes [0, 2+L); the associated data is the header followed by the canonical
encoding of the encryption context, which holds the subject (the subject_field entry). No
master key version is named: the subject's key outlives versions (it is carried onto each new
one), so a data key stays readable across rotations until its subject is erased.

The subject's key, wrapped in the HSM under master key version V, has the associated data

    "kms-subject-key-v1" || uint8 L || key id || subject digest (32 bytes) || uint32 V

so that a stored wrapping opens only for its own key, subject and version.

The subject digest is HMAC-SHA256(K, "kms-subject-v1" || uint32 len || key id || uint32 len ||
subject), hex, with K a 32-byte key derived inside the HSM from the seal key (its MAC of the
label "subject-digest"): equal for equal subjects of a key, useless to whoever reads the database
without the HSM.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.random import random_bytes
from kms.errors import InvalidCiphertext

FORMAT_VERSION = 2
IV_LENGTH = 12
DATA_KEY_LENGTH = 32
SUBJECT_KEY_LENGTH = 32
TAG_LENGTH = 16
DIGEST_PURPOSE = b"subject-digest"

_KEY_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_SUBJECT_KEY_TAG = b"kms-subject-key-v1"
_DIGEST_TAG = b"kms-subject-v1"


def format_of(blob: bytes) -> int:
    """The format version a wrapped key claims (its first byte), 0 for an empty blob."""
    return blob[0] if blob else 0


@dataclass(frozen=True, slots=True)
class SubjectWrappedKey:
    key_id: str
    iv: bytes
    sealed: bytes  # encrypted data key followed by the GCM tag

    @property
    def header(self) -> bytes:
        return header(self.key_id)

    def encode(self) -> bytes:
        return self.header + self.iv + self.sealed


def header(key_id: str) -> bytes:
    encoded = key_id.encode("ascii")
    return bytes((FORMAT_VERSION, len(encoded))) + encoded


def parse(blob: bytes) -> SubjectWrappedKey:
    """The fields of a format 2 wrapped key, or InvalidCiphertext (layout only: the tag is
    checked when it is opened)."""
    if len(blob) < 2 or blob[0] != FORMAT_VERSION:
        raise InvalidCiphertext()
    length = blob[1]
    if len(blob) != 2 + length + IV_LENGTH + DATA_KEY_LENGTH + TAG_LENGTH:
        raise InvalidCiphertext()
    key_id = blob[2 : 2 + length]
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidCiphertext()
    offset = 2 + length
    return SubjectWrappedKey(
        key_id.decode("ascii"), bytes(blob[offset : offset + IV_LENGTH]), bytes(blob[offset + IV_LENGTH :])
    )


def wrap_data_key(
    subject_key: bytes | bytearray, key_id: str, data_key: bytes, encoded_context: bytes, iv: bytes | None = None
) -> bytes:
    """A format 2 wrapped key of ``data_key`` under ``subject_key``, with a fresh random IV
    (``iv`` only for the golden vectors)."""
    iv = random_bytes(IV_LENGTH) if iv is None else iv
    sealed = AESGCM(bytes(subject_key)).encrypt(iv, data_key, header(key_id) + encoded_context)
    return SubjectWrappedKey(key_id, iv, sealed).encode()


def open_data_key(subject_key: bytes | bytearray, parsed: SubjectWrappedKey, encoded_context: bytes) -> bytes:
    """The data key, or InvalidCiphertext when the tag does not verify (altered bytes, another
    subject's key, another context)."""
    try:
        data_key = AESGCM(bytes(subject_key)).decrypt(parsed.iv, parsed.sealed, parsed.header + encoded_context)
    except InvalidTag:
        raise InvalidCiphertext() from None
    if len(data_key) != DATA_KEY_LENGTH:
        raise InvalidCiphertext()
    return data_key


def subject_key_associated_data(key_id: str, subject_digest: str, version: int) -> bytes:
    encoded = key_id.encode("ascii")
    return (
        _SUBJECT_KEY_TAG + bytes((len(encoded),)) + encoded + bytes.fromhex(subject_digest) + struct.pack(">I", version)
    )


def subject_digest(digest_key: bytes, key_id: str, subject: str) -> str:
    def text(value: str) -> bytes:
        encoded = value.encode("utf-8")
        return struct.pack(">I", len(encoded)) + encoded

    return hmac.new(digest_key, _DIGEST_TAG + text(key_id) + text(subject), hashlib.sha256).hexdigest()
