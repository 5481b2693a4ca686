"""The hash-chained audit log without a server: its repository on a real database and its seal key
in the test token, as the audit writer process holds them (kms.audit_writer)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, text

from kms.clock import SystemClock
from kms.domain.audit import JournalPosition
from kms.hsm.audit_seal import Pkcs11AuditSealer
from kms.hsm.pool import SessionPool
from kms.service.audit import verify_log
from kms.service.audit_chainer import AuditChainer
from kms.store.audit import SqlAuditRepository
from kms.store.audit_journal import JournalTail
from kms.store.database import exclusive, make_engine, upgrade


@dataclass
class Chain:
    engine: Engine
    repository: SqlAuditRepository
    sealer: Pkcs11AuditSealer

    def chainer(
        self, tail: JournalTail, *, max_batch: int = 2000, replay_through: JournalPosition | None = None
    ) -> AuditChainer:
        return AuditChainer(
            self.repository, self.sealer, SystemClock(), tail, max_batch=max_batch, replay_through=replay_through
        )

    def column(self, name: str) -> list:
        """One column of every record, in chain order."""
        with self.engine.connect() as connection:
            return list(connection.execute(text(f"SELECT {name} FROM audit_records ORDER BY seq")).scalars())

    def intact(self) -> bool:
        return verify_log(self.repository, self.sealer).intact


@contextmanager
def open_chain(hsm_token, database_url: str, label_prefix: str) -> Iterator[Chain]:
    """The log on ``database_url`` (migrated), sealed by the seal key under ``label_prefix``."""
    engine = make_engine(database_url)
    upgrade(engine)
    pool = SessionPool(hsm_token.module_path, hsm_token.token_label, hsm_token.read_pin(), 2, retry_interval=0.1)
    sealer = Pkcs11AuditSealer(
        pool, SystemClock(), label_prefix, creation_lock=lambda: exclusive(engine, "hsm-object-creation")
    )
    try:
        sealer.ensure()
        yield Chain(engine, SqlAuditRepository(engine), sealer)
    finally:
        pool.close()
        engine.dispose()
