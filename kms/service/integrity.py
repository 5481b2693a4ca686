"""Believing the database only where the HSM vouches for it (kms.domain.ledger explains the
ledger; this follows it).

Each replica reads the whole ledger at start, checking every link and the HSM seal of the head,
then polls it every ``poll_interval`` for entries other replicas appended. It knows, for every
protected row, the digest the latest entry names, and a row is used only when it has that
digest: a key whose row does not verify cannot be used (FAILED_PRECONDITION), a grant or
membership that does not verify grants nothing. Each such row is reported once: a log line, the
``kms_metadata_rows_rejected`` metric, an audit record (as kms:integrity), and a health detail.

The anchor (kms.hsm.anchor) holds, in the HSM, the newest ledger position the service vouched
for. It moves forward after every change that takes something away (disabling or destroying a
version, raising a decryption floor, revoking a grant, removing a member) before the call
returns, and after other changes within a few seconds. A ledger behind its anchor is a database
rolled back (a restored backup, or old rows copied back wholesale) and is refused as a whole:
every key and every grant become unusable until an operator looks (``kms db verify``) and, for a
deliberate restore, accepts it (``kms db accept-restore``). So a rollback can deny service but
never bring back what was taken away, except the changes of the last few seconds that took
nothing away (a creation, a rotation). Changes to the ledger itself (a broken link, a head the
HSM did not seal) are refused the same way.

Polling doubles as the metadata cache's invalidation: a key is read again only after an entry
names it, so the staleness bound of another replica's change is one poll interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Gauge

from kms.domain.keys import Key
from kms.domain.ledger import (
    ERASURE,
    GRANT,
    KEY,
    MEMBER,
    BrokenChain,
    Change,
    LedgerEntry,
    LedgerHead,
    LedgerState,
    erasure_digest,
    erasure_name,
    grant_digest,
    head_message,
    key_digest,
    member_digest,
    member_name,
)
from kms.domain.policy import Grant, PolicySnapshot
from kms.domain.privacy import Erasure
from kms.errors import (
    DatabaseUnavailable,
    HsmUnavailable,
    KeyMetadataUnverified,
    KmsError,
    LedgerTampered,
    MetadataIntegrityLost,
)
from kms.ports import AuditSeal

log = logging.getLogger(__name__)

# Under kms serve --workers every worker follows the ledger and reports the same rows: the
# highest count among live workers. The position read is per worker (a pid label), so that a
# worker that lags behind the others shows.
REJECTED = Gauge(
    "kms_metadata_rows_rejected",
    "Protected rows whose content the ledger does not vouch for",
    ["kind"],
    multiprocess_mode="livemax",
)
LEDGER_SEQ = Gauge(
    "kms_metadata_ledger_seq",
    "The newest metadata ledger entry this process has applied to its caches",
    multiprocess_mode="liveall",
)


class LedgerReader(Protocol):
    def read(self, after_seq: int, limit: int = ...) -> tuple[list[LedgerEntry], LedgerHead]: ...

    def seal_existing(self, changes: list[Change]) -> int:
        """Appends ``changes`` only if the ledger is still empty; returns how many."""
        ...


class Anchor(Protocol):
    def read(self) -> tuple[int, str]: ...

    def advance(self, seq: int, hash_hex: str) -> None: ...


class Reporter(Protocol):
    def integrity_event(self, action: str, kind: str, name: str, detail: str) -> None:
        """An audit record of the service's own, as kms:integrity."""
        ...


