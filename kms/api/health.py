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
DETAIL_PREFIX = "kms.v1.health."


class HealthMonitor:
    def __init__(
        self,
        checks: Mapping[str, Callable[[], None]],
        interval: float,
        startup: Callable[[], object] | None = None,
        details: Mapping[str, Callable[[], str | None]] | None = None,
    ) -> None:
        """``checks`` must all pass for SERVING. ``details`` are named conditions worth an
        operator's attention that do not stop the service (a protected row that does not
        verify): each is its own health service, ``kms.v1.health.<name>``, NOT_SERVING while
        it reports a problem, and is logged when it changes."""
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        self._checks = dict(checks)
        self._details = dict(details or {})
        self._detail_state: dict[str, str | None] = {}
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
            except Exception as error:  # noqa: BLE001 - a check must never kill the monitor
                problems[name] = type(error).__name__
        if not problems and self._startup is not None:
            try:
                self._startup()
                self._startup = None
            except KmsError as error:
                problems["startup"] = error.message
        self._problems = problems
        self._set(not problems and self._startup is None)
        self._report_details()
        return self.serving

    def _report_details(self) -> None:
        for name, detail in self._details.items():
            try:
                problem = detail()
            except Exception as error:  # noqa: BLE001 - a detail must never kill the monitor
                problem = type(error).__name__
            if problem != self._detail_state.get(name, ""):
                if problem is not None:
                    log.warning("health detail", extra={"fields": {"detail": name, "problem": problem}})
                self._detail_state[name] = problem
                self.servicer.set(DETAIL_PREFIX + name, SERVING if problem is None else NOT_SERVING)

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
