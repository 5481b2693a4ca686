"""Token buckets: ``rate`` tokens per second, holding at most ``burst``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    rate: float
    burst: float


@dataclass
class Bucket:
    limit: Limit
    tokens: float
    updated: float

    def take(self, count: float, now: float) -> float:
        """Takes ``count`` tokens and returns 0.0, or takes none and returns the seconds until
        ``count`` would be available."""
        self.tokens = min(self.limit.burst, self.tokens + (now - self.updated) * self.limit.rate)
        self.updated = now
        if self.tokens >= count:
            self.tokens -= count
            return 0.0
        return (count - self.tokens) / self.limit.rate
