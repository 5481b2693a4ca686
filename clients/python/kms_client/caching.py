"""Opt-in data key caching: fewer calls to the service, at a price stated here.

Without caching every ``encrypt`` asks the service for a fresh data key and every ``decrypt``
asks it to unwrap one. With ``KmsClient(..., data_key_caching=DataKeyCaching())``:

- ``encrypt`` reuses one data key for many messages under the same key id and encryption
  context, until the first of ``max_age`` seconds, ``max_messages`` messages or ``max_bytes``
  plaintext bytes is reached. Streams (``encrypt_stream``) always get a fresh data key: their
  length is unknown in advance, and one service call is nothing beside a large stream.
- ``decrypt`` keeps unwrapped data keys, keyed by the exact wrapped key and encryption context
  the service accepted, for ``decrypt_max_age`` seconds, at most ``decrypt_max_entries`` of them.
  A cached key opens only headers that name the key id the service reported for it: the check
  a cache miss makes is made on every hit too.

Why reuse is safe, and what the limits are for: every message draws a fresh 256-bit salt and
derives its own frame key, header key and commitment from (data key, salt) with HKDF, so no
AES-GCM key ever sees more than one message, whatever the cache does. The limits are not about
nonces or wear; they bound

- the blast radius of one data key: a plaintext data key that leaks (a core dump, a memory
  disclosure) opens every message encrypted under it: at most ``max_messages`` messages and
  ``max_bytes`` bytes, from a window of ``max_age`` seconds;
- how long changes at the service take to bite: after ``RotateKey`` new messages still use the
  old version's cached data key for up to ``max_age``; after a version is disabled, a client with
  a cached unwrapped key still decrypts for up to ``decrypt_max_age``; and the service's audit
  trail sees one call per data key, not one per message;
- memory: at most ``max_entries`` + ``decrypt_max_entries`` keys of 32 bytes, least recently
  used evicted first.

Defaults are deliberately conservative (5 minutes, 2^16 messages, 2^32 bytes, 256 and 1024
entries): they already turn 10,000 small messages a minute into a handful of calls. The hard
ceilings (a day, 2^32 messages, 2^40 bytes) keep a data key from living unbounded.

Python cannot reliably erase memory: evicted keys are dropped, not zeroed. Keys never appear in
a repr, a log or an exception.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kms_client.types import DataKey

MAX_AGE_CEILING = 24 * 3600.0
MAX_MESSAGES_CEILING = 2**32
MAX_BYTES_CEILING = 2**40

V = TypeVar("V")


@dataclass(frozen=True)
class DataKeyCaching:
    """Limits of the data key caches of one client (seconds, counts, bytes)."""

    max_age: float = 300.0
    max_messages: int = 2**16
    max_bytes: int = 2**32
    max_entries: int = 256
    decrypt_max_age: float = 300.0
    decrypt_max_entries: int = 1024
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = (
            (0 < self.max_age <= MAX_AGE_CEILING, f"max_age must be in (0, {MAX_AGE_CEILING:.0f}] seconds"),
            (0 < self.decrypt_max_age <= MAX_AGE_CEILING,
             f"decrypt_max_age must be in (0, {MAX_AGE_CEILING:.0f}] seconds"),
            (1 <= self.max_messages <= MAX_MESSAGES_CEILING, f"max_messages must be 1 to {MAX_MESSAGES_CEILING}"),
            (1 <= self.max_bytes <= MAX_BYTES_CEILING, f"max_bytes must be 1 to {MAX_BYTES_CEILING}"),
            (self.max_entries >= 0, "max_entries must be >= 0 (0 turns encrypt-side caching off)"),
            (self.decrypt_max_entries >= 0, "decrypt_max_entries must be >= 0 (0 turns decrypt-side caching off)"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class _Expiring(Generic[V]):
    """A thread-safe LRU map whose entries expire ``max_age`` after insertion."""

    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age
        self._clock = clock
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        """The live value for ``key``; call with ``lock`` held."""
        found = self._entries.get(key)
        if found is None:
            return None
        created, value = found
        if self._clock() - created >= self._max_age:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        """Call with ``lock`` held."""
        if self._max_entries == 0:
            return
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()


class _Usage:
    __slots__ = ("data_key", "messages", "bytes")

    def __init__(self, data_key: DataKey) -> None:
        self.data_key = data_key
        self.messages = 0
        self.bytes = 0

    def __repr__(self) -> str:
        return f"_Usage(messages={self.messages}, bytes={self.bytes})"


class DataKeyCache:
    """Both caches of one client. Thread-safe; two threads that miss at once may each fetch a
    key (the second one simply wins the slot)."""

    def __init__(self, policy: DataKeyCaching) -> None:
        self.policy = policy
        self._encrypt: _Expiring[_Usage] = _Expiring(policy.max_entries, policy.max_age, policy.clock)
        self._decrypt: _Expiring[DataKey] = _Expiring(policy.decrypt_max_entries, policy.decrypt_max_age, policy.clock)

    def __repr__(self) -> str:
        return f"DataKeyCache(encrypt_entries={len(self._encrypt)}, decrypt_entries={len(self._decrypt)})"

    def take_for_encrypt(self, key_id: str, encoded_context: bytes, plaintext_bytes: int) -> DataKey | None:
        """A cached data key with room for one more message of ``plaintext_bytes``, counted as
        used; None when there is none (an exhausted entry is dropped)."""
        slot = (key_id, encoded_context)
        with self._encrypt.lock:
            usage = self._encrypt.get(slot)
            if usage is None:
                return None
            if usage.messages >= self.policy.max_messages or usage.bytes + plaintext_bytes > self.policy.max_bytes:
                self._encrypt.discard(slot)
                return None
            usage.messages += 1
            usage.bytes += plaintext_bytes
            return usage.data_key

    def store_for_encrypt(self, key_id: str, encoded_context: bytes, data_key: DataKey, plaintext_bytes: int) -> None:
        """Caches a fresh data key that was just used for one message of ``plaintext_bytes``."""
        if plaintext_bytes > self.policy.max_bytes:
            return
        usage = _Usage(data_key)
        usage.messages, usage.bytes = 1, plaintext_bytes
        with self._encrypt.lock:
            self._encrypt.put((key_id, encoded_context), usage)

    def get_for_decrypt(self, wrapped_key: bytes, encoded_context: bytes) -> DataKey | None:
        with self._decrypt.lock:
            return self._decrypt.get((wrapped_key, encoded_context))

    def store_for_decrypt(self, wrapped_key: bytes, encoded_context: bytes, data_key: DataKey) -> None:
        with self._decrypt.lock:
            self._decrypt.put((wrapped_key, encoded_context), data_key)

    def clear(self) -> None:
        self._encrypt.clear()
        self._decrypt.clear()
