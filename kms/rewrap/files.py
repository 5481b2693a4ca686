"""SDK ciphertext files in a directory tree.

Only the header changes in a re-wrap, but a file is never modified in place: the new header and
the unchanged body are written to a temporary file beside it, flushed to disk, and renamed over
the original (atomic on POSIX), so a crash leaves either the old file or the new one. The rename
happens only if the original is still the file that was read (same inode, size and mtime):
compare-and-set for files. Files are taken in sorted order of their relative paths, which is
what the checkpoint records.

Only a file's header is read into memory; it is the item's value, and the new header the job
verified is what is written before the body.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kms.rewrap.job import Item, Replacement, Unreadable
from kms.rewrap.values import UnreadableHeader, Unrecognized, read_sdk_ciphertext

TEMPORARY_SUFFIX = ".kms-rewrap"
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Read:
    path: Path
    identity: tuple[int, int, int]  # inode, size, mtime_ns when read
    header_length: int  # where the body starts


class DirectorySource:
    def __init__(self, root: Path, pattern: str = "*") -> None:
        self._root = root.resolve()
        self._pattern = pattern

    def describe(self) -> str:
        return f"files|{self._root}|{self._pattern}"

    def count(self) -> int | None:
        return sum(1 for _ in self._paths())

    def batches(self, after: Any, size: int) -> Iterator[Sequence[Item | Unreadable]]:
        self._remove_leftovers()
        batch: list[Item | Unreadable] = []
        for relative in self._paths():
            if after is not None and relative <= after:
                continue
            batch.append(self._item(relative))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def write(self, replacements: Sequence[Replacement]) -> list[bool]:
        return [self._replace(r.item.payload, r.value) for r in replacements]

    def _paths(self) -> Iterator[str]:
        found = (
            path.relative_to(self._root).as_posix()
            for path in self._root.rglob(self._pattern)
            if path.is_file() and not path.name.endswith(TEMPORARY_SUFFIX)
        )
        yield from sorted(found)

    def _item(self, relative: str) -> Item | Unreadable:
        path = self._root / relative
        try:
            with path.open("rb") as handle:
                status = os.fstat(handle.fileno())
                value = read_sdk_ciphertext(handle.read)
        except OSError as error:
            reason = f"cannot read the file: {error.strerror or type(error).__name__}"
            return Unreadable(relative, reason, version_unknown=True)
        except Unrecognized:
            return Unreadable(relative, "not an SDK ciphertext file")
        except UnreadableHeader as error:
            return Unreadable(relative, str(error), version_unknown=True)
        read = _Read(path, (status.st_ino, status.st_size, status.st_mtime_ns), len(value.data))
        return Item(relative, value, value.context_for_reading({}), read)

    def _replace(self, read: _Read, new_header: bytes) -> bool:
        temporary = read.path.with_name(f".{read.path.name}{TEMPORARY_SUFFIX}")
        try:
            with read.path.open("rb") as source, temporary.open("wb") as target:
                status = os.fstat(source.fileno())
                if (status.st_ino, status.st_size, status.st_mtime_ns) != read.identity:
                    return False
                target.write(new_header)
                source.seek(read.header_length)
                while chunk := source.read(_COPY_CHUNK):
                    target.write(chunk)
                target.flush()
                os.fsync(target.fileno())
            current = os.stat(read.path)
            if (current.st_ino, current.st_size, current.st_mtime_ns) != read.identity:
                return False
            os.replace(temporary, read.path)
            _fsync_directory(read.path.parent)
            return True
        finally:
            temporary.unlink(missing_ok=True)

    def _remove_leftovers(self) -> None:
        """Temporary files of a run that was killed before renaming them."""
        for leftover in self._root.rglob(f".*{TEMPORARY_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
