"""What a re-wrap run did, item by item in aggregate, and what is left on old versions.

``kms keys retire --rewrap-report`` reads it: a version with items in ``remaining``, or any
version at all while ``unknown_version`` is not zero, is still in use as far as the run can tell.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    scanned: int = 0
    rewrapped: int = 0
    already_current: int = 0
    changed_concurrently: int = 0  # the application wrote the value meanwhile; left alone
    failed: int = 0  # every item not re-wrapped for a reason below, refused ones included
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    # Of the failed, items the job would not change because what was asked would break them (an
    # SDK ciphertext cannot move to another key); each is counted in ``remaining``.
    refused: int = 0
    # Of the failed, items it could not read far enough to tell which key version they are under
    # (a file it may not open, a header from a newer SDK): they may be under any version.
    unknown_version: int = 0
    # key id -> version -> items found under it (before re-wrapping)
    found: dict[str, dict[str, int]] = field(default_factory=dict)
    # key id -> version -> items still under an old version after the run (failed, refused, or
    # skipped because the application changed them: those are counted as remaining until a rerun)
    remaining: dict[str, dict[str, int]] = field(default_factory=dict)
    complete: bool = False
    dry_run: bool = False

    def saw(self, key_id: str, version: int) -> None:
        _bump(self.found, key_id, version)

    def left(self, key_id: str, version: int) -> None:
        _bump(self.remaining, key_id, version)

    def fail(self, reason: str, count: int = 1) -> None:
        self.failed += count
        failures = Counter(self.failures)
        failures[reason] += count
        self.failures = dict(failures)

    def fail_on(self, reason: str, key_id: str, version: int) -> None:
        """An item under (key_id, version) that stays there."""
        self.fail(reason)
        self.left(key_id, version)

    def refuse(self, reason: str, key_id: str, version: int) -> None:
        self.refused += 1
        self.fail_on(reason, key_id, version)

    def fail_unread(self, reason: str) -> None:
        self.unknown_version += 1
        self.fail(reason)

    def add(self, other: Report) -> None:
        """Counts ``other``, the report of one batch, into this one (batches done in parallel
        each count into a report of their own, added here in order)."""
        self.scanned += other.scanned
        self.rewrapped += other.rewrapped
        self.already_current += other.already_current
        self.changed_concurrently += other.changed_concurrently
        self.failed += other.failed
        self.refused += other.refused
        self.unknown_version += other.unknown_version
        failures = Counter(self.failures)
        failures.update(other.failures)
        self.failures = dict(failures)
        for mine, theirs in ((self.found, other.found), (self.remaining, other.remaining)):
            for key_id, versions in theirs.items():
                counted = mine.setdefault(key_id, {})
                for version, count in versions.items():
                    counted[version] = counted.get(version, 0) + count

    def remaining_on(self, key_id: str, version: int) -> int:
        return self.remaining.get(key_id, {}).get(str(version), 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _bump(table: dict[str, dict[str, int]], key_id: str, version: int) -> None:
    versions = table.setdefault(key_id, {})
    versions[str(version)] = versions.get(str(version), 0) + 1
