"""Repeated failures, counted instead of recorded one by one.

A caller can fail as fast as it can send: a flood of refused calls must not grow the audit log
without bound. The first failure of a kind in a window is recorded in full; further identical
ones (same identity, action, outcome and reason) are only counted, and when the window closes
one summary record says how many there were, between when and when, and for which key ids. The
summary is an ordinary record, inside the hash chain.

Only outcomes that a caller can provoke without holding any grant are folded this way (refused,
unauthenticated, rate limited, malformed); every other outcome keeps a record per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from kms.domain.audit import FIELD_LIMITS, AuditEntry

FOLDED_OUTCOMES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"})
_KEYS_NAMED = 8  # key ids listed by name in a summary; the rest are counted
_MAX_KINDS = 10_000  # distinct (identity, action, outcome, reason) tracked at once


@dataclass
class _Window:
    opened: float  # monotonic
    first: AuditEntry
    repeats: int = 0
    last_time: datetime | None = None
    key_ids: set[str] = field(default_factory=set)
    more_keys: int = 0


class RepeatedOutcomes:
    """Decides which failure records go to the log now; not thread-safe (callers lock)."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._open: dict[tuple[str, str, str, str], _Window] = {}

    def admit(self, entry: AuditEntry, now: float) -> list[AuditEntry]:
        """The records to write for ``entry`` now: itself (perhaps after the summary of a window
        it closes), or nothing when it is a repeat inside an open window."""
        if entry.outcome not in FOLDED_OUTCOMES:
            return [entry]
        kind = (entry.identity, entry.rpc, entry.outcome, entry.reason)
        window = self._open.get(kind)
        if window is not None and now - window.opened < self._window:
            window.repeats += 1
            window.last_time = entry.time
            if entry.key_id and entry.key_id not in window.key_ids:
                if len(window.key_ids) < _KEYS_NAMED:
                    window.key_ids.add(entry.key_id)
                else:
                    window.more_keys += 1
            return []
        written = []
        if window is not None:
            written += self._summaries([kind])
        if len(self._open) >= _MAX_KINDS:
            written += self.close_all()
        self._open[kind] = _Window(opened=now, first=entry)
        return [*written, entry]

    def expired(self, now: float) -> list[AuditEntry]:
        """Summaries of the windows that have closed by ``now`` (and forgets them)."""
        return self._summaries([kind for kind, window in self._open.items() if now - window.opened >= self._window])

    def close_all(self) -> list[AuditEntry]:
        return self._summaries(list(self._open))

    def _summaries(self, kinds: list[tuple[str, str, str, str]]) -> list[AuditEntry]:
        summaries = []
        for kind in kinds:
            window = self._open.pop(kind)
            if window.repeats:
                summaries.append(_summary(window))
        return summaries


def _summary(window: _Window) -> AuditEntry:
    first = window.first
    keys = ", ".join(sorted(window.key_ids))
    if window.more_keys:
        keys += f" and {window.more_keys} more"
    detail = (
        f"{window.repeats} more like this from {first.time.isoformat(timespec='seconds')}"
        f" to {(window.last_time or first.time).isoformat(timespec='seconds')}" + (f"; key ids {keys}" if keys else "")
    )
    return replace(
        first,
        time=window.last_time or first.time,
        key_id="",
        key_version=0,
        request_id="",
        context_digest="",
        item=-1,
        detail=detail[: FIELD_LIMITS["detail"]],
    )
