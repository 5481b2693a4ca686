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

Memory. A cached plaintext data key lives in one ``bytearray`` owned by its cache entry, and
the cache overwrites it with zeros when the entry leaves: evicted as least recently used,
expired, used up (``max_messages``, ``max_bytes``), replaced, discarded, or cleared
(``clear_data_key_cache()``, ``KmsClient.close()``, the end of a ``with KmsClient(...)`` block).
An entry that another thread is using at that moment is wiped as soon as that use ends.
Expiry is checked at every cache operation, so the keys of an idle client are wiped at its next
``encrypt``/``decrypt``, ``clear_data_key_cache()`` or ``close()``; there is no timer thread.

What the SDK cannot wipe, so that nobody relies on it:

- the plaintext field of a ``GenerateDataKey`` or ``Decrypt`` response: protobuf hands it out
  as immutable ``bytes`` (and gRPC read it through buffers of its own). There is one such copy
  per call to the service, cached or not; it is garbage once the call that fetched it returns,
  but freed memory is not cleared;
- whatever deriving a message's keys copies: HKDF (pyca/cryptography) reads the bytearray in
  place, but ``envelope.derive_message_keys`` currently hands it a ``bytes`` copy, one per
  message; the derived frame and header keys are ``bytes`` for the life of one message, and
  ``AESGCM`` keeps a copy of the frame key of its own (OpenSSL cipher contexts) for as long;
- copies made by the operating system (swap, core dumps): turn those off for processes that
  hold keys.

Keys never appear in a repr, a log or an exception, and cache entries refuse to be copied or
pickled.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NoReturn

from kms_client.types import DataKey

