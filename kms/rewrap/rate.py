"""A token bucket: at most ``rate`` items per second on average, bursts of up to one second's
worth."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimit:
    def __init__(
        self,
        rate: float | None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._rate = rate
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = rate or 0.0
        self._last = monotonic()

    def take(self, count: int) -> None:
        """Waits until ``count`` items may go."""
        if not self._rate:
            return
        now = self._monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= count
        if self._tokens < 0:
            wait = -self._tokens / self._rate
            self._sleep(wait)
            self._last = self._monotonic()
            self._tokens = 0.0
