"""The audit journal on disk, and its way into the chain (SoftHSM seal key; SQLite and PostgreSQL):

- a journal file goes only once every line in it is chained and a newer file exists (so its
  appender has moved on);
- a line torn by a crash mid-append, cut short or with a hole in it, is skipped, and the
  complete lines before it and after the restart reach the chain;
- a restart replays what was journaled and is not in the chain, each line exactly once, however
  far the killed writer got (a batch committed but never reported included).

The appender that dies mid-line is a real process killed with SIGKILL, holding the journal's
owner lock as it dies. The writer's side runs in this process (JournalTail and AuditChainer, as
kms.audit_writer runs them), so the test decides exactly how far it gets before it "dies".
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kms.domain.audit import AuditEntry, JournaledEntry, JournalPosition
from kms.service.audit_chainer import AuditChainer
from kms.store import audit_journal
from kms.store.audit_journal import WHOLE_FILE, FileAuditJournal, JournalTail
from tests.support.audit_chain import Chain, open_chain

ROOT = Path(__file__).resolve().parents[2]
SMALL_FILE = 4096  # bytes: a few dozen lines, so that a test spans many files


def _entries(count: int, start: int = 0) -> list[AuditEntry]:
    now = datetime.now(UTC)
    return [
        AuditEntry(time=now, identity="svc", rpc="Decrypt", outcome="OK", key_id="k", item=start + i)
        for i in range(count)
    ]


def _origins(position: JournalPosition, count: int) -> list[str]:
    """The origins of the ``count`` lines an append that ended at ``position`` wrote (the
    journal's documented form: <the file's hex id>:<line number>)."""
    name, last = position
    file_id = Path(name).stem.rpartition("-")[2]
    return [f"{file_id}:{line}" for line in range(last - count + 1, last + 1)]


def _files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.jsonl"))


def _read_all(tail: JournalTail, batch: int = 50) -> list[JournaledEntry]:
    lines: list[JournaledEntry] = []
    while read := tail.read(batch):
        lines.extend(read)
    return lines


@pytest.fixture
def small_files(monkeypatch):
    monkeypatch.setattr(audit_journal, "FILE_BYTES", SMALL_FILE)


@pytest.fixture
def chain(hsm_token, database_url, label_prefix) -> Iterator[Chain]:
    with open_chain(hsm_token, database_url, label_prefix) as opened:
        yield opened


def _caught_up(chainer: AuditChainer, through: JournalPosition, steps: int = 200) -> None:
    """Steps ``chainer`` until it reports everything up to ``through`` chained."""
    for _ in range(steps):
        progress = chainer.progress
        assert progress.state == "ok", progress
        if progress.through is not None and progress.through >= through:
            return
        chainer.step()
    raise AssertionError(f"the writer never got to {through}")


# -- files go once chained --------------------------------------------------------------------


def test_a_file_goes_only_once_every_line_in_it_is_chained_and_a_newer_file_exists(tmp_path, small_files):
    journal = FileAuditJournal(tmp_path)
    for n in range(200):
        journal.append(_entries(5, 5 * n))
    files = _files(tmp_path)
    assert len(files) > 20  # many files started as they filled
    tail = JournalTail(tmp_path)
    lines = _read_all(tail)
    assert [line.entry.item for line in lines] == list(range(1000))
    assert len({line.origin for line in lines}) == 1000
    in_file = {name: sum(1 for line in lines if line.position[0] == name) for name in files}

    for start in range(0, len(lines), 37):
        through = lines[min(start + 37, len(lines)) - 1].position
        tail.chained(through)
        settled = tail.settle()
        name, line = through
        done = [f for f in files if f < name or (f == name and line == in_file[f])]
        # The newest file is still appended to: it stays however much of it is chained.
        assert _files(tmp_path) == [f for f in files if f not in done or f == files[-1]], f"chained to {through}"
        # Everything up to the settled position is in the chain (a removed file's as a whole).
        assert settled == ((name, WHOLE_FILE) if name in done and name != files[-1] else through)

    journal.close()
    restarted = FileAuditJournal(tmp_path)  # starts a newer file: the old newest is complete now
    position = restarted.append(_entries(1, 1000))
    assert [line.entry.item for line in tail.read(10)] == [1000]
    tail.settle()
    assert _files(tmp_path) == [position[0]]
    restarted.close()
    tail.close()


# -- torn lines -------------------------------------------------------------------------------


def die_mid_append(directory: str, tear: str) -> None:
    """Run in a process of its own: journals items 0-2, then item 3 only in part, and is killed
    (SIGKILL) holding the journal. ``tear``: "cut short" (the copy stopped part-way: no LF) or
    "hole" (the copy wrote the line's end, LF included, before its middle: memcpy may copy the
    last bytes first)."""
    journal = FileAuditJournal(Path(directory))
    name, _ = journal.append(_entries(3))
    path = Path(directory) / name
    end = path.read_bytes().index(b"\0")
    journal.append(_entries(1, 3))
    content = path.read_bytes()
    torn_line = content[end : content.index(b"\0", end)]
    descriptor = os.open(path, os.O_WRONLY)
    # Undo part of the copy: those bytes were never written (the file is zero where unwritten).
    if tear == "cut short":
        os.pwrite(descriptor, b"\0" * (len(torn_line) // 2 + 1), end + len(torn_line) // 2)
    else:
        os.pwrite(descriptor, b"\0" * 8, end + len(torn_line) // 2)
    os.close(descriptor)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("tear", ["cut short", "hole"])
def test_a_line_torn_by_a_crash_mid_append_is_skipped_and_the_complete_lines_reach_the_chain(
    tmp_path, chain, tear, caplog
):
    directory = tmp_path / "journal"
    died = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import tests.integration.test_audit_journal as t; t.die_mid_append({str(directory)!r}, {tear!r})",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()

    # The writer meanwhile (its appender is dead, no newer file yet): the complete lines, and
    # nothing of the torn one, which may still be in flight as far as the reader can know.
    tail = JournalTail(directory)
    chainer = chain.chainer(tail)
    chainer.step()
    assert chain.column("item") == [0, 1, 2]

    # The restart: the dead process's owner lock is free, and a newer file starts.
    restarted = FileAuditJournal(directory)
    assert restarted.backlog is not None
    last = restarted.append(_entries(1, 10))
    caplog.set_level(logging.WARNING, logger="kms.store.audit_journal")
    _caught_up(chainer, last)
    assert chain.column("item") == [0, 1, 2, 10]
    assert "torn audit journal line skipped" in caplog.text
    assert len(set(chain.column("origin"))) == 4
    assert _files(directory) == [last[0]]  # the dead process's file went once its lines were chained
    assert chain.intact()
    restarted.close()
    tail.close()


# -- restart ----------------------------------------------------------------------------------


def test_a_restart_replays_what_was_not_chained_exactly_once(tmp_path, small_files, chain, caplog):
    directory = tmp_path / "journal"
    first = FileAuditJournal(directory)
    journaled: list[str] = []
    for n in range(12):
        journaled += _origins(first.append(_entries(5, 5 * n)), 5)
    assert len(_files(directory)) > 1

    # A writer that chains six batches and reports them (letting go of the files they fill),
    # then is killed after committing a seventh, before reporting it.
    killed = JournalTail(directory)
    chainer = chain.chainer(killed, max_batch=7)
    for _ in range(6):
        chainer.step()
    before = _files(directory)
    assert chainer.progress.state == "ok"
    assert len(_files(directory)) < len(before), "no file was wholly chained: make SMALL_FILE smaller"
    chainer.step()
    assert chain.column("item") == list(range(49))
    killed.close()
    first.close()

    # The restart: a new appender (its backlog is what the dead one journaled), a new writer
    # that replays from the start of what is left.
    second = FileAuditJournal(directory)
    assert second.backlog is not None and second.backlog[0] == _files(directory)[-2]
    position = second.append(_entries(5, 60))
    journaled += _origins(position, 5)
    caplog.set_level(logging.WARNING, logger="kms.service.audit_chainer")
    tail = JournalTail(directory)
    _caught_up(chain.chainer(tail, max_batch=7, replay_through=second.backlog), position)

    origins = chain.column("origin")
    assert len(origins) == len(set(origins)) == 65, "a record chained twice, or lost"
    assert set(origins) == set(journaled)
    assert chain.column("item") == list(range(65))  # in journal order, across the restart
    replayed = [r for r in caplog.records if r.getMessage() == "replaying audit records journaled before a restart"]
    assert sum(r.fields["records"] for r in replayed) == 60 - 49  # the unreported batch is not replayed
    assert _files(directory) == [position[0]]
    assert chain.intact()
    second.close()
    tail.close()
