"""Key handles for the hot path, shared by every session of the process.

Two kinds of key back a key version:

- a token object (``HSM_OBJECT`` storage), found once per process by its CKA_ID, vetted once
  (kms.hsm.trust), and its handle kept until the connection to the module is reset;
- a version's wrapped material (``WRAPPED`` storage), unwrapped under the root key into a
  session object that is sensitive and not extractable, held by a dedicated session of the pool
  (session objects die with the session that made them) and shared by every pooled session.

Both are kept in one bounded LRU keyed by the version's material id. A handle is reference
counted while an operation uses it, so evicting one never destroys a key under a running call;
an evicted unwrapped key is destroyed when its last user lets go. Searching and unwrapping never
happen with a database lock held (the caller resolves the handle before its transaction).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    handle: int
    generation: Hashable
    destroy: Callable[[int], None] | None  # for unwrapped session objects; None for token objects
    users: int = 0
    evicted: bool = False


class HandleCache:
    """Handles by material id, found or unwrapped at most once each while cached."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        # One loader per material id at a time, so that a burst of first uses unwraps once.
        self._loading: dict[str, threading.Lock] = {}

    @contextmanager
    def use(
        self,
        material_id: str,
        generation: Hashable,
        load: Callable[[], tuple[int, Callable[[int], None] | None]],
    ) -> Iterator[int]:
        """The handle of ``material_id`` for the duration of the block. ``load`` finds or
        unwraps it on a miss, returning (handle, destroy or None)."""
        entry = self._acquire(material_id, generation)
        if entry is None:
            with self._loader(material_id):
                entry = self._acquire(material_id, generation)
                if entry is None:
                    handle, destroy = load()
                    entry = self._insert(material_id, _Entry(handle, generation, destroy, users=1))
        try:
            yield entry.handle
        finally:
            self._release(entry)

    def forget(self, material_id: str) -> None:
        """Drops a handle found invalid (the object was destroyed or the module reset)."""
        with self._lock:
            entry = self._entries.pop(material_id, None)
            if entry is not None:
                entry.evicted = True
                self._destroy_if_idle(entry)

    def clear(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), OrderedDict()
            for entry in entries:
                entry.evicted = True
                self._destroy_if_idle(entry)

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals ---------------------------------------------------------------------

    def _acquire(self, material_id: str, generation: Hashable) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(material_id)
            if entry is None:
                return None
            if entry.generation != generation:  # from before a reconnection: the handle means nothing now
                del self._entries[material_id]
                entry.evicted = True
                entry.destroy = None  # the module was reset; nothing to destroy
                return None
            entry.users += 1
            self._entries.move_to_end(material_id)
            return entry

    def _insert(self, material_id: str, entry: _Entry) -> _Entry:
        with self._lock:
            replaced = self._entries.pop(material_id, None)
            if replaced is not None:
                replaced.evicted = True
                self._destroy_if_idle(replaced)
            self._entries[material_id] = entry
            while len(self._entries) > self._capacity:
                _, oldest = self._entries.popitem(last=False)
                oldest.evicted = True
                self._destroy_if_idle(oldest)
            return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            self._destroy_if_idle(entry)

    def _destroy_if_idle(self, entry: _Entry) -> None:
        """Called with the lock held."""
        if entry.evicted and entry.users == 0 and entry.destroy is not None:
            destroy, entry.destroy = entry.destroy, None
            try:
                destroy(entry.handle)
            except Exception as error:  # noqa: BLE001 - a session object left behind dies with its session anyway
                log.warning("unwrapped key not destroyed", extra={"fields": {"error": type(error).__name__}})

    @contextmanager
    def _loader(self, material_id: str) -> Iterator[None]:
        with self._lock:
            lock = self._loading.setdefault(material_id, threading.Lock())
        with lock:
            yield
        with self._lock:
            if self._loading.get(material_id) is lock and not lock.locked():
                del self._loading[material_id]