MAX_AGE_CEILING = 24 * 3600.0
MAX_MESSAGES_CEILING = 2**32
MAX_BYTES_CEILING = 2**40


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
            (
                0 < self.decrypt_max_age <= MAX_AGE_CEILING,
                f"decrypt_max_age must be in (0, {MAX_AGE_CEILING:.0f}] seconds",
            ),
            (1 <= self.max_messages <= MAX_MESSAGES_CEILING, f"max_messages must be 1 to {MAX_MESSAGES_CEILING}"),
            (1 <= self.max_bytes <= MAX_BYTES_CEILING, f"max_bytes must be 1 to {MAX_BYTES_CEILING}"),
            (self.max_entries >= 0, "max_entries must be >= 0 (0 turns encrypt-side caching off)"),
            (self.decrypt_max_entries >= 0, "decrypt_max_entries must be >= 0 (0 turns decrypt-side caching off)"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class CachedDataKey:
    """A data key held by a DataKeyCache: its identity in clear, its plaintext in a bytearray
    that this entry owns and overwrites with zeros when the cache lets go of it.

    ``plaintext`` is a read-only view of that bytearray, valid while the entry is leased (see
    ``DataKeyCache``); it raises once the key has been wiped. ``sealed_messages`` and
    ``sealed_bytes`` count what the encrypt side has sealed under the key.
    """

    __slots__ = (
        "_leases",
        "_retired",
        "_secret",
        "_wiped",
        "key_id",
        "key_version",
        "sealed_bytes",
        "sealed_messages",
        "wrapped_key",
    )

    def __init__(self, data_key: DataKey) -> None:
        self._wiped = True  # until the copy below exists, for __del__
        self.key_id = data_key.key_id
        self.key_version = data_key.key_version
        self.wrapped_key = data_key.wrapped_key
        self.sealed_messages = 0
        self.sealed_bytes = 0
        self._leases = 0
        self._retired = False
        # The one copy the cache owns. ``data_key.plaintext`` is protobuf's immutable bytes,
        # which cannot be wiped: the caller drops it once the call that fetched it is over.
        self._secret = bytearray(data_key.plaintext)
        self._wiped = False

    @property
    def plaintext(self) -> memoryview:
        if self._wiped:
            raise RuntimeError("this cached data key has been wiped")
        return memoryview(self._secret).toreadonly()

    @property
    def wiped(self) -> bool:
        return self._wiped

    def _wipe(self) -> None:
        # Same-length slice assignment writes in place: the bytearray is never resized (views
        # handed out by ``plaintext`` would forbid that anyway), so no copy is left behind.
        if not self._wiped:
            self._secret[:] = bytes(len(self._secret))
            self._wiped = True

    def __del__(self) -> None:
        # A safety net for entries that are dropped without being retired, such as those of a
        # cache that is garbage-collected without clear().
        self._wipe()

    def __reduce__(self) -> NoReturn:
        raise TypeError("a cached data key cannot be copied or pickled")

    def __repr__(self) -> str:
        return (
            f"CachedDataKey(key_id={self.key_id!r}, key_version={self.key_version}, "
            f"sealed_messages={self.sealed_messages}, sealed_bytes={self.sealed_bytes}, wiped={self._wiped})"
        )


class _KeyMap:
    """A thread-safe LRU map of cached data keys, each expiring ``max_age`` after insertion.

    Every entry that leaves the map is retired: wiped at once, or when its last lease ends.
    Methods other than ``clear`` and ``entries`` are called with ``lock`` held.
    """

    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float]) -> None:
        self._lru: OrderedDict[Hashable, CachedDataKey] = OrderedDict()  # least recently used first
        self._born: OrderedDict[Hashable, float] = OrderedDict()  # oldest first: the expiry order
        self._max_entries = max_entries
        self._max_age = max_age
        self._clock = clock
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0

    def get(self, key: Hashable) -> CachedDataKey | None:
        """The live entry for ``key``, now the most recently used."""
        self._expire()
        entry = self._lru.get(key)
        if entry is not None:
            self._lru.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: CachedDataKey) -> None:
        """Inserts ``entry``, retiring the one it replaces and the least recently used beyond
        ``max_entries``."""
        self._expire()
        if not self.enabled:
            _retire(entry)
            return
        self.discard(key)
        self._lru[key] = entry
        self._born[key] = self._clock()
        while len(self._lru) > self._max_entries:
            self.discard(next(iter(self._lru)))

    def discard(self, key: Hashable) -> None:
        entry = self._lru.pop(key, None)
        if entry is not None:
            del self._born[key]
            _retire(entry)

    def acquire(self, entry: CachedDataKey) -> None:
        entry._leases += 1

    def release(self, entry: CachedDataKey) -> None:
        entry._leases -= 1
        if entry._retired and entry._leases == 0:
            entry._wipe()

    def clear(self) -> None:
        with self.lock:
            while self._lru:
                self.discard(next(iter(self._lru)))

    def discard_where(self, matches: Callable[[Hashable], bool]) -> None:
        with self.lock:
            for key in [key for key in self._lru if matches(key)]:
                self.discard(key)

    def entries(self) -> list[CachedDataKey]:
        with self.lock:
            self._expire()
            return list(self._lru.values())

    def _expire(self) -> None:
        now = self._clock()
        while self._born:
            key, born = next(iter(self._born.items()))
            if now - born < self._max_age:
                return
            self.discard(key)


def _retire(entry: CachedDataKey) -> None:
    entry._retired = True
    if entry._leases == 0:
        entry._wipe()


