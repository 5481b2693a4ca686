"""The bench server as ``kms serve --workers N``, for BenchServer(launcher=...).

    _serve_workers.py N

Settings come from KMS_* variables (BenchServer sets them, KMS_LISTEN with port 0 among them).
Starts the supervisor, waits for the port it listens on (``--port-file`` in the data directory),
prints the target as its one line of output, then forwards SIGTERM and SIGINT to the supervisor
(which drains its workers) and exits with its status. Without the bench's empty call: the
supervisor serves what ``kms serve`` serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 120.0


def main() -> int:
    workers = sys.argv[1]
    port_file = Path(os.environ["KMS_DATA_DIR"]) / "bench-port"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "kms", "serve", "--workers", workers, "--port-file", str(port_file)]
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: supervisor.send_signal(number))
    deadline = time.monotonic() + START_TIMEOUT
    while not port_file.exists():
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.kill()
            return supervisor.wait() or 1
        time.sleep(0.05)
    print(f"127.0.0.1:{port_file.read_text().strip()}", flush=True)
    return supervisor.wait()


if __name__ == "__main__":
    sys.exit(main())
