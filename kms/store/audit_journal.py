"""The audit journal: one JSON line per entry, appended before the call's result is released,
and read back by the audit writer, a process of its own that moves the lines into the chain.

Layout. A journal is a directory (mode 0700) of files named ``<nanoseconds, 20 digits>-<16 hex
digits>.jsonl``, so that names sort in the order the files were started. Each file is
preallocated to ``FILE_BYTES`` (``posix_fallocate``) and filled from its start with lines; the
unused rest is zero bytes. A line is a JSON array (no NUL byte anywhere: JSON escapes it)
followed by LF:

    [origin, time, identity, rpc, outcome, key_id, key_version, reason, request_id, peer,
     context_digest, item, detail]

``origin`` is ``<the file's hex id>:<line number from 1>``, unique in the chain; ``time`` is ISO
8601 with its UTC offset; ``key_version`` and ``item`` are integers, the rest strings (as
kms.domain.audit.AuditEntry). A line's position is (file name, line number).

One appender. A directory belongs to one process at a time (``owner.lock``, held with flock by
FileAuditJournal for its life): the reader relies on it, since "a newer file exists" is how it
knows an older one is complete.

Appending (FileAuditJournal) is a copy into a shared memory mapping: no system call on the hot
path, and it survives the process being killed at any instant exactly as a ``write`` would.
Nothing is fsynced per call (as with Vault's file audit device), so a power loss can lose the
newest lines. Because the blocks are reserved up front, a full disk shows as a file that cannot
be created (the calls then fail closed), never as a fault while writing into the mapping. A new
file is started when the current one is full, and at every start, so that the files of an
earlier process are complete as soon as a process appends again.

Reading (JournalTail), in the writer process: files in name order, lines in order. Bytes land
in a file only once, each going from zero to its final value, and no line holds a NUL; so a line
that ends in LF with no zero byte before it is complete, even while the appender's copy of a
later line is still in flight. In a file that is complete (a newer file exists), a last line
without its LF, or with zero bytes in it, was cut short by a crash: its call never returned, and
it is skipped. A file goes once all its lines are chained and a newer file exists.
``writer.lock`` (flock) keeps a second reader out: a writer whose appender was killed finishes
its batch before it exits, and the next one waits for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import secrets
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from kms.domain.audit import AuditEntry, JournaledEntry, JournalPosition

log = logging.getLogger(__name__)

FILE_BYTES = 16 * 1024 * 1024
OWNER_LOCK = "owner.lock"
WRITER_LOCK = "writer.lock"
_SUFFIX = ".jsonl"
# A position after every line of a file: "this file is done".
WHOLE_FILE = 2**62
_READ_AHEAD = 1024 * 1024  # bytes looked at per file and read; a line is far shorter


class JournalInUse(RuntimeError):
    """Another live process appends to this journal directory."""


def _locked(path: Path, *, wait: float) -> int:
    """An open descriptor of ``path`` holding its exclusive flock, waiting up to ``wait`` seconds
    (forever when negative)."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait < 0 else fcntl.LOCK_NB))
            return descriptor
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise JournalInUse(f"the audit journal {path.parent} is in use by another process") from None
            time.sleep(0.05)


class _File:
    def __init__(self, path: Path, mapping: mmap.mmap) -> None:
        self.path = path
        self.file_id = path.stem.rpartition("-")[2]
        self.mapping = mapping
        self.lines = 0
        self.size = 0