class DataKeyCache:
    """Both caches of one client. Thread-safe; two threads that miss at once may each fetch a
    key (the second one wins the slot, and the first one's copy is wiped).

    ``take_for_encrypt`` and ``get_for_decrypt`` are context managers that lease the entry they
    yield (None on a miss): it is not wiped before the ``with`` block ends, even if it is evicted
    meanwhile. Use its ``plaintext`` inside the block only, and keep no reference to it.
    """

    def __init__(self, policy: DataKeyCaching) -> None:
        self.policy = policy
        self._encrypt = _KeyMap(policy.max_entries, policy.max_age, policy.clock)
        self._decrypt = _KeyMap(policy.decrypt_max_entries, policy.decrypt_max_age, policy.clock)

    def __repr__(self) -> str:
        return f"DataKeyCache(encrypt_entries={len(self._encrypt)}, decrypt_entries={len(self._decrypt)})"

    @contextmanager
    def take_for_encrypt(
        self, key_id: str, encoded_context: bytes, plaintext_bytes: int
    ) -> Iterator[CachedDataKey | None]:
        """A cached data key with room for one more message of ``plaintext_bytes``, counted as
        used; None when there is none (an exhausted entry is dropped, and wiped)."""
        slot = (key_id, encoded_context)
        with self._encrypt.lock:
            entry = self._encrypt.get(slot)
            if entry is not None and (
                entry.sealed_messages >= self.policy.max_messages
                or entry.sealed_bytes + plaintext_bytes > self.policy.max_bytes
            ):
                self._encrypt.discard(slot)
                entry = None
            if entry is not None:
                entry.sealed_messages += 1
                entry.sealed_bytes += plaintext_bytes
                self._encrypt.acquire(entry)
                if self._used_up(entry):  # no further message fits: wiped once this one is done
                    self._encrypt.discard(slot)
        try:
            yield entry
        finally:
            self._release(self._encrypt, entry)

    def store_for_encrypt(self, key_id: str, encoded_context: bytes, data_key: DataKey, plaintext_bytes: int) -> None:
        """Caches a copy of a fresh data key that was just used for one message of
        ``plaintext_bytes`` (nothing is copied when no further message could use it)."""
        if not self._encrypt.enabled or plaintext_bytes > self.policy.max_bytes:
            return
        entry = CachedDataKey(data_key)
        entry.sealed_messages, entry.sealed_bytes = 1, plaintext_bytes
        if self._used_up(entry):
            entry._wipe()
            return
        with self._encrypt.lock:
            self._encrypt.put((key_id, encoded_context), entry)

    @contextmanager
    def get_for_decrypt(self, wrapped_key: bytes, encoded_context: bytes) -> Iterator[CachedDataKey | None]:
        with self._decrypt.lock:
            entry = self._decrypt.get((wrapped_key, encoded_context))
            if entry is not None:
                self._decrypt.acquire(entry)
        try:
            yield entry
        finally:
            self._release(self._decrypt, entry)

    def store_for_decrypt(self, wrapped_key: bytes, encoded_context: bytes, data_key: DataKey) -> None:
        """Caches a copy of the data key the service unwrapped from ``wrapped_key``."""
        if not self._decrypt.enabled:
            return
        entry = CachedDataKey(data_key)
        with self._decrypt.lock:
            self._decrypt.put((wrapped_key, encoded_context), entry)

    def clear(self) -> None:
        """Drops every entry; each key is wiped now, or when the thread using it is done."""
        self._encrypt.clear()
        self._decrypt.clear()

    def forget_subject(self, key_id: str, subject: str) -> None:
        """Drops the entries of ``key_id`` whose encryption context holds ``subject`` as a value
        (after EraseSubject, no data key of that subject is used again here). Matching is on
        the canonical context encoding, so an entry that merely contains those bytes goes too:
        dropping a key costs at most one more call to the service."""
        encoded = subject.encode("utf-8")
        needle = len(encoded).to_bytes(2, "big") + encoded
        named = key_id.encode("ascii", "replace")

        def under_key(wrapped: object) -> bool:  # formats 1 and 2 name their key at [2, 2+L)
            return isinstance(wrapped, bytes) and len(wrapped) > 2 and wrapped[2 : 2 + wrapped[1]] == named

        self._encrypt.discard_where(lambda slot: slot[0] == key_id and needle in slot[1])  # type: ignore[index]
        self._decrypt.discard_where(lambda slot: under_key(slot[0]) and needle in slot[1])  # type: ignore[index]

    def entries(self) -> list[CachedDataKey]:
        """The live entries, encrypt side first (for diagnostics and tests; expired ones are
        dropped first). Their reprs show no key material."""
        return self._encrypt.entries() + self._decrypt.entries()

    def _used_up(self, entry: CachedDataKey) -> bool:
        return entry.sealed_messages >= self.policy.max_messages or entry.sealed_bytes >= self.policy.max_bytes

    @staticmethod
    def _release(keys: _KeyMap, entry: CachedDataKey | None) -> None:
        if entry is not None:
            with keys.lock:
                keys.release(entry)
