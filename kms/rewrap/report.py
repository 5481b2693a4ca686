"""What a re-wrap run did, item by item in aggregate, and what is left on old versions."""

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
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    # key id -> version -> items found under it (before re-wrapping)
    found: dict[str, dict[str, int]] = field(default_factory=dict)
    # key id -> version -> items still under an old version after the run (failed, or skipped
    # because the application changed them: those are counted as remaining until a rerun)
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

    def remaining_on(self, key_id: str, version: int) -> int:
        return self.remaining.get(key_id, {}).get(str(version), 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _bump(table: dict[str, dict[str, int]], key_id: str, version: int) -> None:
    versions = table.setdefault(key_id, {})
    versions[str(version)] = versions.get(str(version), 0) + 1
