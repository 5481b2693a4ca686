"""What the attacker-side tests share: hand-moved monotonic clocks for the pieces that take one,
raw gRPC channels that present a given client certificate, stream slots the test can watch, and
a server built with those pieces in place.

The composition root (kms.app) builds QuotaBook, CallRecorder, AuditLog and StreamLimits with
the real time.monotonic; ``start`` swaps each for the same class bound to a ManualMonotonic, so
that windows, budgets and lags move only when the test says.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from kms.api.streams import StreamLimits
from kms_proto.kms.v1 import kms_pb2_grpc

REASON_KEY = "kms-error-reason"
RETRY_AFTER_KEY = "retry-after-ms"
OTHER = "spiffe://kms.dev/other"
AUDITOR = "spiffe://kms.dev/auditor"


class ManualMonotonic:
    """A time.monotonic() that moves only when advanced."""

    def __init__(self, start: float = 10_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now


class WatchedStreams(StreamLimits):
    """StreamLimits that tells the test which identities took a slot and when slots came back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.changed = threading.Condition()
        self.opened: list[str] = []
        self.released = 0

    def open(self, identity, context):
        slot = super().open(identity, context)
        with self.changed:
            self.opened.append(identity)
            self.changed.notify_all()
        return slot

    def release(self, slot) -> None:
        super().release(slot)
        with self.changed:
            self.released += 1
            self.changed.notify_all()

    @property
    def held(self) -> int:
        return len(self.opened) - self.released

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), "the streams never reached the expected state"


def start(
    settings,
    monkeypatch,
    monotonic: ManualMonotonic | None = None,
    *,
    audit_monotonic: ManualMonotonic | None = None,
    clock=None,
    **application,
):
    """A started Application whose failure budgets, repeat windows and stream idleness run on
    ``monotonic``, whose audit lag runs on ``audit_monotonic`` (real time if not given: moving
    the other clock must not age records the writer would have chained meanwhile), and whose
    stream slots are WatchedStreams (``app.streams``)."""
    import kms.app
    from kms.service.audit import AuditLog
    from kms.service.authz import QuotaBook
    from kms.service.recording import CallRecorder

    monotonic = monotonic or ManualMonotonic()
    monkeypatch.setattr(kms.app, "QuotaBook", functools.partial(QuotaBook, monotonic=monotonic))
    monkeypatch.setattr(kms.app, "CallRecorder", functools.partial(CallRecorder, monotonic=monotonic))
    if audit_monotonic is not None:
        monkeypatch.setattr(kms.app, "AuditLog", functools.partial(AuditLog, monotonic=audit_monotonic))
    monkeypatch.setattr(kms.app, "StreamLimits", functools.partial(WatchedStreams, monotonic=monotonic))
    app = kms.app.Application(settings, clock=clock, **application)
    app.start()
    return app


def channel(server, certs: Path, name: str, options=()) -> grpc.Channel:
    """A TLS channel to ``server`` presenting the dev certificate ``name`` (admin, app, ...)."""
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.crt").read_bytes(), (certs / f"{name}.key").read_bytes(), (certs / f"{name}.crt").read_bytes()
    )
    return grpc.secure_channel(server.target, credentials, options=list(options))


class Stubs:
    """The three services' stubs over one channel."""

    def __init__(self, opened: grpc.Channel) -> None:
        self.channel = opened
        self.keys = kms_pb2_grpc.KeyManagementServiceStub(opened)
        self.policy = kms_pb2_grpc.PolicyServiceStub(opened)
        self.audit = kms_pb2_grpc.AuditServiceStub(opened)


def reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(REASON_KEY, "")


def refused(call: Callable[[], object]) -> grpc.RpcError:
    """The RpcError ``call`` raises (fails the test if it raises none)."""
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call was not refused")


def blocked_requests(release: threading.Event, messages=()) -> Iterator:
    """A request iterator that sends ``messages`` and then nothing until ``release`` is set:
    a client that holds its stream open without using it."""
    yield from messages
    release.wait(120)


def log_text(records) -> str:
    """Log records as the server writes them (kms.logs JSON lines), tracebacks included."""
    from kms.logs import JsonFormatter

    formatter = JsonFormatter()
    return "\n".join(formatter.format(record) for record in records)
