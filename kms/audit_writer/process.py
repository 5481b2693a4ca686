"""The serving process's side of its audit writer: start it, tell it what to do, hear how far it
got, and start it again if it dies.

The two talk over the writer's standard streams, one JSON or word per line:

- to the writer: first its configuration (``WriterConfig``, the HSM PIN included: a pipe, never
  the command line or the environment), then ``hurry`` whenever a batch is wanted at once. End
  of input means stop: the writer chains what it can within a few seconds and exits, which is
  also what happens when the serving process is killed.
- from the writer: ``{"through": [file, line] | null, "state": "ok" | "failing" | "tampered"}``
  whenever that changes, the first one once it holds the journal and can seal.

A writer that exits unasked is started again after a growing pause; meanwhile records wait in
the journal and the serving process's lag bound fails calls closed if it lasts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from kms.domain.audit import ChainProgress

log = logging.getLogger(__name__)

_RESTART_START, _RESTART_MAX = 0.1, 5.0


@dataclass(frozen=True)
class WriterConfig:
    database_url: str = field(repr=False)  # may hold a password
    module_path: str
    token_label: str
    pin: str = field(repr=False)
    label_prefix: str
    journal_dir: str
    replay_through: tuple[str, int] | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    max_batch: int = 2000
    hsm_retry_interval: float = 1.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> WriterConfig:
        values = json.loads(line)
        if values.get("replay_through") is not None:
            values["replay_through"] = tuple(values["replay_through"])
        return cls(**values)


class WriterProcess:
    def __init__(self, config: WriterConfig, *, ready_timeout: float = 30.0) -> None:
        """``ready_timeout``: how long ``start`` waits for the writer's first report (a writer
        still finishing for an earlier process holds the journal until it has)."""
        self._config = config
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._input_lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def start(self, report: Callable[[ChainProgress], None]) -> None:
        self._watcher = threading.Thread(target=self._watch, args=(report,), name="kms-audit-writer", daemon=True)
        self._watcher.start()
        if self._ready_timeout > 0 and not self._ready.wait(self._ready_timeout):
            log.warning("audit writer not ready yet; records wait in the journal")

    def hurry(self) -> None:
        self._send(b"hurry\n")

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._input_lock:
            process = self._process
            if process is not None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        if not self._ready.is_set():
            # Still starting (it has chained nothing): stopping it now is what kill -9 would
            # do, which the journal is made for; waiting would only wait out its start-up.
            timeout = 0.0
            if process is not None:
                with contextlib.suppress(OSError):
                    process.kill()
        if self._watcher is not None:
            self._watcher.join(timeout)
        process = self._process
        if process is not None and process.poll() is None:
            if self._ready.is_set():
                log.warning("audit writer did not stop in time; killed")
            process.kill()
            process.wait()

    def _send(self, line: bytes) -> None:
        with self._input_lock:
            process = self._process
            if process is None or process.stdin is None or process.stdin.closed:
                return
            try:
                process.stdin.write(line)
                process.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass  # it is exiting: the watcher starts another

    def _watch(self, report: Callable[[ChainProgress], None]) -> None:
        pause = _RESTART_START
        while not self._stopping.is_set():
            process = self._spawn()
            if process is None:
                self._stopping.wait(pause)
                pause = min(pause * 2, _RESTART_MAX)
                continue
            assert process.stdout is not None
            for line in process.stdout:
                try:
                    values = json.loads(line)
                    through = values["through"]
                    progress = ChainProgress(tuple(through) if through else None, values["state"])
                except (ValueError, KeyError, TypeError):
                    log.warning("audit writer said something unexpected")
                    continue
                self._ready.set()
                report(progress)
                pause = _RESTART_START
            code = process.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            log.error("audit writer exited; starting it again", extra={"fields": {"exit_code": code}})
            self._stopping.wait(pause)
            pause = min(pause * 2, _RESTART_MAX)

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "kms.audit_writer"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        except OSError as error:
            log.error("audit writer cannot be started", extra={"fields": {"error": error.strerror or str(error)}})
            return None
        with self._input_lock:
            self._process = process
            if self._stopping.is_set():
                assert process.stdin is not None
                process.stdin.close()
                return process
        self._send(self._config.to_json())
        return process
