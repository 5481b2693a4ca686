"""The re-wrap engine: batches from a source, through the service, back with compare-and-set.

For each batch:

1. Read up to ``batch_size`` stored values after the checkpoint position (memory stays
   bounded by one batch).
2. Classify locally. Refuse what re-wrapping would break: an SDK ciphertext cannot move to
   another key (its header names its key, authenticated; that takes decrypting and
   re-encrypting). Report what is broken already: an SDK ciphertext whose wrapped key is under
   another key than its header names does not open in the SDK. Count a value whose wrapped key
   already names the key's primary version as current without calling the service (so a resumed
   or repeated run is cheap).
3. Re-wrap the rest (BatchReWrap: the data keys never leave the service).
4. Rebuild each value around its new wrapped key and verify it the way the application will read
   it (kms.rewrap.verify): for an SDK ciphertext, the SDK's own checks. Only values that pass are
   written, byte for byte as verified.
5. Write with compare-and-set: a value the application changed meanwhile is left alone.
6. Save the checkpoint, then report progress.

Steps 2 to 5 of ``parallel`` batches run at once, each on a lane of its own (a thread, and a
client of its own when ``RewrapJob.lanes`` gives several: with ``kms serve --workers``, each
connection is served by one worker process, so lanes on several connections use several of the
server's cores). Reading stays in order, one batch ahead per lane, and step 6 happens in order
too: the checkpoint only ever moves past a batch once it and every batch before it are written,
and each batch's counts are added to the report then. A crash therefore repeats at most the
batches that were in flight (up to twice ``parallel``), which is harmless: a value already
re-wrapped is current, counted as such, and left alone.

A failure of one item (a value that does not open, a key that does not exist) is counted with
its reason and never stops the run; a failure of the service (UNAVAILABLE after retries) stops
it, and the next run resumes from the checkpoint. Every item the run leaves under its version is
counted there in the report, so ``kms keys retire --rewrap-report`` refuses that version.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from kms.crypto import subject_key
from kms.crypto import wrapped_key as wrapped_key_format
from kms.errors import InvalidCiphertext
from kms.rewrap import verify
from kms.rewrap.checkpoint import Checkpoint
from kms.rewrap.rate import RateLimit
from kms.rewrap.report import Report
from kms.rewrap.values import StoredValue
from kms_client import KeyNotFound, KmsClient, KmsError, PermissionDenied, Rewrapped

PRIMARY_REFRESH_SECONDS = 10.0
# Part of every checkpoint's fingerprint. Raised when a run's counts stop meaning what an
# earlier run's saved counts meant, so that no checkpoint of an older job is resumed: 2 is the
# first version that refuses SDK ciphertexts with a destination and verifies them as the SDK.
ENGINE_VERSION = 2

_Named = tuple[str, int]  # (key id, key version) that a wrapped key names


@dataclass
class Item:
    """One stored value to re-wrap. ``payload`` is the source's own handle for writing it back."""

    position: Any
    value: StoredValue
    context: Mapping[str, str]  # what the application opens it with: an SDK ciphertext's own
    payload: Any = None

    @property
    def wrapped_key(self) -> bytes:
        return self.value.wrapped_key


@dataclass
class Unreadable:
    position: Any
    reason: str
    version_unknown: bool = False  # it may hold a wrapped key, under a version the job cannot tell


@dataclass
class Replacement:
    item: Item
    wrapped_key: bytes  # as the service returned it
    key_id: str
    version: int
    old: _Named
    value: bytes  # the new value as verified, what ``Source.write`` stores (of a file, the header)


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
        """Stores each replacement's ``value``, exactly those bytes (in the form the value was
        read in), only if the stored value is still the one read; returns per replacement
        whether it was written."""
        ...


@dataclass
class JobOptions:
    batch_size: int = 500
    rate: float | None = None
    dry_run: bool = False
    destination_key_id: str = ""
    checkpoint: Path | None = None
    parallel: int = 1  # batches processed at once (see the module docstring)


