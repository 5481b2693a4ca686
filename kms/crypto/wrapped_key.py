"""The wrapped key format, version 1 (docs/wrapped-key-format.md is the specification).

    offset  size  field
    0       1     format version, 0x01
    1       1     L, length of the key id (1-64)
    2       L     key id, ASCII [A-Za-z0-9_-]
    2+L     4     key version, uint32 big-endian, >= 1
    6+L     12    IV for AES-256-GCM
    18+L    32    encrypted data key
    50+L    16    GCM tag

The header is bytes [0, 6+L). The GCM associated data is the header followed by the canonical
encoding of the encryption context (kms.crypto.context), so changing the format version, key
id, key version or context makes the tag check fail.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from kms.errors import InvalidCiphertext

FORMAT_VERSION = 1
IV_LENGTH = 12
DATA_KEY_LENGTH = 32
TAG_LENGTH = 16
SEALED_LENGTH = DATA_KEY_LENGTH + TAG_LENGTH
MAX_KEY_VERSION = 2**32 - 1

_KEY_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_VERSION = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class WrappedKeyHeader:
    key_id: str
    key_version: int

    def encode(self) -> bytes:
        key_id = self.key_id.encode("ascii")
        return bytes((FORMAT_VERSION, len(key_id))) + key_id + _VERSION.pack(self.key_version)

    def associated_data(self, encoded_context: bytes) -> bytes:
        return self.encode() + encoded_context


@dataclass(frozen=True, slots=True)
class WrappedKey:
    header: WrappedKeyHeader
    iv: bytes
    sealed: bytes  # encrypted data key followed by the GCM tag

    def encode(self) -> bytes:
        return self.header.encode() + self.iv + self.sealed


def parse(blob: bytes) -> WrappedKey:
    """Splits a wrapped key into its fields, or raises InvalidCiphertext.

    Only the layout is checked here; authenticity is established by the GCM tag in the HSM.
    """
    if len(blob) < 2 or blob[0] != FORMAT_VERSION:
        raise InvalidCiphertext()
    key_id_length = blob[1]
    if len(blob) != 2 + key_id_length + _VERSION.size + IV_LENGTH + SEALED_LENGTH:
        raise InvalidCiphertext()
    key_id = blob[2 : 2 + key_id_length]
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidCiphertext()
    offset = 2 + key_id_length
    (key_version,) = _VERSION.unpack_from(blob, offset)
    if key_version < 1:
        raise InvalidCiphertext()
    offset += _VERSION.size
    return WrappedKey(
        header=WrappedKeyHeader(key_id.decode("ascii"), key_version),
        iv=bytes(blob[offset : offset + IV_LENGTH]),
        sealed=bytes(blob[offset + IV_LENGTH :]),
    )