class FileAuditJournal:
    """The appending side (the serving process)."""

    def __init__(self, directory: Path, *, owner_wait: float = 10.0) -> None:
        """Takes the directory (waiting up to ``owner_wait`` seconds for a previous owner that is
        still exiting; raises JournalInUse after that) and starts a file."""
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._owner = _locked(directory / OWNER_LOCK, wait=owner_wait)
        self._lock = threading.Lock()
        earlier = sorted(path.name for path in directory.glob(f"*{_SUFFIX}"))
        # The newest file an earlier process left: everything up to its end waits to be chained.
        self.backlog: JournalPosition | None = (earlier[-1], WHOLE_FILE) if earlier else None
        self._current: _File | None = None
        with contextlib.suppress(OSError):  # a full disk: the first append tries again (or fails closed)
            self._current = self._open_new(0)

    def append(self, entries: Sequence[AuditEntry]) -> JournalPosition:
        """Writes ``entries`` and returns the position of the last. Raises OSError."""
        with self._lock:
            current = self._current or self._open_new(0)
            payload = _encode(current, entries)
            if current.size + len(payload) > len(current.mapping):
                current = self._open_new(len(payload))
                payload = _encode(current, entries)
            current.mapping[current.size : current.size + len(payload)] = payload
            current.lines += len(entries)
            current.size += len(payload)
            return current.path.name, current.lines

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.mapping.close()
                self._current = None
            if self._owner >= 0:
                os.close(self._owner)  # releases the flock
                self._owner = -1

    def _open_new(self, at_least: int) -> _File:
        previous, self._current = self._current, None  # a failure below must not leave a closed one
        if previous is not None:
            previous.mapping.close()
        path = self.directory / f"{time.time_ns():020d}-{secrets.token_hex(8)}{_SUFFIX}"
        size = max(FILE_BYTES, at_least)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(descriptor, 0, size)
            mapping = mmap.mmap(descriptor, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(descriptor)
            path.unlink(missing_ok=True)
            raise
        os.close(descriptor)  # the mapping keeps the file open
        self._current = _File(path, mapping)
        return self._current


class _Reading:
    """How far the tail has read one file, and how far its lines are chained."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0  # read so far (torn ones included: positions count them)
        self.chained = 0
        self.complete = False  # a newer file exists, and everything in it was read


class JournalTail:
    """The reading side (the writer process): lines in order, each once; files go once their
    lines are chained."""

    def __init__(self, directory: Path, *, writer_wait: float = -1) -> None:
        """Takes ``writer.lock``: waits (by default as long as it takes) for a writer that is
        still finishing."""
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._writer = _locked(directory / WRITER_LOCK, wait=writer_wait)
        self._files: dict[str, _Reading] = {}

    def read(self, limit: int) -> list[JournaledEntry]:
        """Up to ``limit`` complete lines not read before, in order."""
        names = sorted(path.name for path in self.directory.glob(f"*{_SUFFIX}"))
        lines: list[JournaledEntry] = []
        for index, name in enumerate(names):
            reading = self._files.get(name)
            if reading is None:
                reading = self._files[name] = _Reading(self.directory / name)
            if reading.complete:
                continue
            newest = index == len(names) - 1
            try:
                self._read_file(reading, lines, limit, complete=not newest)
            except FileNotFoundError:
                self._files.pop(name, None)
                continue
            if len(lines) >= limit:
                break
        return lines

    def chained(self, through: JournalPosition) -> None:
        """Every line up to ``through`` is in the chain (lines are chained in order)."""
        for name, reading in self._files.items():
            if name < through[0]:
                reading.chained = reading.lines
            elif name == through[0]:
                reading.chained = max(reading.chained, through[1])

    def settle(self) -> JournalPosition | None:
        """Removes the complete files all of whose lines are chained; returns the position up
        to which everything read is chained (a removed file's as (name, WHOLE_FILE)), or None."""
        settled: JournalPosition | None = None
        for name in sorted(self._files):
            reading = self._files[name]
            if not (reading.complete and reading.chained >= reading.lines):
                return (name, reading.chained) if reading.chained else settled
            reading.path.unlink(missing_ok=True)
            del self._files[name]
            settled = (name, WHOLE_FILE)
        return settled

    def close(self) -> None:
        if self._writer >= 0:
            os.close(self._writer)
            self._writer = -1

    def _read_file(self, reading: _Reading, lines: list[JournaledEntry], limit: int, *, complete: bool) -> None:
        # ``complete`` was decided from a listing made before this read: every byte the appender
        # wrote to this file before it started the newer one is visible now.
        with open(reading.path, "rb") as file:
            if os.fstat(file.fileno()).st_size <= reading.offset:  # empty: its creation was cut short
                reading.complete = complete
                return
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
                window = reading.offset + _READ_AHEAD
                end = mapping.find(b"\0", reading.offset, window)
                clipped = end < 0 and window < len(mapping)
                end = min(len(mapping), window) if end < 0 else end
                chunk = mapping[reading.offset : end]
                consumed = self._take_lines(reading, chunk, lines, limit)
                reading.offset += consumed
                if not complete or clipped or len(lines) >= limit:
                    return
                if consumed < len(chunk) or mapping[end : end + _READ_AHEAD].strip(b"\0"):
                    log.warning(
                        "torn audit journal line skipped (cut short by a crash)",
                        extra={"fields": {"file": reading.path.name}},
                    )
                reading.complete = True

    @staticmethod
    def _take_lines(reading: _Reading, chunk: bytes, lines: list[JournaledEntry], limit: int) -> int:
        """Parses the complete lines at the start of ``chunk`` (up to ``limit`` in ``lines``);
        returns how many bytes they took."""
        consumed = 0
        while len(lines) < limit:
            newline = chunk.find(b"\n", consumed)
            if newline < 0:
                break
            raw = chunk[consumed:newline]
            consumed = newline + 1
            reading.lines += 1
            try:
                origin, entry = _parse(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable audit journal line skipped", extra={"fields": {"file": reading.path.name}})
                continue
            lines.append(JournaledEntry((reading.path.name, reading.lines), origin, entry))
        return consumed


def _encode(journal_file: _File, entries: Sequence[AuditEntry]) -> bytes:
    first = journal_file.lines + 1
    prefix = journal_file.file_id
    return b"".join(_line(f"{prefix}:{first + i}", entry) for i, entry in enumerate(entries))


def _line(origin: str, entry: AuditEntry) -> bytes:
    return (
        json.dumps(
            [
                origin,
                entry.time.isoformat(),
                entry.identity,
                entry.rpc,
                entry.outcome,
                entry.key_id,
                entry.key_version,
                entry.reason,
                entry.request_id,
                entry.peer,
                entry.context_digest,
                entry.item,
                entry.detail,
            ],
            separators=(",", ":"),
        ).encode()
        + b"\n"
    )


def _parse(raw: bytes) -> tuple[str, AuditEntry]:
    (origin, when, identity, rpc, outcome, key_id, key_version, reason, request_id, peer, digest, item, detail) = (
        json.loads(raw)
    )
    entry = AuditEntry(
        time=datetime.fromisoformat(when),
        identity=identity,
        rpc=rpc,
        outcome=outcome,
        key_id=key_id,
        key_version=key_version,
        reason=reason,
        request_id=request_id,
        peer=peer,
        context_digest=digest,
        item=item,
        detail=detail,
    )
    return origin, entry
