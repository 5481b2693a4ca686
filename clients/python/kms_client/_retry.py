"""Retrying UNAVAILABLE (and RESOURCE_EXHAUSTED) with exponential backoff and full jitter,
never past the caller's deadline and never for any other code."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from kms_client.errors import KmsError, ResourceExhausted, Unavailable

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def run(
        self,
        attempt: Callable[[float | None], T],
        deadline: float | None,
        sleep: Callable[[float], object] = time.sleep,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> T:
        """Calls ``attempt(remaining_seconds)`` until it succeeds, raises a non-retryable
        error, runs out of attempts, or the next wait would pass ``deadline`` (a ``monotonic``
        value). Waits with ``sleep``, a uniform draw from ``rng`` (the ``random`` module's)
        between 0 and the current backoff, or longer when the service said how long."""
        uniform = (rng or random).uniform
        backoff = self.initial_backoff
        for number in range(1, self.max_attempts + 1):
            remaining = None if deadline is None else deadline - monotonic()
            try:
                return attempt(remaining)
            except (Unavailable, ResourceExhausted) as error:
                if number == self.max_attempts:
                    raise
                wait = uniform(0, backoff)
                if isinstance(error, ResourceExhausted):
                    if error.retry_after is None:
                        raise
                    wait = max(wait, error.retry_after)
                if deadline is not None and monotonic() + wait >= deadline:
                    raise
                sleep(wait)
                backoff = min(backoff * self.multiplier, self.max_backoff)
        raise AssertionError("unreachable")


NO_RETRY = RetryPolicy(max_attempts=1)

__all__ = ["NO_RETRY", "KmsError", "RetryPolicy"]
