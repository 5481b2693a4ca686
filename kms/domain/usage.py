"""Counting how versions are used, cheaply: in memory per process, added to the database in
batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class UsageDelta:
    wraps: int = 0
    unwraps: int = 0
    last_used: datetime | None = None

    def add(self, wraps: int, unwraps: int, when: datetime) -> None:
        self.wraps += wraps
        self.unwraps += unwraps
        if self.last_used is None or when > self.last_used:
            self.last_used = when
