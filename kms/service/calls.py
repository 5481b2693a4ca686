"""Who is calling and until when: what every use case receives besides its arguments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kms.errors import DeadlineExceeded


@dataclass(frozen=True, slots=True)
class Call:
    """One request, as the service sees it.

    ``identity`` is the authenticated caller: a TLS client certificate's identity,
    "anonymous" over TLS without one, or "local" for plaintext loopback callers (development).
    ``deadline`` is a time.monotonic() value or None.
    """

    identity: str = "local"
    request_id: str = ""
    peer: str = ""
    method: str = ""
    deadline: float | None = None
    groups: frozenset[str] = field(default_factory=frozenset)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded()


def internal(task: str) -> Call:
    """A call made by the service itself (scheduler, reconciler, CLI maintenance)."""
    return Call(identity=f"kms:{task}", method=task)
