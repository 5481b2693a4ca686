"""The audit writer process (started by kms.audit_writer.process.WriterProcess, not by hand).

Its configuration arrives as the first line of standard input; then it chains the journal's
records batch after batch, reporting on standard output, until its input ends.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
from pathlib import Path

from kms import logs
from kms.audit_writer.process import WriterConfig
from kms.clock import SystemClock
from kms.domain.audit import ChainProgress
from kms.errors import KmsError
from kms.hsm.audit_seal import Pkcs11AuditSealer
from kms.hsm.pool import SessionPool
from kms.service.audit_chainer import AuditChainer
from kms.store.audit import SqlAuditRepository
from kms.store.audit_journal import JournalTail
from kms.store.database import exclusive, make_engine

log = logging.getLogger("kms.audit_writer")

# After its input ends (a stop, or the serving process died), what it still chains at most.
_DRAIN_SECONDS = 5.0


class _VettedSeal:
    """The seal key, searched for and vetted again before every seal: nothing is ever sealed
    with a key in doubt, even for the moment before the serving process's health check would
    notice (kms.hsm.audit_seal)."""

    def __init__(self, sealer: Pkcs11AuditSealer) -> None:
        self._sealer = sealer

    def seal(self, message: bytes) -> str:
        self._sealer.verify_pins()
        return self._sealer.seal(message)

    def check(self, message: bytes, mac_hex: str) -> bool:
        return self._sealer.check(message, mac_hex)

    def derive(self, purpose: bytes) -> bytes:
        return self._sealer.derive(purpose)


def main() -> int:
    # Signals meant for the serving process's group are not for it: it stops when its input ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    first = sys.stdin.buffer.readline()
    if not first.strip():  # the serving process went away before configuring it: nothing to do
        return 0
    try:
        config = WriterConfig.from_json(first)
    except (ValueError, TypeError):
        print("kms.audit_writer: its first input line must be its configuration", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    clock = SystemClock()
    engine = make_engine(config.database_url, pool_size=2)
    pool = SessionPool(
        config.module_path, config.token_label, config.pin, size=2, retry_interval=config.hsm_retry_interval
    )
    sealer = Pkcs11AuditSealer(
        pool, clock, config.label_prefix, creation_lock=lambda: exclusive(engine, "hsm-object-creation")
    )
    try:
        sealer.ensure()
    except KmsError as error:  # reported as failing batches until it can seal
        log.error("audit seal key not usable yet", extra={"fields": {"error": error.message}})
    journal = JournalTail(Path(config.journal_dir))  # waits for a writer still finishing
    chainer = AuditChainer(
        SqlAuditRepository(engine),
        _VettedSeal(sealer),
        clock,
        journal,
        max_batch=config.max_batch,
        replay_through=config.replay_through,
    )
    try:
        _run(chainer)
    finally:
        journal.close()
        pool.close()
        engine.dispose()
    return 0


def _run(chainer: AuditChainer) -> None:
    said: ChainProgress | None = None
    drain_until: float | None = None
    delay = 0.0
    while True:
        if drain_until is None:
            drain_until = _wait_for_input(delay)
        delay = chainer.step()
        progress = chainer.progress
        if progress != said:
            if not _say(progress) and drain_until is None:
                drain_until = time.monotonic() + _DRAIN_SECONDS  # nobody listens any more
            said = progress
        if drain_until is not None and (delay > 0 or time.monotonic() >= drain_until):
            return


def _wait_for_input(delay: float) -> float | None:
    """Waits up to ``delay`` seconds, less if asked to hurry; once input has ended, returns
    the time until which the writer may still drain."""
    readable, _, _ = select.select([sys.stdin.fileno()], [], [], delay)
    if readable and not os.read(sys.stdin.fileno(), 4096):
        return time.monotonic() + _DRAIN_SECONDS
    return None


def _say(progress: ChainProgress) -> bool:
    line = json.dumps({"through": progress.through, "state": progress.state})
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process's life
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
