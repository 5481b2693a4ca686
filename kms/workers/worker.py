"""One worker of ``kms serve --workers``: the whole service in a process of its own.

A worker is started by the supervisor as a new program (``python -m kms serve --worker-index I
--supervisor-fd FD``), not as a fork of it, so everything that must not cross a fork starts
here, after it: the PKCS#11 module is loaded and initialized, with this worker's own session
pool, by ``Application``; gRPC creates its threads; the database pool opens its connections.
It serves on the port the supervisor holds (SO_REUSEPORT), journals audit records in a
directory of its own (kms.workers.journals), and writes its metrics where the supervisor
gathers them (prometheus-client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR).

It tells the supervisor how it is through the pipe ``FD``: one JSON object per line,
``{"state": "listening" | "serving" | "not_serving" | "stopping", "port": P | null}``, written
whenever its state changes (``port`` is its own address's, with KMS_WORKER_LISTEN).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import IO

from kms import logs
from kms.api.server import add_listener, split_listen
from kms.app import Application
from kms.config import Settings
from kms.service.recording import CallRecorder
from kms.workers import journals

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_REPORT_INTERVAL = 0.1
DEFAULT_CONNECTION_AGE = timedelta(seconds=60)


class _WorkerField(logging.Filter):
    """Adds ``worker=<index>`` to every log line, which the supervisor's log interleaves."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {"worker": self._index, **(fields if isinstance(fields, dict) else {})}
        return True


def worker_settings(settings: Settings, index: int) -> Settings:
    """A connection stays with the worker it reached first (the kernel chose by its address), so
    without an age limit the clients of a worker that was restarted would all stay on the others."""
    update: dict[str, object] = {"audit_journal_dir": journals.worker_directory(settings, index), "workers": None}
    if settings.max_connection_age is None:
        update["max_connection_age"] = DEFAULT_CONNECTION_AGE
    return settings.model_copy(update=update)


def worker_listen(settings: Settings, index: int) -> str | None:
    """This worker's own address: HOST:0 stays HOST:0, HOST:P becomes HOST:P+index."""
    if not settings.worker_listen:
        return None
    host, port = split_listen(settings.worker_listen)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + index if port else 0}"


def run(
    settings: Settings,
    index: int,
    supervisor_fd: int,
    *,
    extra_services: tuple[tuple[object, object], ...] = (),
    recorder_factory: Callable[[CallRecorder], CallRecorder] | None = None,
) -> int:
    """Serves until SIGTERM; returns the exit status. ``extra_services`` and
    ``recorder_factory`` go to Application (the benchmark's empty call, scripts/bench)."""
    _die_with_supervisor()
    logs.configure(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    report = os.fdopen(supervisor_fd, "w", buffering=1)
    settings = worker_settings(settings, index)
    app = Application(settings, reuse_port=True, extra_services=extra_services, recorder_factory=recorder_factory)
    own = worker_listen(settings, index)
    own_port = add_listener(app.server, own, app.tls.credentials() if app.tls else None) if own else None
    app.start()
    state = "listening"
    _send(report, state, own_port)
    # Bounded waits: a signal's Python handler runs only once the main thread is back in the
    # interpreter.
    while not stop.wait(_REPORT_INTERVAL):
        now = "serving" if app.health.serving else "not_serving"
        if now != state:
            state = now
            _send(report, state, own_port)
    _send(report, "stopping", own_port)
    app.stop()
    return 0


def _send(report: IO[str], state: str, port: int | None) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: the parent-death signal stops us
        report.write(json.dumps({"state": state, "port": port}) + "\n")


def _die_with_supervisor() -> None:
    """Asks Linux for SIGTERM when the supervisor dies, so that a supervisor killed with -9
    does not leave workers serving on a port nobody watches (they drain and exit)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
