"""What the use cases that change metadata need from the metadata checks (kms.service.integrity)."""

from __future__ import annotations

from typing import Protocol


class Anchoring(Protocol):
    def anchor_now(self) -> None:
        """Moves the HSM anchor past every committed metadata change (kms.service.integrity)."""
        ...

    def anchor_if_unanchored(self) -> None:
        """anchor_now, but only while the anchor holds nothing yet."""
        ...
