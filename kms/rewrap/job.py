"""The re-wrap engine: batches from a source, through the service, back with compare-and-set.

For each batch:

1. Read up to ``batch_size`` stored values after the checkpoint position (memory stays
   bounded by one batch).
2. Classify locally: a value whose wrapped key already names the key's primary version is
   counted as current without calling the service (so a resumed or repeated run is cheap).
3. Re-wrap the rest (BatchReWrap: the data keys never leave the service).
4. Verify: re-wrap each new wrapped key once more; the service opens it and must return it
   unchanged. Only values that pass are written.
5. Write with compare-and-set: a value the application changed meanwhile is left alone.
6. Save the checkpoint, then report progress.

A failure of one item (a value that does not open, a key that does not exist) is counted with
its reason and never stops the run; a failure of the service (UNAVAILABLE after retries) stops
it, and the next run resumes from the checkpoint.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kms.crypto import wrapped_key as wrapped_key_format
from kms.errors import InvalidCiphertext
from kms.rewrap.checkpoint import Checkpoint
from kms.rewrap.rate import RateLimit
from kms.rewrap.report import Report
from kms_client import KmsClient, KmsError, KeyNotFound, PermissionDenied, Rewrapped

PRIMARY_REFRESH_SECONDS = 10.0


@dataclass
class Item:
    """One stored value to re-wrap. ``payload`` is the source's own handle for writing it back."""

    position: Any
    wrapped_key: bytes
    context: Mapping[str, str]
    payload: Any = None


@dataclass
class Unreadable:
    position: Any
    reason: str


@dataclass
class Replacement:
    item: Item
    wrapped_key: bytes
    key_id: str
    version: int = 0
    old: tuple[str, int] = ("", 0)


class Source(Protocol):
    def describe(self) -> str:
        """A stable description of the job's input, for the checkpoint fingerprint."""
        ...

    def count(self) -> int | None:
        """How many items there are in all, if it can tell cheaply (for progress)."""
        ...

    def batches(self, after: Any, size: int) -> Iterator[Sequence[Item | Unreadable]]:
        """Items in a stable order, starting after position ``after`` (None: from the start)."""
        ...

    def write(self, replacements: Sequence[Replacement]) -> list[bool]:
        """Stores the new values, each only if the stored value is still the one read; returns
        per replacement whether it was written."""
        ...


@dataclass
class JobOptions:
    batch_size: int = 500
    rate: float | None = None
    dry_run: bool = False
    destination_key_id: str = ""
    checkpoint: Path | None = None


@dataclass
class RewrapJob:
    client: KmsClient
    source: Source
    options: JobOptions = field(default_factory=JobOptions)
    on_progress: Callable[[int], None] = lambda count: None

    def fingerprint(self) -> str:
        described = f"{self.source.describe()}|dest={self.options.destination_key_id}"
        return hashlib.sha256(described.encode()).hexdigest()

    def run(self) -> Report:
        checkpoint = None
        if self.options.checkpoint is not None and not self.options.dry_run:
            checkpoint = Checkpoint.load(self.options.checkpoint, self.fingerprint())
        checkpoint = checkpoint or Checkpoint(self.fingerprint())
        report = checkpoint.report
        report.dry_run = self.options.dry_run
        if checkpoint.position is not None:
            self.on_progress(report.scanned)
        limiter = RateLimit(self.options.rate)
        primaries = _Primaries(self.client)
        for batch in self.source.batches(checkpoint.position, self.options.batch_size):
            limiter.take(len(batch))
            self._process(batch, report, primaries)
            checkpoint.position = batch[-1].position
            if not self.options.dry_run and self.options.checkpoint is not None:
                checkpoint.save(self.options.checkpoint)
            self.on_progress(len(batch))
        report.complete = True
        checkpoint.complete = True
        if not self.options.dry_run and self.options.checkpoint is not None:
            checkpoint.save(self.options.checkpoint)
        return report

    def _process(self, batch: Sequence[Item | Unreadable], report: Report, primaries: _Primaries) -> None:
        report.scanned += len(batch)
        pending: list[tuple[Item, tuple[str, int]]] = []
        for item in batch:
            if isinstance(item, Unreadable):
                report.fail(item.reason)
                continue
            try:
                header = wrapped_key_format.parse(item.wrapped_key).header
            except InvalidCiphertext:
                report.fail("not a wrapped key")
                continue
            named = (header.key_id, header.key_version)
            report.saw(*named)
            destination = self.options.destination_key_id or header.key_id
            if destination == header.key_id and primaries.get(header.key_id) == header.key_version:
                report.already_current += 1
                continue
            pending.append((item, named))
        if not pending:
            return
        results = self.client.rewrap_data_keys(
            [(item.wrapped_key, item.context) for item, _ in pending],
            destination_key_id=self.options.destination_key_id,
        )
        changed: list[Replacement] = []
        for (item, named), result in zip(pending, results, strict=True):
            if isinstance(result, KmsError):
                report.fail(result.reason)
                report.left(*named)
            elif not result.changed:
                report.already_current += 1
            else:
                changed.append(Replacement(item, result.wrapped_key, result.key_id, result.key_version, named))
        verified = self._verify(changed, report)
        if self.options.dry_run:
            report.rewrapped += len(verified)
            return
        for replacement, written in zip(verified, self.source.write(verified), strict=True):
            if written:
                report.rewrapped += 1
            else:
                report.changed_concurrently += 1
                report.left(*replacement.old)

    def _verify(self, changed: list[Replacement], report: Report) -> list[Replacement]:
        """The new wrapped keys, re-wrapped once more, must come back unchanged: proof that the
        service opens them with the item's context, without any data key leaving it."""
        if not changed:
            return []
        checks = self.client.rewrap_data_keys([(r.wrapped_key, r.item.context) for r in changed])
        verified = []
        for replacement, check in zip(changed, checks, strict=True):
            if isinstance(check, Rewrapped) and not check.changed and check.wrapped_key == replacement.wrapped_key:
                verified.append(replacement)
            else:
                report.fail("verification failed")
                report.left(*replacement.old)
        return verified


class _Primaries:
    """Each key's primary version, asked once per key and refreshed every few seconds. Without
    permission to read keys, classification is left to the service (ReWrap returns current
    values unchanged)."""

    def __init__(self, client: KmsClient) -> None:
        self._client = client
        self._known: dict[str, tuple[float, int | None]] = {}

    def get(self, key_id: str) -> int | None:
        now = time.monotonic()
        known = self._known.get(key_id)
        if known is None or now - known[0] > PRIMARY_REFRESH_SECONDS:
            try:
                primary: int | None = self._client.get_key(key_id).primary_version
            except (KeyNotFound, PermissionDenied):
                primary = None
            known = self._known[key_id] = (now, primary)
        return known[1]