@dataclass
class RewrapJob:
    client: KmsClient
    source: Source
    options: JobOptions = field(default_factory=JobOptions)
    on_progress: Callable[[int], None] = lambda count: None
    # Clients for the lanes, each on a connection of its own; lane i uses lanes[i % len(lanes)].
    # Empty: every lane uses ``client``.
    lanes: Sequence[KmsClient] = ()

    def fingerprint(self) -> str:
        described = f"v{ENGINE_VERSION}|{self.source.describe()}|dest={self.options.destination_key_id}"
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
        width = max(1, self.options.parallel)
        clients = list(self.lanes) or [self.client]
        free: queue.SimpleQueue[KmsClient] = queue.SimpleQueue()
        for lane in range(width):
            free.put(clients[lane % len(clients)])
        in_flight: deque[tuple[Sequence[Item | Unreadable], Future[Report]]] = deque()
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="rewrap-lane") as lanes:
            try:
                for batch in self.source.batches(checkpoint.position, self.options.batch_size):
                    limiter.take(len(batch))
                    while len(in_flight) >= 2 * width:  # read ahead at most one batch per lane
                        self._commit(*in_flight.popleft(), checkpoint)
                    in_flight.append((batch, lanes.submit(self._on_lane, batch, primaries, free)))
                while in_flight:
                    self._commit(*in_flight.popleft(), checkpoint)
            except BaseException:
                # The checkpoint stays after the last batch committed; batches still queued are
                # dropped, those running finish (their values are verified and written or not).
                lanes.shutdown(wait=True, cancel_futures=True)
                raise
        report.complete = True
        checkpoint.complete = True
        if not self.options.dry_run and self.options.checkpoint is not None:
            checkpoint.save(self.options.checkpoint)
        return report

    def _on_lane(
        self, batch: Sequence[Item | Unreadable], primaries: _Primaries, free: queue.SimpleQueue[KmsClient]
    ) -> Report:
        """Processes one batch on a free lane's client; its counts go into a report of its own."""
        client = free.get()
        try:
            counted = Report()
            self._process(batch, counted, primaries, client)
            return counted
        finally:
            free.put(client)

    def _commit(self, batch: Sequence[Item | Unreadable], done: Future[Report], checkpoint: Checkpoint) -> None:
        """The next batch in order is done (or raises what stopped it): its counts join the
        report and the checkpoint moves past it."""
        checkpoint.report.add(done.result())
        checkpoint.position = batch[-1].position
        if not self.options.dry_run and self.options.checkpoint is not None:
            checkpoint.save(self.options.checkpoint)
        self.on_progress(len(batch))

    def _process(
        self, batch: Sequence[Item | Unreadable], report: Report, primaries: _Primaries, client: KmsClient
    ) -> None:
        report.scanned += len(batch)
        pending = [taken for item in batch if (taken := self._classify(item, report, primaries)) is not None]
        if not pending:
            return
        results = client.rewrap_data_keys(
            [(item.wrapped_key, dict(item.context)) for item, _ in pending],
            destination_key_id=self.options.destination_key_id,
        )
        changed: list[Replacement] = []
        for (item, named), result in zip(pending, results, strict=True):
            if isinstance(result, KmsError):
                report.fail_on(result.reason, *named)
            elif not result.changed:
                report.already_current += 1
            elif (replacement := self._rebuilt(item, named, result, report)) is not None:
                changed.append(replacement)
        verified = self._verify(changed, report, client)
        if self.options.dry_run:
            report.rewrapped += len(verified)
            return
        for replacement, written in zip(verified, self.source.write(verified), strict=True):
            if written:
                report.rewrapped += 1
            else:
                report.changed_concurrently += 1
                report.left(*replacement.old)

    def _classify(self, item: Item | Unreadable, report: Report, primaries: _Primaries) -> tuple[Item, _Named] | None:
        """The item with the key version it names, if it is to be re-wrapped; else counts it."""
        if isinstance(item, Unreadable):
            if item.version_unknown:
                report.fail_unread(item.reason)
            else:
                report.fail(item.reason)
            return None
        try:
            header = wrapped_key_format.parse(item.wrapped_key).header
            named = (header.key_id, header.key_version)
        except InvalidCiphertext:
            try:  # format 2: a data subject's data key, which names its key but no version
                named = (subject_key.parse(item.wrapped_key).key_id, 0)
            except InvalidCiphertext:
                report.fail("not a wrapped key")
                return None
            if not self.options.destination_key_id:
                report.already_current += 1  # its subject's key moves onto each new version by itself
                return None
        report.saw(*named)
        if (broken := _sdk_key_mismatch(item, named[0])) is not None:
            report.fail_on(broken, *named)
            return None
        if (refusal := self._refusal(item)) is not None:
            report.refuse(refusal, *named)
            return None
        if (retention := primaries.retention(named[0])) is not None:
            report.refuse(
                f"refused: key {named[0]} has a retention_period of {retention.total_seconds() / 86400:g} days; "
                "re-wrapping onto a newer version "
                "would keep the data readable beyond it (RewrapDefeatsRetention), so it is left to expire",
                *named,
            )
            return None
        destination = self.options.destination_key_id or named[0]
        if destination == named[0] and primaries.get(named[0]) == named[1]:
            report.already_current += 1
            return None
        return item, named

    def _refusal(self, item: Item) -> str | None:
        """Why re-wrapping ``item`` as asked would leave a value the application cannot open."""
        sdk_header = item.value.sdk_header
        destination = self.options.destination_key_id
        if sdk_header is not None and destination and destination != sdk_header.key_id:
            return (
                "refused: an SDK ciphertext cannot move to another key (its header names its key, "
                "authenticated; moving it takes decrypting and re-encrypting); left under its key"
            )
        return None

    def _rebuilt(self, item: Item, named: _Named, result: Rewrapped, report: Report) -> Replacement | None:
        try:
            value = item.value.rebuilt(result.wrapped_key)
        except KmsError:
            report.fail_on("verification failed: the value cannot hold the new wrapped key", *named)
            return None
        return Replacement(item, result.wrapped_key, result.key_id, result.key_version, named, value)

    def _verify(self, changed: list[Replacement], report: Report, client: KmsClient) -> list[Replacement]:
        """The replacements whose new values open as the application will open them
        (kms.rewrap.verify); every other one is counted as failed and left on its version."""
        readable: list[tuple[Replacement, verify.Reading]] = []
        for replacement in changed:
            try:
                readable.append((replacement, self._reading(replacement)))
            except verify.Unopenable as refused_by_reader:
                report.fail_on(f"verification failed: {refused_by_reader}", *replacement.old)
        problems = verify.confirm(client, [reading for _, reading in readable])
        verified = []
        for (replacement, _), problem in zip(readable, problems, strict=True):
            if problem is None:
                verified.append(replacement)
            else:
                report.fail_on(f"verification failed: {problem}", *replacement.old)
        return verified

    def _reading(self, replacement: Replacement) -> verify.Reading:
        item = replacement.item
        key_id = self.options.destination_key_id or replacement.old[0]
        return verify.reading(item.value, replacement.value, replacement.wrapped_key, item.context, key_id)


