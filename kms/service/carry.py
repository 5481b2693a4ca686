"""Carrying subjects' keys onto a key's primary version after a rotation.

A version that still wraps a subject's key is never destroyed (kms.service.lifecycle waits),
so after every rotation of a key with a ``subject_field`` the scheduler moves each live
subject's key onto the new primary version: re-wrapped through the HSM, a batch in one
session (opened under the old version and sealed under the new one; the subject's key passes
only through a zeroed C buffer, never a Python object), each batch written in one transaction
with compare-and-set per row. Order for crashes: the new wrappings are made in the HSM first, with no
lock held; the batch then commits. A kill -9 anywhere leaves every row wrapped by the old
version or the new one, both of which exist until the old one is destroyed, and a rerun carries
on from whatever is left (the rows themselves are the progress).

Erased subjects are not carried: a row the ledger names as erased (left by a first use racing the
erasure, or restored from a backup) is deleted instead, so it cannot hold its version back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from kms.crashpoints import crash_point
from kms.crypto.subject_key import subject_key_associated_data
from kms.domain.keys import Key, KeyVersion, VersionState
from kms.domain.privacy import SubjectKey
from kms.errors import InvalidCiphertext
from kms.ports import MasterKeyCipher, SubjectRepository
from kms.service.subjects import ErasureLedger
from kms.service.usage import UsageRecorder

log = logging.getLogger(__name__)

DEFAULT_BATCH = 500


@dataclass
class Carried:
    carried: int = 0
    removed: int = 0  # erased subjects' rows, and rows whose version is already destroyed
    unreadable: int = 0  # rows that do not open under their version (altered): left, and reported
    complete: bool = True  # False when the budget ran out first


class SubjectCarrier:
    def __init__(
        self,
        repository: SubjectRepository,
        master_keys: MasterKeyCipher,
        ledger: ErasureLedger,
        usage: UsageRecorder,
        *,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self._repository = repository
        self._master_keys = master_keys
        self._ledger = ledger
        self._usage = usage
        self._batch = batch

    def carry(self, key: Key, budget: int | None = None) -> Carried:
        """Moves up to ``budget`` subjects of ``key`` (all, without one) from older versions onto
        its primary version."""
        done = Carried()
        primary = key.version(key.primary_version)
        after: tuple[int, str] | None = None
        while True:
            size = self._batch if budget is None else min(self._batch, budget - done.carried - done.removed)
            if size <= 0:
                done.complete = False
                return done
            rows = self._repository.wrapped_below(key.key_id, key.primary_version, size, after)
            if not rows:
                return done
            after = (rows[-1].version, rows[-1].subject_digest)
            moves: list[tuple[SubjectKey, SubjectKey]] = []
            garbage: list[SubjectKey] = []
            by_version: dict[int, list[SubjectKey]] = {}
            for row in rows:
                source = _version_or_none(key, row.version)
                if self._ledger.erased(key.key_id, row.subject_digest) or source is None:
                    garbage.append(row)
                else:
                    by_version.setdefault(row.version, []).append(row)
            for number, group in by_version.items():
                moves += self._rewrap(key, key.version(number), primary, group, done)
            crash_point("carry_subjects.after_hsm_rewrap")
            done.carried += self._repository.carry(moves)
            crash_point("carry_subjects.after_commit")
            done.removed += self._repository.remove(garbage)

    def _rewrap(
        self, key: Key, source: KeyVersion, primary: KeyVersion, rows: list[SubjectKey], done: Carried
    ) -> list[tuple[SubjectKey, SubjectKey]]:
        """The rows' new wrappings under ``primary``, made in one HSM session for the batch
        (MasterKeyCipher.rewrap_many: each subject's key passes only through a C buffer of that
        call, zeroed after it, never a Python object); a row that does not open is left, and
        counted."""
        outcomes = self._master_keys.rewrap_many(
            source,
            primary,
            [
                (
                    row.iv,
                    row.sealed,
                    subject_key_associated_data(key.key_id, row.subject_digest, row.version),
                    subject_key_associated_data(key.key_id, row.subject_digest, primary.version),
                )
                for row in rows
            ],
        )
        moves = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, InvalidCiphertext):
                done.unreadable += 1
                log.error(
                    "a data subject's stored key does not open; it is not carried",
                    extra={"fields": {"key_id": key.key_id, "version": row.version}},
                )
                continue
            iv, sealed = outcome
            self._usage.unwrapped(source)
            self._usage.wrapped(primary)
            moves.append((row, replace(row, version=primary.version, iv=iv, sealed=sealed)))
        return moves


def _version_or_none(key: Key, number: int) -> KeyVersion | None:
    """The version that wraps a row, if its key still exists (not DESTROYED, known to the key)."""
    for version in key.versions:
        if version.version == number:
            return None if version.state is VersionState.DESTROYED else version
    return None
