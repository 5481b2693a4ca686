"""Who is calling, until when, and what the call did: what every use case receives besides its
arguments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kms.errors import DeadlineExceeded, KmsError


class Trail:
    """What a use case tells the audit log about one call: the facts it holds (the key and
    version it used, the encryption context it bound, a short detail), and for a batch one
    trail per item with that item's outcome.

    Use cases note facts as soon as they know them, before anything can fail, so that a refused
    call is recorded with what it asked for. The audit log turns a trail into records
    (kms.service.audit); the context is kept as its canonical encoding and only ever leaves as a
    keyed digest. Not shared between threads: one call, one trail.
    """

    __slots__ = ("_next_item", "context", "detail", "items", "key_id", "key_version")

    def __init__(self) -> None:
        self.key_id = ""
        self.key_version = 0
        self.context: bytes | None = None
        self.detail = ""
        # (position in the batch or stream, the item's trail, its error or None)
        self.items: list[tuple[int, Trail, KmsError | None]] = []
        self._next_item = 0

    def __repr__(self) -> str:  # the context's values are not for logs
        return f"Trail(key_id={self.key_id!r}, key_version={self.key_version}, items={len(self.items)})"

    def note(
        self,
        *,
        key_id: str | None = None,
        key_version: int | None = None,
        context: bytes | None = None,
        detail: str | None = None,
    ) -> None:
        if key_id is not None:
            self.key_id = key_id
        if key_version is not None:
            self.key_version = key_version
        if context is not None:
            self.context = context
        if detail is not None:
            self.detail = detail

    def add_item(self, item: Trail, error: KmsError | None) -> None:
        """Records the next item of a batch or stream (numbered on from the items before)."""
        self.items.append((self._next_item, item, error))
        self._next_item += 1

    def take_items(self) -> list[tuple[int, Trail, KmsError | None]]:
        """The items noted since the last call (a stream's records go out message by message)."""
        taken, self.items = self.items, []
        return taken

    @property
    def item_count(self) -> int:
        return self._next_item


@dataclass(frozen=True, slots=True)
class Call:
    """One request, as the service sees it.

    ``identity`` is the authenticated caller: a TLS client certificate's identity, "anonymous"
    over TLS without one, "local" in development mode, or "kms:<task>" for the service's own
    work (the scheduler, reconciliation). ``deadline`` is a time.monotonic() value or None.
    ``trail`` collects what the audit log records of the call.
    """

    identity: str = "local"
    request_id: str = ""
    peer: str = ""
    method: str = ""
    deadline: float | None = None
    groups: frozenset[str] = field(default_factory=frozenset)
    trail: Trail = field(default_factory=Trail, compare=False, repr=False)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded()

    def for_item(self) -> Call:
        """The same caller and deadline with a trail of its own, for one item of a batch."""
        # Built field by field (every field but the trail): dataclasses.replace costs several
        # times more, and this runs once per item of every batch and stream.
        return Call(
            identity=self.identity,
            request_id=self.request_id,
            peer=self.peer,
            method=self.method,
            deadline=self.deadline,
            groups=self.groups,
            trail=Trail(),
        )


SYSTEM_PREFIX = "kms:"


def internal(task: str) -> Call:
    """A call made by the service itself (scheduler, reconciliation, integrity checks): its
    identity is ``kms:<task>``, a form no client certificate can claim (kms.api.tls)."""
    return Call(identity=f"{SYSTEM_PREFIX}{task}", method=task, request_id=f"{task}-{time.time_ns():x}")
