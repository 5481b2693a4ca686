"""The real clock. Anything time-dependent takes a kms.ports.Clock so tests can inject another."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