class MetadataIntegrity:
    def __init__(
        self,
        ledger: LedgerReader,
        seal: AuditSeal,
        anchor: Anchor,
        *,
        poll_interval: float = 0.25,
        max_stale: float = 30.0,
        anchor_interval: float = 5.0,
        adopt: Callable[[], list[Change]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``adopt`` lists the ledger entries of the rows a database from before the ledger
        holds: they are sealed once, at the first start on such a database (see catch_up)."""
        self._adopt = adopt
        self._ledger = ledger
        self._seal = seal
        self._anchor = anchor
        self._poll_interval = poll_interval
        self._max_stale = max_stale
        self._anchor_interval = anchor_interval
        self._monotonic = monotonic
        self._state = LedgerState()
        self._lock = threading.Lock()  # one reader of the ledger at a time
        self._last_read: float | None = None
        self._read_began: float | None = None  # when the last completed read started
        # Changes read and not yet handed to the caches, in ledger order. Whoever reads the
        # ledger, every caller of refresh or observe hands over all of them before it returns,
        # so that a change another thread has just read is never missing from the caches when
        # this one acts on what it read (kms.service.key_cache, the policy cache).
        self._pending: list[Change] = []
        self._delivering = threading.RLock()  # reentrant: a cache may read the ledger as it is told
        self._anchored = (0, "")
        self._last_anchor = 0.0
        self._lost: str | None = None
        self._rejected: dict[tuple[str, str], str] = {}
        self._key_listeners: list[Callable[[Iterable[str]], None]] = []
        self._policy_listeners: list[Callable[[], None]] = []
        self._erasure_listeners: list[Callable[[Iterable[str]], None]] = []
        self._reporter: Reporter | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kms-ledger", daemon=True)

    # -- wiring --------------------------------------------------------------------------

    def on_keys_changed(self, listener: Callable[[Iterable[str]], None]) -> None:
        self._key_listeners.append(listener)

    def on_policy_changed(self, listener: Callable[[], None]) -> None:
        self._policy_listeners.append(listener)

    def on_erasures(self, listener: Callable[[Iterable[str]], None]) -> None:
        """``listener`` receives the names ("key id LF subject digest") of erasures appended."""
        self._erasure_listeners.append(listener)

    def report_to(self, reporter: Reporter) -> None:
        self._reporter = reporter

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # -- following the ledger ------------------------------------------------------------

    def catch_up(self) -> None:
        """Reads the whole ledger (at start). A database that predates the ledger has rows and
        no entries: those rows are sealed as they are, once, trusting them on first use, and the
        anchor is moved past them, so that an emptied ledger later is a rollback, not a start."""
        self.refresh()
        if self._lost is not None or self._state.seq or self._adopt is None:
            return
        changes = self._adopt()
        if changes:
            sealed = self._ledger.seal_existing(changes)
            if sealed:
                log.warning(
                    "metadata that predates the ledger sealed into it as it was", extra={"fields": {"rows": sealed}}
                )
                if self._reporter is not None:
                    self._reporter.integrity_event("LedgerAdopted", "ledger", "", f"{sealed} rows sealed as found")
        self.anchor_now()

    def refresh(self, *, unless_read_since: float | None = None) -> None:
        """Reads and checks the entries appended since the last read, then tells the caches
        what changed. Raises DatabaseUnavailable when the ledger cannot be read; a ledger that
        does not verify is not raised but recorded (every later check then refuses).
        ``unless_read_since``: no read if one that began at or after that moment
        (time.monotonic()) has completed meanwhile; what it found is delivered all the same."""
        with self._lock:
            due = unless_read_since is None or (self._read_began or -1.0) < unless_read_since
            if due and not self._read():
                return
        self._deliver()
        self._advance_anchor_lazily()

    def _read(self) -> bool:
        """The read itself, with the lock held: the changes go to ``_pending``. False when the
        ledger was refused as a whole (the caches have been told)."""
        began = self._monotonic()
        changes: list[Change] = []
        anchored: tuple[int, str] | None = None
        while True:
            entries, head = self._ledger.read(self._state.seq)
            try:
                changes += self._check(entries, head, anchored)
            except _AnchorAhead as ahead:
                if anchored is not None:
                    self._lose(str(ahead))
                    return False
                # The anchor was read after the ledger, and another replica may have
                # appended and anchored in between: judge a newer read of the ledger against
                # that anchor, which was read before it. A rolled-back database stays behind.
                anchored = ahead.anchored
                continue
            except (BrokenChain, LedgerTampered) as problem:
                self._lose(str(problem))
                return False
            except HsmAnswer as unanswered:
                raise HsmUnavailable(str(unanswered)) from None
            if self._state.seq >= head.seq:
                break
        self._last_read = self._monotonic()
        self._read_began = began
        self._pending += changes
        return True

    def _deliver(self) -> None:
        """Hands every change read so far, by any thread, to the caches."""
        with self._delivering:
            with self._lock:
                changes, self._pending = self._pending, []
            self._notify(changes)
            LEDGER_SEQ.set(self._state.seq)

    def refresh_now(self) -> None:
        """A read of the ledger that begins after this call does, shared: callers that ask
        while one read is under way wait for it and then share the next one, so that however
        many ask at once, at most two reads run one after the other. A read that merely ended
        after a change committed elsewhere may have begun before it, and is not enough to say
        the change does not exist (kms.service.key_cache.KeyCache.caught_up)."""
        self.refresh(unless_read_since=self._monotonic())

    def observe(self, entries: list[LedgerEntry]) -> None:
        """Entries this process appended in a transaction that has committed: applied at once
        when they follow the verified head (the common case), so that a change made here is
        believed here without reading the ledger back; otherwise the ledger is read."""
        if not entries:
            return
        with self._lock:
            changes: list[Change] | None = None
            if self._lost is None and entries[0].seq == self._state.seq + 1:
                try:
                    changes = self._state.apply(entries)
                except BrokenChain:
                    changes = None
            if changes is not None:
                self._pending += changes
        if changes is None:
            self.refresh()
        else:
            self._deliver()  # other caches of this process drop what they held

    def _check(
        self, entries: list[LedgerEntry], head: LedgerHead, anchored: tuple[int, str] | None = None
    ) -> list[Change]:
        """``anchored``: the anchor as read before this read of the ledger (else read now)."""
        if head.seq < self._state.seq:
            raise LedgerTampered(
                f"the metadata ledger went back from entry {self._state.seq} to {head.seq} (rolled back)"
            )
        before = (self._state.seq, self._state.hash)
        seq, hash_ = self._state.follow(entries)  # checks every link, changes nothing
        if seq == head.seq and ((seq, hash_) != before or self._last_read is None):
            if hash_ != head.hash:
                raise LedgerTampered(f"the metadata ledger's head does not match entry {head.seq}")
            if head.seq and not self._sealed(head):
                raise LedgerTampered(f"the metadata ledger's head (entry {head.seq}) is not sealed by the HSM")
            anchored_seq, anchored_hash = anchored or self._anchor.read()
            if head.seq < anchored_seq or (head.seq == anchored_seq and anchored_hash and head.hash != anchored_hash):
                raise _AnchorAhead(
                    f"the metadata ledger ends at entry {head.seq} but the HSM anchor vouches for entry "
                    f"{anchored_seq}: the database was rolled back",
                    (anchored_seq, anchored_hash),
                )
            self._anchored = max(self._anchored, (anchored_seq, anchored_hash))
        return self._state.apply(entries)

    def _sealed(self, head: LedgerHead) -> bool:
        try:
            return self._seal.check(head_message(head.seq, head.hash), head.mac)
        except KmsError as error:  # the HSM did not answer: no verdict yet
            raise HsmAnswer(error.message) from None

    def _lose(self, problem: str) -> None:
        first = self._lost is None
        self._lost = problem
        if first:
            log.critical("metadata integrity lost; keys and grants are refused", extra={"fields": {"problem": problem}})
            if self._reporter is not None:
                self._reporter.integrity_event("MetadataIntegrityLost", "ledger", "", problem)
            self._notify_everything()

    def _notify(self, changes: list[Change]) -> None:
        keys = [change.name for change in changes if change.kind == KEY]
        if keys:
            for listener in self._key_listeners:
                listener(keys)
        if any(change.kind in (GRANT, MEMBER) for change in changes):
            for policy_listener in self._policy_listeners:
                policy_listener()
        erased = [change.name for change in changes if change.kind == ERASURE]
        if erased:
            for erasure_listener in self._erasure_listeners:
                erasure_listener(erased)

    def _notify_everything(self) -> None:
        for policy_listener in self._policy_listeners:
            policy_listener()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.refresh()
            except KmsError as error:
                log.warning("metadata ledger not read", extra={"fields": {"error": error.message}})

    # -- checking everything (kms db verify, kms db accept-restore) -----------------------

    def verify_rows(
        self, keys: Iterable[Key], snapshot: PolicySnapshot, erasures: Iterable[Erasure] | None = None
    ) -> list[RowProblem]:
        """Every protected row against the ledger: rows it does not vouch for, and rows it names
        that are missing (erasure receipts only when ``erasures`` are given). The ledger itself
        must have been read (catch_up)."""
        problems = [RowProblem("ledger", "", self._lost)] if self._lost else []
        seen: dict[str, set[str]] = {KEY: set(), GRANT: set(), MEMBER: set(), ERASURE: set()}
        for erasure in erasures or ():
            name = erasure_name(erasure.key_id, erasure.subject_digest)
            seen[ERASURE].add(name)
            expected = self._state.expected(ERASURE, name)
            if expected is None:
                problems.append(RowProblem(ERASURE, name, "erasure record without a ledger entry"))
            elif expected[1] != erasure_digest(erasure):
                problems.append(RowProblem(ERASURE, name, "erasure record changed outside the service"))
        for key in keys:
            seen[KEY].add(key.key_id)
            try:
                self.check_key(key)
            except KeyMetadataUnverified:
                problems.append(RowProblem(KEY, key.key_id, self._rejected.get((KEY, key.key_id), "does not verify")))
        for grant in snapshot.grants:
            seen[GRANT].add(grant.grant_id)
            if not self.grant_verified(grant):
                problems.append(RowProblem(GRANT, grant.grant_id, self._rejected.get((GRANT, grant.grant_id), "")))
        for group, identity in snapshot.members:
            name = member_name(group, identity)
            seen[MEMBER].add(name)
            if not self.member_verified(group, identity):
                problems.append(RowProblem(MEMBER, name, self._rejected.get((MEMBER, name), "")))
        for kind in (KEY, GRANT, MEMBER) + ((ERASURE,) if erasures is not None else ()):
            problems.extend(
                RowProblem(kind, name, "row missing (deleted outside the service)")
                for name in sorted(set(self._state.live(kind)) - seen[kind])
            )
        return problems

    def accept_restore(self, anchor: ResettableAnchor) -> tuple[int, int]:
        """After a deliberate restore of the database: if the ledger verifies in itself (every
        link, and the head's HSM seal), moves the anchor back to its head. Returns (old anchor
        position, new). Raises LedgerTampered if the ledger is damaged, not merely older."""
        state = LedgerState()
        entries, head = self._ledger.read(0)
        while True:
            try:
                state.apply(entries)
            except BrokenChain as broken:
                raise LedgerTampered(str(broken)) from None
            if state.seq >= head.seq:
                break
            entries, head = self._ledger.read(state.seq)
        if state.hash != head.hash or (head.seq and not self._sealed(head)):
            raise LedgerTampered("the metadata ledger's head is not sealed by the HSM: this is not a restore")
        before, _ = anchor.read()
        anchor.reset(head.seq, head.hash)
        return before, head.seq

    # -- the anchor ----------------------------------------------------------------------

    def anchor_now(self) -> None:
        """Moves the HSM anchor to the newest entry this replica has verified (after a change
        that takes something away, so that no rollback can undo it)."""
        self.refresh()
        seq, hash_ = self._state.seq, self._state.hash
        if (seq, hash_) > self._anchored and not self._lost:
            self._anchor.advance(seq, hash_)
            self._anchored = (seq, hash_)
            self._last_anchor = self._monotonic()

    def anchor_if_unanchored(self) -> None:
        """Anchors the first entries at once: until the anchor holds something, an emptied
        ledger would look like a new deployment (after that, it looks like what it is)."""
        if self._anchored[0] == 0 and self._lost is None:
            self.anchor_now()

    def _advance_anchor_lazily(self) -> None:
        if self._lost or self._state.seq <= self._anchored[0]:
            return
        if self._anchored[0] and self._monotonic() - self._last_anchor < self._anchor_interval:
            return
        try:
            self._anchor.advance(self._state.seq, self._state.hash)
            self._anchored = (self._state.seq, self._state.hash)
        except KmsError as error:
            log.warning("ledger anchor not advanced", extra={"fields": {"error": error.message}})
        self._last_anchor = self._monotonic()

    # -- verdicts ------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._state.seq

    @property
    def problem(self) -> str | None:
        """Why the ledger as a whole is refused, or None."""
        return self._lost

    def rejected_rows(self) -> dict[tuple[str, str], str]:
        return dict(self._rejected)

    def check_trusted(self) -> None:
        """A health check: raises while the ledger as a whole is refused."""
        if self._lost is not None:
            raise MetadataIntegrityLost(self._lost)

    def check_usable(self) -> None:
        """Raises when no metadata can be believed now: the ledger is refused, or this replica
        has not read it for longer than ``max_stale`` (the database is away)."""
        if self._lost is not None:
            raise MetadataIntegrityLost(self._lost)
        if self._last_read is None or self._monotonic() - self._last_read > self._max_stale:
            if not self._thread.is_alive():
                # No poller (a command-line process): read the ledger now, as the poller would.
                self.refresh()
                if self._lost is None and self._last_read is not None:
                    return
            raise DatabaseUnavailable("metadata cannot be checked: the ledger has not been read recently")

    def key_known(self, key_id: str) -> bool:
        """Whether the ledger says ``key_id`` exists (a row for any other id is a forgery)."""
        self.check_usable()
        expected = self._state.expected(KEY, key_id)
        return expected is not None and bool(expected[1])

    def erased(self, key_id: str, subject_digest: str) -> bool:
        """Whether the ledger records an erasure of that subject of ``key_id``: its key is then
        refused whatever the database holds (a row restored, a receipt deleted)."""
        return self._state.expected(ERASURE, erasure_name(key_id, subject_digest)) is not None

    def verified_erasure(self, erasure: Erasure) -> bool:
        """Whether a stored receipt is the one the ledger recorded."""
        expected = self._state.expected(ERASURE, erasure_name(erasure.key_id, erasure.subject_digest))
        return expected is not None and expected[1] == erasure_digest(erasure)

    def expected_revision(self, key_id: str) -> int | None:
        expected = self._state.expected(KEY, key_id)
        return None if expected is None else expected[0]

    def check_key(self, key: Key, *, final: bool = True) -> Key:
        """Returns ``key`` if its row is the one the ledger vouches for; raises
        KeyMetadataUnverified otherwise (and, when ``final``, reports the row)."""
        self.check_usable()
        expected = self._state.expected(KEY, key.key_id)
        actual = key_digest(key)
        if expected is not None and expected[1] == actual:
            self._clear(KEY, key.key_id)
            return key
        if expected is None:
            problem = "row without a ledger entry (inserted outside the service)"
        elif key.revision < expected[0]:
            problem = f"row at revision {key.revision}, the ledger's is {expected[0]} (an older row restored)"
        else:
            problem = f"row at revision {key.revision} does not match the ledger (changed outside the service)"
        if final:
            self._reject(KEY, key.key_id, problem)
        raise KeyMetadataUnverified(key.key_id)

    def row_missing(self, key_id: str) -> None:
        """Reports a key the ledger has and the database does not."""
        self._reject(KEY, key_id, "row missing (deleted outside the service)")

    def grant_verified(self, grant: Grant, *, report: bool = True) -> bool:
        """Whether the ledger vouches for ``grant``; when not and ``report``, it is reported."""
        expected = self._state.expected(GRANT, grant.grant_id)
        if self._lost is None and expected is not None and expected[1] and expected[1] == grant_digest(grant):
            return True
        if expected is None:
            problem = "grant without a ledger entry (inserted outside the service)"
        elif not expected[1]:
            problem = "revoked grant restored"
        else:
            problem = "grant changed outside the service"
        if report:
            self._reject(GRANT, grant.grant_id, problem)
        return False

    def member_verified(self, group: str, identity: str, *, report: bool = True) -> bool:
        name = member_name(group, identity)
        expected = self._state.expected(MEMBER, name)
        if self._lost is None and expected is not None and expected[1] == member_digest(group, identity):
            return True
        if report:
            self._reject(
                MEMBER, name, "membership without a ledger entry" if not expected else "removed membership restored"
            )
        return False

    def _reject(self, kind: str, name: str, problem: str) -> None:
        if self._lost is not None or self._rejected.get((kind, name)) == problem:
            return
        self._rejected[(kind, name)] = problem
        REJECTED.labels(kind).set(sum(1 for (k, _) in self._rejected if k == kind))
        log.error(
            "protected row does not verify; it is ignored",
            extra={"fields": {"kind": kind, "name": name[:128], "problem": problem}},
        )
        if self._reporter is not None:
            self._reporter.integrity_event("MetadataRejected", kind, name, problem)

    def _clear(self, kind: str, name: str) -> None:
        if self._rejected.pop((kind, name), None) is not None:
            REJECTED.labels(kind).set(sum(1 for (k, _) in self._rejected if k == kind))

    def health_problem(self) -> str | None:
        """A health detail: None while every row read verified."""
        if self._lost is not None:
            return self._lost
        if self._rejected:
            return f"{len(self._rejected)} protected rows do not verify (kms db verify lists them)"
        return None


@dataclass(frozen=True)
class RowProblem:
    kind: str
    name: str
    problem: str


class ResettableAnchor(Anchor, Protocol):
    def reset(self, seq: int, hash_hex: str) -> None: ...


class HsmAnswer(Exception):
    """The HSM did not answer a seal check (not a verdict on the ledger)."""


class _AnchorAhead(Exception):
    """The ledger read ends before the anchor (or at it with another hash): a rollback, unless
    the anchor moved after the ledger was read."""

    def __init__(self, detail: str, anchored: tuple[int, str]) -> None:
        super().__init__(detail)
        self.anchored = anchored
