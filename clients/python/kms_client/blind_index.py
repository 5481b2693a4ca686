"""Blind indexes: equality search over encrypted values, computed in the application, so that the
plaintext never leaves it (docs/searchable-columns.md).

A blind index of a value is a truncated HMAC-SHA256 under an *index key*, bound to the table and
column the value lives in:

    message = text("kms-blind-index-v1") || text(table) || text(column) || bytes(value)
    index   = uint8 index key version || first ``size`` bytes of HMAC-SHA256(index key, message)

where ``text`` and ``bytes`` are a uint32 big-endian length followed by the bytes (UTF-8 for
text), ``table`` is the table's full name (``schema.table`` when it has a schema) and ``value``
the bytes the encrypted column encrypts (UTF-8 for strings, canonical JSON for JSON). Equal
values in one column have equal indexes under one index key version; the version byte lets a
column hold indexes of two index keys while it is re-indexed (``candidates`` gives both).

An index key is a 32-byte data key of the column's KMS key, made once by GenerateDataKey and
kept only wrapped (``IndexKey.wrapped_key``, stored by the application: a table such as
kms_client.sqlalchemy_search.index_key_table, or its configuration) under the encryption context
``{"blind_index": <ring name>}``. ``IndexKeyRing`` unwraps each one once (Decrypt), keeps it in
a ``bytearray`` zeroed by ``close()``, and computes every HMAC locally with ``cryptography``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

if TYPE_CHECKING:
    from kms_client.client import KmsClient

LABEL = b"kms-blind-index-v1"
CONTEXT_KEY = "blind_index"
DEFAULT_SIZE = 8
MAX_SIZE = 32
MAX_VERSION = 255

_U32 = struct.Struct(">I")


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def index_message(table: str, column: str, value: bytes) -> bytes:
    """The HMAC input for ``value`` in ``table``.``column``."""
    return _field(LABEL) + _field(table.encode("utf-8")) + _field(column.encode("utf-8")) + _field(value)


def blind_index(secret: bytes | bytearray, version: int, table: str, column: str, value: bytes, size: int) -> bytes:
    """``version`` (one byte) followed by the first ``size`` bytes of the HMAC (see above)."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"an index key version is 1 to {MAX_VERSION}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"a blind index keeps 1 to {MAX_SIZE} bytes of the MAC")
    mac = HMAC(secret, hashes.SHA256())
    mac.update(index_message(table, column, value))
    return bytes([version]) + mac.finalize()[:size]


def version_of(index: bytes) -> int:
    """The index key version an index was made with (its first byte)."""
    return index[0]


@dataclass(frozen=True)
class IndexKey:
    """One index key, as the application stores it: its version (1-255, the first byte of every
    index it makes) and its wrapped copy (a data key of the column's KMS key)."""

    version: int
    wrapped_key: bytes = field(repr=False)


def generate_index_key(client: KmsClient, key_id: str, ring: str, version: int) -> IndexKey:
    """A new index key: a data key of ``key_id`` (GenerateDataKeyWithoutPlaintext), wrapped
    under the context ``{"blind_index": ring}``. Store it; the plaintext never reaches here."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"an index key version is 1 to {MAX_VERSION}")
    issued = client.generate_data_key_without_plaintext(key_id, {CONTEXT_KEY: ring})
    return IndexKey(version, issued.wrapped_key)


def rewrap_index_key(client: KmsClient, ring: str, key: IndexKey) -> IndexKey:
    """``key`` re-wrapped under the primary version of its KMS key (ReWrap: the secret is the
    same, so every index stays valid). ``kms rewrap table`` does the same for a stored ring."""
    return IndexKey(key.version, client.rewrap_data_key(key.wrapped_key, {CONTEXT_KEY: ring}).wrapped_key)


class IndexKeyRing:
    """The index keys of one ring (a name the application chooses, e.g. "customers"): the
    ``current`` one makes new indexes, every one is tried by searches. Each key is unwrapped by
    the service once, on first use, and kept here until ``close()`` zeroes it.

    ``client`` is a KmsClient or a function returning one. Thread-safe."""

    def __init__(
        self,
        client: KmsClient | Callable[[], KmsClient],
        ring: str,
        keys: Iterable[IndexKey],
        *,
        current: int | None = None,
    ) -> None:
        self.ring = ring
        self._client = client
        self._keys = {key.version: key for key in keys}
        if not self._keys:
            raise ValueError("an index key ring needs at least one key")
        self.current = current if current is not None else max(self._keys)
        if self.current not in self._keys:
            raise ValueError(f"index key version {self.current} is not in the ring")
        self._secrets: dict[int, bytearray] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"IndexKeyRing(ring={self.ring!r}, versions={sorted(self._keys)}, current={self.current})"

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def index(self, table: str, column: str, value: bytes, size: int) -> bytes:
        """The index of ``value`` under the current key."""
        return blind_index(self._secret(self.current), self.current, table, column, value, size)

    def candidates(self, table: str, column: str, value: bytes, size: int) -> list[bytes]:
        """The index ``value`` has under each key of the ring: what a search looks for."""
        return [blind_index(self._secret(v), v, table, column, value, size) for v in self.versions]

    def close(self) -> None:
        """Zeroes every unwrapped key; the next use unwraps again."""
        with self._lock:
            for secret in self._secrets.values():
                secret[:] = bytes(len(secret))
            self._secrets.clear()

    def _secret(self, version: int) -> bytearray:
        with self._lock:
            secret = self._secrets.get(version)
            if secret is not None:
                return secret
            client = self._client if not callable(self._client) else self._client()
            data_key = client.decrypt_data_key(self._keys[version].wrapped_key, {CONTEXT_KEY: self.ring})
            secret = self._secrets[version] = bytearray(data_key.plaintext)
            return secret
