"""What the supervisor tells the outside world: a status file, metrics and a health endpoint.

``<data dir>/workers.json`` is rewritten (beside it, then renamed over it) whenever a worker
starts, changes state or exits::

    {"supervisor_pid": 4100, "listen": "127.0.0.1:50051", "metrics_port": 9100, "serving": true, "workers": [
        {"index": 0, "pid": 4101, "state": "serving", "port": 40211, "restarts": 0,
         "started": "2026-01-05T10:00:00.120Z", "last_exit": null}, ...]}

``state`` is ``starting`` (not listening yet), ``listening`` (start-up checks running),
``serving``, ``not_serving`` (a health check fails: HSM, database, audit, ledger), ``stopping``,
or ``exited`` (waiting to be restarted). ``port`` is the worker's own address with
KMS_WORKER_LISTEN, else null. ``last_exit`` is how the previous process of that index ended
(``"exit 1"``, ``"signal 9"``).

The metrics address (KMS_METRICS_LISTEN) is served by the supervisor: every worker's metrics
summed (prometheus-client's multiprocess mode), the supervisor's own (``kms_workers``,
``kms_workers_serving``, ``kms_worker_restarts_total``), and ``/healthz``: 200 and the status
document while the workers serve, 503 otherwise.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

Document = dict[str, Any]


def write_atomically(path: Path, text: str) -> None:
    """A reader sees the old text or the new, never a part."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def is_serving(workers: Iterable[Document]) -> bool:
    """At least one worker serves and none that listens fails its checks: a worker being
    restarted takes no connections (its socket is closed), but one that listens and does not
    serve would get its share of them."""
    states = [worker["state"] for worker in workers]
    return "serving" in states and not any(state in ("listening", "not_serving") for state in states)


class SupervisorMetrics:
    def __init__(self, multiprocess_dir: Path, workers: int) -> None:
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(multiprocess_dir))
        Gauge("kms_workers", "Worker processes configured", registry=self.registry).set(workers)
        self.serving = Gauge("kms_workers_serving", "Worker processes whose checks pass", registry=self.registry)
        self.restarts = Counter(
            "kms_worker_restarts", "Worker processes started again after theirs ended", registry=self.registry
        )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the log


class MetricsEndpoint:
    """``/healthz`` from ``status()``; everything else is the Prometheus exposition."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, status: Callable[[], Document]) -> None:
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                document = status()
                start_response(
                    "200 OK" if document["serving"] else "503 Service Unavailable",
                    [("Content-Type", "application/json")],
                )
                return [json.dumps(document).encode()]
            return metrics(environ, start_response)

        self._server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="kms-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
