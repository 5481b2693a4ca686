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
        self._refill(now)
        if self.tokens >= count:
            self.tokens -= count
            return 0.0
        return (count - self.tokens) / self.limit.rate

    def charge(self, count: float, now: float) -> None:
        """Takes ``count`` tokens after the fact, going into debt down to ``-burst``: what was
        already spent (failed calls) is paid for by waiting before the next call."""
        self._refill(now)
        self.tokens = max(self.tokens - count, -self.limit.burst)

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0.0 when it is), taking nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.limit.rate

    def _refill(self, now: float) -> None:
        self.tokens = min(self.limit.burst, self.tokens + (now - self.updated) * self.limit.rate)
        self.updated = now
