"""Scheduled work, run by every replica: rotating due keys, destroying versions whose pending
window has ended, writing usage counts.

A key is also rotated, whatever its schedule, once its primary version has wrapped
``max_wraps_per_version`` data keys (KMS_MAX_WRAPS_PER_VERSION, default 2^30): every wrap uses a
random 96-bit GCM IV, and NIST SP 800-38D allows at most 2^32 of them under one key. Counts
reach the database within a scheduler interval, so the margin of 3 x 2^30 wraps is never
in reach between two passes.

Replicas coordinate through the database only. Each due key is taken with a non-blocking lock
(PostgreSQL: pg_try_advisory_xact_lock; SQLite: one process) and is rotated only if it is still
due once the lock is held, so a due rotation happens exactly once however many replicas race for
it; a replica that finds the lock taken simply moves on. A server that was down for several
periods rotates a key once when it comes back, not once per missed period.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from kms.errors import KmsError
from kms.ports import Clock, KeyRepository
from kms.service.cadence import CadencePass, PrivacyCadence
from kms.service.calls import internal
from kms.service.keys import KeyService
from kms.service.lifecycle import LifecycleService
from kms.service.recording import CallRecorder
from kms.service.usage import UsageRecorder

log = logging.getLogger(__name__)


@dataclass
class SchedulerPass:
    rotated: list[tuple[str, int]] = field(default_factory=list)
    destroyed: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Carrying subjects and destructions scheduled by retention and erasure finality.
    cadence: CadencePass = field(default_factory=CadencePass)


class Scheduler:
    def __init__(
        self,
        repository: KeyRepository,
        keys: KeyService,
        lifecycle: LifecycleService,
        usage: UsageRecorder,
        clock: Clock,
        recorder: CallRecorder,
        *,
        batch: int = 100,
        max_wraps_per_version: int | None = None,
        cadence: PrivacyCadence | None = None,
    ) -> None:
        self._cadence = cadence
        self._repository = repository
        self._keys = keys
        self._lifecycle = lifecycle
        self._usage = usage
        self._clock = clock
        self._recorder = recorder
        self._batch = batch
        self._max_wraps = max_wraps_per_version

    def run_once(self) -> SchedulerPass:
        """One pass over everything due now. A failure on one key is logged and left for the
        next pass; it never stops the others."""
        done = SchedulerPass()
        now = self._clock.now()
        try:
            # Rotations and destructions are the events the log must hold most of all: while it
            # cannot take them, they wait for the next pass.
            self._recorder.check_writable()
        except KmsError as error:
            log.warning("scheduled work waits for the audit log", extra={"fields": {"error": error.message}})
            return done
        try:
            self._usage.flush()  # wrap counts decide rotations too
        except KmsError as error:
            log.warning("usage counts not written yet", extra={"fields": {"error": error.message}})
        for key_id in self._repository.due_for_rotation(now, self._batch, self._max_wraps):
            call = internal("scheduler")
            try:
                rotated = self._keys.rotate_if_due(call, key_id, now, self._max_wraps)
            except KmsError as error:
                done.failed.append((key_id, error.message))
                log.warning("scheduled rotation failed", extra={"fields": {"key_id": key_id, "error": error.message}})
                self._recorder.finish(call, error, action="ScheduledRotation", fail_open=True)
                continue
            if rotated is not None:
                done.rotated.append((key_id, rotated.primary_version))
                self._recorder.finish(call, None, action="ScheduledRotation", fail_open=True)
        if self._cadence is not None:
            done.cadence = self._cadence.run_once(now)
            done.failed += done.cadence.failed
        for key_id, version in self._repository.due_for_destruction(now, self._batch):
            call = internal("scheduler")
            try:
                destroyed = self._lifecycle.destroy_if_due(call, key_id, version)
            except KmsError as error:
                done.failed.append((key_id, error.message))
                log.warning(
                    "scheduled destruction failed", extra={"fields": {"key_id": key_id, "error": error.message}}
                )
                self._recorder.finish(call, error, action="ScheduledDestruction", fail_open=True)
                continue
            if destroyed:
                done.destroyed.append((key_id, version))
                self._recorder.finish(call, None, action="ScheduledDestruction", fail_open=True)
        self._usage.flush()
        return done


class Periodic:
    """Runs ``task`` every ``interval`` seconds on a daemon thread until stopped; a failing run
    is logged and retried at the next tick."""

    def __init__(self, name: str, task: Callable[[], object], interval: float) -> None:
        self._task = task
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._task()
            except KmsError as error:
                log.warning(
                    "background task failed", extra={"fields": {"task": self._thread.name, "error": error.message}}
                )
            except Exception:
                log.exception("background task crashed", extra={"fields": {"task": self._thread.name}})
