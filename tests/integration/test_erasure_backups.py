"""An erasure is final in database backups once the cadence has destroyed the versions that
wrapped the subject's key: a copy of the database taken before the erasure, restored after, does
not bring the subject's data back. With an injected clock, on SQLite (a file copy through
SQLite's backup API) and PostgreSQL (pg_dump and pg_restore)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from kms.app import build_services
from kms.domain.keys import VersionState
from kms.errors import KeyMaterialMissing, MetadataIntegrityLost, SubjectErased
from kms.service.calls import Call
from tests.support.clock import ManualClock
from tests.support.postgres import ADMIN_DSN

DAY = timedelta(days=1)
FINALITY = timedelta(days=30)
ALICE, BOB = {"user_id": "alice"}, {"user_id": "bob"}


class Backups:
    """Copies of the database under test, and putting one back (the services must be closed)."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = make_url(url)
        self.directory = directory

    def take(self, name: str) -> Path:
        target = self.directory / name
        if self.url.get_backend_name() == "sqlite":
            with sqlite3.connect(self.url.database) as source, sqlite3.connect(target) as copy:
                source.backup(copy)
        else:
            subprocess.run(["pg_dump", "-Fc", "-f", str(target), self._dsn(self.url.database)], check=True)
        return target

    def restore(self, backup: Path) -> None:
        if self.url.get_backend_name() == "sqlite":
            database = Path(self.url.database)
            for leftover in (Path(f"{database}-wal"), Path(f"{database}-shm")):
                leftover.unlink(missing_ok=True)
            shutil.copyfile(backup, database)
            return
        name = self.url.database
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        subprocess.run(["pg_restore", "--no-owner", "-d", self._dsn(name), str(backup)], check=True)

    @staticmethod
    def _dsn(name: str) -> str:
        return ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


def _accepted(settings, clock):
    """A replica on a restored database: refused until the operator accepts the restore, then used."""
    refused = build_services(settings, clock)
    try:
        with pytest.raises(MetadataIntegrityLost, match="rolled back"):
            refused.keys.get_key(Call(), "people")
        refused.integrity.accept_restore(refused.anchor)
    finally:
        refused.close()
    return build_services(settings, clock)


def test_a_backup_restored_after_the_cadence_does_not_bring_an_erased_subject_back(settings, tmp_path):
    settings = settings.model_copy(update={"min_destroy_pending_window": DAY})
    clock = ManualClock()
    backups = Backups(settings.database_url, tmp_path)
    live = build_services(settings, clock)
    try:
        live.keys.create_key(Call(), "people", subject_field="user_id", erasure_finality=FINALITY)
        for_alice = live.data_keys.generate_data_key(Call(), "people", ALICE)
        for_bob = live.data_keys.generate_data_key(Call(), "people", BOB)
        before_erasure = backups.take("before-erasure")

        clock.advance(DAY)
        erased_at = clock.now()
        live.erasures.erase_subject(Call(), "people", "alice")
        after_carry = None
        while True:
            live.scheduler.run_once()
            key = live.keys.get_key(Call(), "people")
            if (
                after_carry is None
                and key.primary_version == 2
                and not live.subject_repository.wrapped_below("people", 2, 1)
            ):
                after_carry = backups.take("after-carry")  # bob carried onto v2, v1 not yet destroyed
            (status,), _ = live.erasures.list_erasures(Call(), "people")
            if status.finality.final:
                break
            assert clock.now() < erased_at + FINALITY, "the erasure must be final within erasure_finality"
            clock.advance(DAY / 4)
        assert key.version(1).state is VersionState.DESTROYED
        assert live.master_keys.find("people", 1) == []  # gone from the HSM, not only from the database
        assert after_carry is not None
    finally:
        live.close()

    # The copy from before the erasure: alice's key row is in it, wrapped by version 1, which no
    # longer exists anywhere. Her data stays unreadable. So is bob's, whose row there is wrapped by
    # version 1 too: a backup of subject keys outlives its versions by design (docs/privacy.md).
    backups.restore(before_erasure)
    restored = _accepted(settings, clock)
    try:
        assert restored.subject_repository.get("people", restored.subjects.digest("people", "alice")) is not None
        with pytest.raises(KeyMaterialMissing):
            restored.data_keys.decrypt(Call(), for_alice.wrapped_key, ALICE)
        with pytest.raises(KeyMaterialMissing):
            restored.data_keys.decrypt(Call(), for_bob.wrapped_key, BOB)
    finally:
        restored.close()

    # The copy taken after bob was carried onto version 2 (which still exists): bob opens, and
    # alice is erased there (that ledger records it) and has no key row at all. (No refusal this
    # time: the anchor was moved back to the older copy's ledger, which this one continues.)
    backups.restore(after_carry)
    restored = build_services(settings, clock)
    try:
        assert restored.data_keys.decrypt(Call(), for_bob.wrapped_key, BOB).plaintext == for_bob.plaintext
        with pytest.raises(SubjectErased):
            restored.data_keys.decrypt(Call(), for_alice.wrapped_key, ALICE)
        assert restored.subject_repository.get("people", restored.subjects.digest("people", "alice")) is None
    finally:
        restored.close()
