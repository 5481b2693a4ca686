"""One SQLite write transaction at a time per database file in this process, handed over in
the order the writers arrived.

SQLite has one write lock per database, and a writer that finds it taken waits in SQLite's busy
handler, which sleeps and polls: 1, 2, 5, 10 ... then every 100 ms. Under many concurrent
writers (a burst of CreateKey, the audit writer, the usage flush) the lock is free most of the
time while everyone sleeps, throughput collapses, and a writer that keeps losing the race
gives up after busy_timeout (DatabaseUnavailable) or, if it is the audit writer, holds the
audit chain back until calls fail closed. Queueing this process's writers here before BEGIN
IMMEDIATE hands the lock to the next one the moment the previous one commits, and none waits
longer than the writers ahead of it take.

Other processes on the same file (the audit writer, the workers of ``kms serve --workers``, the
CLI) would still meet SQLite's busy handler, which polls every 100 ms: against writers handed
the lock back to back here, such a process waited seconds for each transaction (measured: up to
4.6 s under eight writers), and the audit writer falling that far behind makes every call fail
closed. So the turn also takes an flock on a file beside the database (``<file>.writer.lock``),
given up between any two transactions, and a process waiting for it polls it every few
milliseconds: it gets in at the next handover instead of hoping that one falls on its 100 ms
tick.

The lock is taken when a write transaction begins (kms.store.database) and released by the
connection once the transaction has ended, committed or rolled back; so a connection class
made per database file (``connection_class``) carries it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import deque

log = logging.getLogger(__name__)

# A writer that waits longer than this fails as one that met SQLite's busy_timeout would.
WAIT_SECONDS = 30.0
# How often a writer waiting for another process polls the shared lock file: first, and at most.
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0005, 0.002


class WriterQueue:
    """A lock that waiters get in arrival order within this process, shared with other
    processes through an flock on ``lock_path`` (None: this process only)."""

    def __init__(self, lock_path: str | None = None) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Lock] = deque()
        self._lock_path = lock_path
        self._descriptor: int | None = None

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._take_turn(timeout):
            return False
        try:
            if self._lock_file(deadline):
                return True
        except BaseException:
            self._pass_turn()
            raise
        self._pass_turn()
        return False

    def release(self) -> None:
        try:
            self._unlock_file()  # first: another process may take it before our next writer does
        finally:
            self._pass_turn()

    def _take_turn(self, timeout: float) -> bool:
        with self._lock:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=timeout):
            return True  # handed over by _pass_turn(): held on our behalf
        with self._lock:
            try:
                self._waiters.remove(turn)
            except ValueError:
                return True  # handed over just as the wait ran out
        return False

    def _pass_turn(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()  # stays held, now by the next writer
            else:
                self._held = False

    def _lock_file(self, deadline: float) -> bool:
        """Called by the turn's holder only, so one thread at a time uses the descriptor."""
        if self._lock_path is None:
            return True
        pause = _FIRST_PAUSE
        while True:
            try:
                if self._descriptor is None:
                    self._descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                # Polled rather than blocked on, so that the wait keeps its deadline.
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
            except OSError as error:
                # No lock file to be had (a file system without flock, say): this process's
                # queue still holds, and other processes meet SQLite's busy handler as before.
                log.warning("sqlite writer lock file unusable", extra={"fields": {"error": type(error).__name__}})
                self._lock_path = None
                return True

    def _unlock_file(self) -> None:
        if self._descriptor is not None and self._lock_path is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)


_classes: dict[str, type[sqlite3.Connection]] = {}
_registry_lock = threading.Lock()


def connection_class(database: str) -> type[sqlite3.Connection]:
    """The sqlite3 connection class for ``database`` (a path): every engine of this process on
    that file shares its writer queue."""
    with _registry_lock:
        found = _classes.get(database)
        if found is None:
            queue = WriterQueue(f"{database}.writer.lock")
            found = type("QueuedWriterConnection", (_QueuedWriterConnection,), {"_queue": queue})
            _classes[database] = found
        return found


class _QueuedWriterConnection(sqlite3.Connection):
    _queue: WriterQueue
    _writing = False

    def queue_for_write(self) -> bool:
        """Waits for this process's writers ahead of this one; False when that takes too long
        (the caller then fails as SQLite's busy_timeout would have). The caller begins the
        transaction next, and calls ``write_not_begun`` if it could not."""
        if not self._queue.acquire(WAIT_SECONDS):
            return False
        self._writing = True
        return True

    def write_not_begun(self) -> None:
        self._end_write_if_over()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._end_write_if_over()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._end_write_if_over()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._end_write()

    def _end_write_if_over(self) -> None:
        try:
            over = not self.in_transaction
        except sqlite3.ProgrammingError:  # closed: no transaction survives that
            over = True
        if over:
            self._end_write()

    def _end_write(self) -> None:
        if self._writing:
            self._writing = False
            self._queue.release()
