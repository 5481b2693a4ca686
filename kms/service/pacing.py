"""Long work inside the serving process, kept to a share of its time.

A thread that hashes and checks for minutes holds the GIL for most of that time, and every call
served meanwhile waits for it. Paced, it sleeps after every few items for as long as those items
took, times (1 / share - 1): its CPU time stays at most ``share`` of the time that passes, and
sleeping releases the GIL to the calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Pacer:
    def __init__(
        self,
        share: float,
        *,
        every: int = 256,
        cpu_time: Callable[[], float] = time.thread_time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``share`` in (0, 1]; 1 never sleeps. ``cpu_time`` is this thread's CPU time."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self._factor = 1 / share - 1
        self._every = every
        self._cpu_time = cpu_time
        self._sleep = sleep
        self.slept = 0.0

    def paced(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, with a pause after every ``every`` of them."""
        started = self._cpu_time()
        for count, item in enumerate(items, start=1):
            yield item
            if count % self._every == 0 and self._factor:
                now = self._cpu_time()
                pause = (now - started) * self._factor
                self._sleep(pause)
                self.slept += pause
                started = self._cpu_time()
