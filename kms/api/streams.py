"""Streams hold a server thread for as long as they are open, so they are rationed.

A stream is counted once its caller has been authorized for it (an identity without the
permission never holds a slot): at most ``max_streams`` at once on this server and
``per_identity`` per identity, so neither a crowd nor one caller can take the threads that
unary calls and health checks need (the server keeps ``max_streams`` at most half its workers).
A stream that makes no progress for ``idle_timeout`` seconds (no request read, no response
taken by the client) is cancelled, which frees its thread even when it is blocked sending to a
client that stopped reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from kms.errors import TooManyStreams

log = logging.getLogger(__name__)


class StreamSlot:
    __slots__ = ("_context", "_limits", "identity", "idle", "last_progress")

    def __init__(self, limits: StreamLimits, identity: str, context: grpc.ServicerContext, now: float) -> None:
        self._limits = limits
        self.identity = identity
        self._context = context
        self.last_progress = now
        # Set when the watchdog cancelled the stream for making no progress.
        self.idle = False

    def progress(self) -> None:
        self.last_progress = self._limits.now()

    def close(self) -> None:
        self._limits.release(self)

    def cancel_idle(self) -> None:
        self.idle = True
        self._context.cancel()


class StreamLimits:
    def __init__(
        self,
        max_streams: int,
        per_identity: int,
        idle_timeout: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_streams = max_streams
        self._per_identity = per_identity
        self._idle_timeout = idle_timeout
        self.now = monotonic
        self._lock = threading.Lock()
        self._slots: set[StreamSlot] = set()
        self._by_identity: dict[str, int] = {}
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="kms-streams", daemon=True)
        self._watchdog.start()

    def open(self, identity: str, context: grpc.ServicerContext) -> StreamSlot:
        """A slot for a stream of ``identity``; raises TooManyStreams when none is free."""
        with self._lock:
            if len(self._slots) >= self._max_streams:
                raise TooManyStreams(self._max_streams)
            if self._by_identity.get(identity, 0) >= self._per_identity:
                raise TooManyStreams(self._per_identity, per_identity=True)
            slot = StreamSlot(self, identity, context, self.now())
            self._slots.add(slot)
            self._by_identity[identity] = self._by_identity.get(identity, 0) + 1
        return slot

    def release(self, slot: StreamSlot) -> None:
        with self._lock:
            if slot in self._slots:
                self._slots.discard(slot)
                left = self._by_identity[slot.identity] - 1
                if left:
                    self._by_identity[slot.identity] = left
                else:
                    del self._by_identity[slot.identity]

    def cancel_idle(self) -> int:
        """Cancels the streams idle for longer than the timeout; returns how many."""
        now = self.now()
        with self._lock:
            idle = [slot for slot in self._slots if not slot.idle and now - slot.last_progress > self._idle_timeout]
        for slot in idle:
            log.info("idle stream cancelled", extra={"fields": {"identity": slot.identity}})
            slot.cancel_idle()
        return len(idle)

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self._idle_timeout / 4)):
            self.cancel_idle()
