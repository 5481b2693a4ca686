"""Where each worker journals its audit records, and what happens to a journal no worker owns.

A journal directory belongs to one process at a time: the journal replays, at start, every file
it finds in its directory, so two live processes must never share one. Worker ``i`` of ``kms
serve --workers N`` owns ``<journal>-<i>`` beside the single-process journal ``<journal>``
(``<data dir>/audit-journal`` unless KMS_AUDIT_JOURNAL_DIR says), and worker 0 owns
``<journal>`` itself. The assignment is by index, not by process, so a restarted worker replays
what its killed predecessor journaled but had not chained yet.

With fewer workers than before (or a single process again), the journals of the indices that
no longer run would never be replayed. Before any worker starts, ``gather_orphans`` moves their
files into ``<journal>``: a file's name and its lines' origins are unique on their own, and the
replay into the chain is idempotent, so moving a file is all it takes.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from kms.config import Settings

log = logging.getLogger(__name__)

_FILE_GLOB = "*.jsonl"


def base_directory(settings: Settings) -> Path:
    return settings.audit_journal_dir or settings.data_dir / "audit-journal"


def worker_directory(settings: Settings, index: int) -> Path:
    base = base_directory(settings)
    return base if index == 0 else base.with_name(f"{base.name}-{index}")


def gather_orphans(settings: Settings, workers: int) -> int:
    """Moves the journal files of worker indices >= ``workers`` into worker 0's directory;
    returns how many. Call only while no process of this data directory serves."""
    base = base_directory(settings)
    index_of = re.compile(re.escape(base.name) + r"-(\d+)")
    moved = 0
    if not base.parent.is_dir():
        return 0
    for directory in sorted(base.parent.iterdir()):
        match = index_of.fullmatch(directory.name)
        if match is None or int(match.group(1)) < workers or not directory.is_dir():
            continue
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in sorted(directory.glob(_FILE_GLOB)):
            os.replace(path, base / path.name)
            moved += 1
    if moved:
        log.info("audit journals of workers no longer running adopted", extra={"fields": {"files": moved}})
    return moved
