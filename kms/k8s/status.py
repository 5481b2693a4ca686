"""What the plugin's Status answers: whether this KMS serves the plugin's key, and its key_id.

The API server polls Status about once a minute (every 10 s while unhealthy), and may call it
more often through its health endpoint. Each answer comes from a probe of the KMS at most
``max_age`` old; concurrent callers share one probe. A failed probe is cached like a good one,
so an outage costs one probe per ``max_age``, not one per call.

The key_id names the key and its primary version ("KEY:vN", ``key_id_for``). It only moves
forward: the highest version seen, by a probe or by an Encrypt (whose wrapped key names the
version that really wrapped it), wins. So a KMS replica whose metadata cache still shows the
previous primary version for a moment cannot make the key_id flip back, which the API server
would take for a new key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kms_client import KmsError

log = logging.getLogger(__name__)

HEALTHY = "ok"


def key_id_for(key: str, version: int) -> str:
    """The key_id the API server sees for version ``version`` of KMS key ``key``: "KEY:vN".

    At most 64 + 2 + 10 ASCII characters (a key id is 1-64 of [A-Za-z0-9_-], a version
    fits 32 bits), far inside the API server's 1 KiB.
    """
    return f"{key}:v{version}"


@dataclass(frozen=True)
class StatusReport:
    """One Status answer. ``problem`` is "" when healthy, else a short, non-secret reason
    (the API server quotes it in its health check). ``key_id`` is "" until a version is known."""

    problem: str
    key_id: str

    @property
    def healthz(self) -> str:
        return self.problem or HEALTHY


@dataclass(frozen=True)
class _Probe:
    at: float
    problem: str


class KeyStatus:
    """The plugin's health and current key_id for ``key``.

    ``probe()`` asks the KMS and returns the key's primary version, or raises KmsError when the
    KMS does not serve the key (down, not serving, refusing the plugin's identity).
    ``monotonic`` is the clock for ``max_age`` (seconds), injectable for tests.
    """

    def __init__(
        self,
        key: str,
        probe: Callable[[], int],
        *,
        max_age: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = key
        self._probe = probe
        self._max_age = max_age
        self._monotonic = monotonic
        self._probe_lock = threading.Lock()  # one probe at a time; waiters then reuse its result
        self._version_lock = threading.Lock()
        self._last: _Probe | None = None
        self._version = 0

    def observe(self, version: int) -> None:
        """Records that ``version`` of the key wrapped a data key (from Encrypt)."""
        with self._version_lock:
            self._version = max(self._version, version)

    def key_id(self) -> str:
        """The current key_id, "" while no version has been seen."""
        version = self._version
        return key_id_for(self._key, version) if version else ""

    def report(self) -> StatusReport:
        """A probe at most ``max_age`` old (a new one if the last is older), and the key_id."""
        with self._probe_lock:
            last = self._last
            if last is None or self._monotonic() - last.at >= self._max_age:
                last = self._last = self._run_probe()
        return StatusReport(last.problem, self.key_id())

    def _run_probe(self) -> _Probe:
        try:
            version = self._probe()
        except KmsError as error:
            problem = f"KMS {error.code.name}: {error.reason}"
        else:
            self.observe(version)
            problem = ""
        previous = self._last
        if previous is None or previous.problem != problem:
            log.log(
                logging.WARNING if problem else logging.INFO,
                "k8s plugin status changed",
                extra={"fields": {"healthz": problem or HEALTHY, "key_id": self.key_id()}},
            )
        return _Probe(self._monotonic(), problem)
