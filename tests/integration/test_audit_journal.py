"""The audit journal on disk: files go once all their lines are chained, whatever the order in
which lines reach the chain; a restart finds what a killed process journaled."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from kms.domain.audit import AuditEntry
from kms.store import audit_journal
from kms.store.audit_journal import FileAuditJournal


def _entries(count: int, start: int = 0) -> list[AuditEntry]:
    now = datetime.now(UTC)
    return [
        AuditEntry(time=now, identity="svc", rpc="Decrypt", outcome="OK", key_id="k", item=start + i)
        for i in range(count)
    ]


@pytest.fixture
def small_files(monkeypatch):
    monkeypatch.setattr(audit_journal, "FILE_BYTES", 4096)


def test_files_are_deleted_once_every_line_is_committed_in_any_order(tmp_path, small_files):
    journal = FileAuditJournal(tmp_path)
    origins = [origin for n in range(200) for origin in journal.append(_entries(5, 5 * n))]
    assert len(list(tmp_path.glob("*.jsonl"))) > 20  # many rotations
    random.Random(7).shuffle(origins)
    for start in range(0, len(origins) - 10, 37):
        journal.committed(origins[start : start + 37])
    assert len(list(tmp_path.glob("*.jsonl"))) > 1  # some lines not yet committed: their files stay
    journal.committed(origins[len(origins) - 10 - (len(origins) - 10) % 37 :])
    assert len(list(tmp_path.glob("*.jsonl"))) == 1  # only the file still appended to
    journal.close()


def test_a_file_whose_lines_were_all_committed_goes_when_appending_moves_on(tmp_path, small_files):
    journal = FileAuditJournal(tmp_path)
    first = journal.append(_entries(3))
    journal.committed(first)  # the current file: kept
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    while journal.append(_entries(1))[0].split(":")[0] == first[0].split(":")[0]:
        pass  # until a new file is started
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 2  # the first still holds uncommitted lines
    journal.close()


def test_a_restart_recovers_uncommitted_lines_and_then_lets_their_files_go(tmp_path, small_files):
    crashed = FileAuditJournal(tmp_path)
    written = [origin for n in range(50) for origin in crashed.append(_entries(4, 4 * n))]
    crashed.committed(written[:100])
    del crashed  # killed: never closed

    restarted = FileAuditJournal(tmp_path)
    recovered = restarted.recover()
    origins = [origin for origin, _ in recovered]
    # Files whose lines were all committed are gone; every other file comes back whole, in order.
    assert 100 <= len(origins) < 100 + 40 and origins == written[-len(origins) :]
    assert [entry.item for _, entry in recovered] == list(range(200 - len(origins), 200))
    restarted.committed([origin for origin, _ in recovered])
    restarted.append(_entries(1))
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    restarted.close()
