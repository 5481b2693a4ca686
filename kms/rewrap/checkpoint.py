"""Where an interrupted run resumes: a small JSON file, replaced atomically after every batch.

The file names the job it belongs to (a fingerprint of source and options), so a checkpoint is
never applied to another job. Writing it last, after the batch's values are stored, makes the
worst case of a crash a batch that is processed twice, which is harmless: re-wrapping a value
that is already current changes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kms.rewrap.report import Report


class CheckpointMismatch(ValueError):
    """A checkpoint file saved by another job (other source or options, or an older engine)."""


@dataclass
class Checkpoint:
    fingerprint: str
    position: Any = None  # the last item done: a primary key value or a file path
    complete: bool = False
    report: Report = field(default_factory=Report)

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w") as handle:
            json.dump(asdict(self), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> Checkpoint | None:
        """The saved progress of this job, or None if there is none (or it is finished)."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        if data.get("fingerprint") != fingerprint:
            raise CheckpointMismatch(
                f"checkpoint {path} belongs to another job (or to an older kms rewrap); remove it or use another file"
            )
        if data.get("complete"):
            return None
        return cls(fingerprint, data.get("position"), False, Report.from_dict(data.get("report") or {}))
