"""Servers in their own processes, for tests that kill, signal or restart them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def kms_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kms", *args]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without KMS_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    env.update(extra or {})
    return env


class ServerProcess:
    """``kms serve`` in a process of its own, on a port the system picks (``--listen
    127.0.0.1:0``), which the server reports through ``--port-file`` once serving. Each start
    gets another port (read ``target`` after ``start``) unless it asks for the previous one, as
    a test of clients that keep their address across a restart must."""

    def __init__(self, data_dir: Path, env: dict[str, str], *, dev: bool = True, args: tuple[str, ...] = ()) -> None:
        """``args``: more ``kms serve`` arguments (``--workers 2``, ...)."""
        self.data_dir = data_dir
        self.env = env
        self.args = args
        self.port: int | None = None
        self.dev = dev
        self.process: subprocess.Popen | None = None
        self.log = data_dir / "server.log"
        self.port_file = data_dir / "server.port"

    @property
    def target(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not reported its port yet (start it, or wait_serving)")
        return f"127.0.0.1:{self.port}"

    def start(self, crash_at: str | None = None, wait: bool = True, *, same_port: bool = False) -> ServerProcess:
        env = dict(self.env)
        if crash_at:
            env["KMS_CRASH_AT"] = crash_at
        if same_port and self.port is None:
            raise RuntimeError("same_port: this server has not had a port yet")
        listen = f"127.0.0.1:{self.port if same_port else 0}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)  # a previous start's port is no news of this one
        self.port = None
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            kms_command(
                "serve",
                "--listen",
                listen,
                "--port-file",
                str(self.port_file),
                "--data-dir",
                str(self.data_dir),
                "--log-format",
                "text",
                *(["--dev"] if self.dev else []),
                *self.args,
            ),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 30) -> None:
        """Until the server has written its port file and its health check says SERVING."""
        deadline = time.monotonic() + timeout
        while self.port is None:
            self._check_alive()
            if self.port_file.exists():
                self.port = int(self.port_file.read_text())
            elif time.monotonic() > deadline:
                raise TimeoutError(f"server wrote no port file in {timeout}s:\n{self.log.read_text()}")
            else:
                time.sleep(0.05)
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"server not serving after {timeout}s:\n{self.log.read_text()}")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9: no cleanup of any kind runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)