def _sdk_key_mismatch(item: Item, wrapped_under: str) -> str | None:
    """Why an SDK ciphertext does not open in the SDK as it is: the service would report another
    key id for its wrapped key than its header names (what an earlier move to another key, or
    tampering, leaves). Re-wrapping cannot fix that without vouching for the header."""
    sdk_header = item.value.sdk_header
    if sdk_header is None or sdk_header.key_id == wrapped_under:
        return None
    return (
        f"an SDK ciphertext whose wrapped key is under key {wrapped_under} but whose header names "
        f"{sdk_header.key_id}: the SDK cannot open it; left as it is"
    )


class _Primaries:
    """Each key's primary version, asked once per key and refreshed every few seconds. Without
    permission to read keys, classification is left to the service (ReWrap returns current
    values unchanged)."""

    def __init__(self, client: KmsClient) -> None:
        self._client = client
        self._known: dict[str, tuple[float, int | None, timedelta | None]] = {}
        self._lock = threading.Lock()  # lanes share it: one GetKey per key and refresh, not one per lane

    def get(self, key_id: str) -> int | None:
        return self._read(key_id)[1]

    def retention(self, key_id: str) -> timedelta | None:
        """The key's retention_period, if it has one (keys with one are never re-wrapped)."""
        return self._read(key_id)[2]

    def _read(self, key_id: str) -> tuple[float, int | None, timedelta | None]:
        known = self._known.get(key_id)
        if known is not None and time.monotonic() - known[0] <= PRIMARY_REFRESH_SECONDS:
            return known
        with self._lock:
            return self._refreshed(key_id)

    def _refreshed(self, key_id: str) -> tuple[float, int | None, timedelta | None]:
        now = time.monotonic()
        known = self._known.get(key_id)
        if known is None or now - known[0] > PRIMARY_REFRESH_SECONDS:
            try:
                key = self._client.get_key(key_id)
                known = (now, key.primary_version, key.retention_period)
            except (KeyNotFound, PermissionDenied):
                known = (now, None, None)
            self._known[key_id] = known
        return known
