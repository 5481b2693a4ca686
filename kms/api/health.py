"""grpc.health.v1 status that says SERVING only while the HSM and the database both answer.

A background thread runs the checks every ``interval`` seconds. It also runs the start-up task
(reconciliation) until that succeeds once, and reports NOT_SERVING until then; and because
checking the HSM reconnects to it, the service recovers from an HSM outage even when no
traffic arrives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from grpc_health.v1 import health, health_pb2

from kms.api.proto import SERVICE_NAME
from kms.errors import KmsError

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    def __init__(
        self,
        checks: Mapping[str, Callable[[], None]],
        interval: float,
        startup: Callable[[], None] | None = None,
    ) -> None:
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        self._checks = dict(checks)
        self._interval = interval
        self._startup = startup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kms-health", daemon=True)
        self._serving: bool | None = None
        self._problems: dict[str, str] = {}
        self._set(False)

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    @property
    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def start(self) -> None:
        self.run_once()
        self._thread.start()

    def stop(self) -> None:
        """Reports NOT_SERVING from now on (graceful shutdown) and ends the checks."""
        self._stop.set()
        self.servicer.enter_graceful_shutdown()

    def run_once(self) -> bool:
        problems = {}
        for name, check in self._checks.items():
            try:
                check()
            except KmsError as error:
                problems[name] = error.message
            except Exception as error:  # a check must never kill the monitor
                problems[name] = type(error).__name__
        if not problems and self._startup is not None:
            try:
                self._startup()
                self._startup = None
            except KmsError as error:
                problems["startup"] = error.message
        self._problems = problems
        self._set(not problems and self._startup is None)
        return self.serving

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.run_once()

    def _set(self, serving: bool) -> None:
        if serving != self._serving:
            if self._serving is not None:
                log.log(
                    logging.INFO if serving else logging.WARNING,
                    "health changed",
                    extra={"fields": {"serving": serving, "problems": self._problems}},
                )
            self._serving = serving
            status = SERVING if serving else NOT_SERVING
            for service in ("", SERVICE_NAME):
                self.servicer.set(service, status)
