"""The scheduler's privacy work, per key with a ``subject_field`` or a ``retention_period``
(kms.domain.privacy has the rules):

- carry subjects' keys off superseded versions (kms.service.carry), up to a budget per pass;
- schedule the destruction of superseded versions that no longer wrap any subject, F/2 after
  they stopped being primary (erasure finality); the rotations F/2 apart come from the key's
  rotation cadence, which the ordinary rotation pass follows;
- schedule the destruction of versions that stopped being primary longer ago than the
  retention, with the retention pending window (KMS_RETENTION_PENDING_WINDOW).

Every scheduling is audited (as kms:scheduler, actions ErasureFinality and Retention), and so is
each carry that moved something (CarrySubjects).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from kms.domain import privacy
from kms.domain.keys import Key
from kms.domain.privacy import PrivacyRules
from kms.errors import KmsError
from kms.ports import SubjectRepository
from kms.service.calls import internal
from kms.service.carry import SubjectCarrier
from kms.service.key_cache import KeyCache
from kms.service.lifecycle import LifecycleService
from kms.service.recording import CallRecorder

log = logging.getLogger(__name__)

DEFAULT_CARRY_BUDGET = 20_000  # subjects carried per key and pass; the rest go on next pass


@dataclass
class CadencePass:
    carried: list[tuple[str, int]] = field(default_factory=list)  # (key id, subjects carried)
    scheduled: list[tuple[str, int]] = field(default_factory=list)  # (key id, version)
    failed: list[tuple[str, str]] = field(default_factory=list)


class PrivacyCadence:
    def __init__(
        self,
        subjects: SubjectRepository,
        cache: KeyCache,
        carrier: SubjectCarrier,
        lifecycle: LifecycleService,
        recorder: CallRecorder,
        rules: PrivacyRules,
        *,
        carry_budget: int = DEFAULT_CARRY_BUDGET,
    ) -> None:
        self._subjects = subjects
        self._cache = cache
        self._carrier = carrier
        self._lifecycle = lifecycle
        self._recorder = recorder
        self._rules = rules
        self._carry_budget = carry_budget

    def run_once(self, now: datetime) -> CadencePass:
        done = CadencePass()
        for key_id in self._subjects.privacy_keys():
            try:
                key = self._cache.get(key_id)
            except KmsError as error:
                done.failed.append((key_id, error.message))
                continue
            if key.subject_field:
                self._carry(key, done)
                self._schedule(key, now, "ErasureFinality", "erasure finality", self._finality_plan, done)
            if key.retention_period is not None:
                self._schedule(key, now, "Retention", "retention", self._retention_plan, done)
        return done

    def _carry(self, key: Key, done: CadencePass) -> None:
        call = internal("scheduler")
        call.trail.note(key_id=key.key_id, key_version=key.primary_version)
        try:
            carried = self._carrier.carry(key, self._carry_budget)
        except KmsError as error:
            done.failed.append((key.key_id, error.message))
            log.warning("carrying subjects failed", extra={"fields": {"key_id": key.key_id, "error": error.message}})
            self._recorder.finish(call, error, action="CarrySubjects", fail_open=True)
            return
        if carried.carried or carried.removed or carried.unreadable:
            done.carried.append((key.key_id, carried.carried))
            call.trail.note(
                detail=f"{carried.carried} subjects carried onto version {key.primary_version}, "
                f"{carried.removed} erased or orphaned rows removed, {carried.unreadable} unreadable"
                + ("" if carried.complete else "; more next pass")
            )
            self._recorder.finish(call, None, action="CarrySubjects", fail_open=True)

    def _finality_plan(self, key: Key, now: datetime) -> list[tuple[int, datetime]]:
        return privacy.finality_plan(
            key,
            now,
            lambda number: not self._subjects.wraps_any(key.key_id, number),
            self._rules.min_destroy_pending_window,
        )

    def _retention_plan(self, key: Key, now: datetime) -> list[tuple[int, datetime]]:
        return [(number, now + self._rules.retention_pending_window) for number in privacy.retention_due(key, now)]

    def _schedule(self, key: Key, now: datetime, action: str, why: str, plan: _Plan, done: CadencePass) -> None:
        key_id = key.key_id
        try:
            if not plan(key, now):
                return  # nothing due: no lock taken, nothing recorded
        except KmsError as error:
            done.failed.append((key_id, error.message))
            return
        call = internal("scheduler")
        try:
            scheduled = self._lifecycle.schedule_planned(call, key_id, plan, why)
        except KmsError as error:
            done.failed.append((key_id, error.message))
            log.warning("scheduling destruction failed", extra={"fields": {"key_id": key_id, "error": error.message}})
            self._recorder.finish(call, error, action=action, fail_open=True)
            return
        if scheduled:
            done.scheduled += [(key_id, number) for number in scheduled]
            self._recorder.finish(call, None, action=action, fail_open=True)


_Plan = Callable[[Key, datetime], list[tuple[int, datetime]]]
