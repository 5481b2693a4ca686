"""The audit journal: one JSON line per entry, appended before the call's result is released.

Journal files are preallocated (``posix_fallocate``) and memory-mapped shared: appending is a
copy into the kernel's page cache, with no system call on the hot path, and it survives the
process being killed at any instant, exactly as a ``write`` would. Nothing is fsynced per call
(as with Vault's file audit device), so a power loss can lose the newest lines. Because the
blocks are reserved up front, a full disk shows as a file that cannot be created (the calls then
fail closed), never as a fault while writing into the mapping.

Lines are moved into the hash-chained log by the audit writer, in whatever order callers'
appends reached it, and a file is deleted once it is no longer the one being appended to and
every line in it is there (counted per file). A file is named ``<nanoseconds>-<random>.jsonl``; each line's origin is
``<that random id>:<line number>``. Unused space at a file's end is zero bytes.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from kms.domain.audit import AuditEntry

FILE_BYTES = 16 * 1024 * 1024


class _File:
    def __init__(self, path: Path, file_id: str, mapping: mmap.mmap | None = None) -> None:
        self.path = path
        self.file_id = file_id
        self.mapping = mapping
        self.lines = 0
        self.committed = 0
        self.size = 0


class FileAuditJournal:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._current: _File | None = None

    def append(self, entries: list[AuditEntry]) -> list[str]:
        with self._lock:
            current = self._current or self._open_new(0)
            origins, payload = _encode(current, entries)
            if current.size + len(payload) > len(current.mapping):
                current = self._open_new(len(payload))
                origins, payload = _encode(current, entries)
            current.mapping[current.size : current.size + len(payload)] = payload
            current.lines += len(entries)
            current.size += len(payload)
            return origins

    def recover(self) -> list[tuple[str, AuditEntry]]:
        """Entries of files left by an earlier process, oldest file first. A torn last line (a
        write cut short by a power loss) is skipped: its call never returned."""
        recovered = []
        for path in sorted(self._directory.glob("*.jsonl")):
            file_id = path.stem.rsplit("-", 1)[-1]
            if file_id in self._files:
                continue
            state = self._files[file_id] = _File(path, file_id)
            for raw in path.read_bytes().rstrip(b"\0").splitlines():
                try:
                    origin, entry = _parse(raw)
                except (ValueError, KeyError, TypeError):
                    continue
                recovered.append((origin, entry))
                state.lines += 1  # the lines that will be committed, torn ones left out
            if not state.lines:
                self._forget(state)
        return recovered

    def committed(self, origins: Sequence[str]) -> None:
        per_file = Counter(origin.rpartition(":")[0] for origin in origins)
        with self._lock:
            for file_id, count in per_file.items():
                state = self._files.get(file_id)
                if state is not None:
                    state.committed += count
                    self._forget_if_done(state)

    def close(self) -> None:
        with self._lock:
            self._unmap(self._current)
            self._current = None

    def _open_new(self, at_least: int) -> _File:
        previous = self._current
        self._unmap(previous)
        self._current = None  # until the next file exists: a failure here must not leave a closed one
        if previous is not None:
            self._forget_if_done(previous)
        file_id = secrets.token_hex(8)
        path = self._directory / f"{time.time_ns()}-{file_id}.jsonl"
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
        self._current = self._files[file_id] = _File(path, file_id, mapping)
        return self._current  # type: ignore[return-value]

    @staticmethod
    def _unmap(state: _File | None) -> None:
        if state is not None and state.mapping is not None:
            state.mapping.close()
            state.mapping = None

    def _forget_if_done(self, state: _File) -> None:
        if state is not self._current and state.committed >= state.lines:
            self._forget(state)

    def _forget(self, state: _File) -> None:
        state.path.unlink(missing_ok=True)
        self._files.pop(state.file_id, None)


def _encode(journal_file: _File, entries: list[AuditEntry]) -> tuple[list[str], bytes]:
    origins = [f"{journal_file.file_id}:{journal_file.lines + i}" for i in range(1, len(entries) + 1)]
    return origins, b"".join(_line(origin, entry) for origin, entry in zip(origins, entries, strict=True))


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
