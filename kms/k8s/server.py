"""The plugin's gRPC server on its unix socket: claim the path, bind it 0600, serve, drain.

    server = PluginServer(KeyManagementServicer(plugin), "/var/run/kmsplugin/kms.sock")
    server.start()          # SocketInUse / SocketPathRefused if the path cannot be had
    ...
    server.stop(grace=10)   # no new calls; in-flight ones finish within grace; socket removed

Requests are tiny (a ciphertext is at most 1 KiB, annotations 32 KiB), so messages are capped
at 64 KiB; calls beyond ``max_concurrent_rpcs`` are refused with RESOURCE_EXHAUSTED rather
than queued without bound.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures

import grpc

from kms.k8s.unix_socket import absolute_socket_path, bind_private, claim
from kms_proto.k8s.kms.apis.v2 import api_pb2_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024


class PluginServer:
    """Serves ``servicer`` (the upstream KeyManagementService) on a unix socket at ``path``."""

    def __init__(
        self,
        servicer: api_pb2_grpc.KeyManagementServiceServicer,
        path: str | os.PathLike[str],
        *,
        max_workers: int = 8,
        max_concurrent_rpcs: int = 64,
    ) -> None:
        """Raises SocketPathRefused for a path too long for a unix socket, or in no directory."""
        self.path = absolute_socket_path(path)
        self._servicer = servicer
        self._max_workers = max_workers
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    @property
    def endpoint(self) -> str:
        """The socket as an EncryptionConfiguration endpoint and a gRPC target: unix:///path."""
        return f"unix://{self.path}"

    def start(self) -> None:
        """Claims the path (removing a stale socket), binds it 0600 and starts serving.

        Raises SocketInUse when another process serves on the path, SocketPathRefused when
        something else is there or the bind fails.
        """
        claim(self.path)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="k8s-plugin"),
            maximum_concurrent_rpcs=self._max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        api_pb2_grpc.add_KeyManagementServiceServicer_to_server(self._servicer, server)
        bind_private(server, self.path)
        server.start()
        self._server = server
        log.info("k8s kms plugin serving", extra={"fields": {"socket": str(self.path)}})

    def stop(self, grace: float) -> None:
        """Refuses new calls at once, lets in-flight ones finish for up to ``grace`` seconds,
        then cancels the rest. gRPC removes the socket file. Safe to call more than once."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace).wait()
        self._stopped.set()
        log.info("k8s kms plugin stopped", extra={"fields": {"socket": str(self.path)}})

    def wait(self) -> None:
        """Returns once ``stop`` has finished."""
        # Bounded waits, as in kms serve: a signal handler runs only when the main thread is
        # back in the interpreter.
        while not self._stopped.wait(timeout=0.2):
            pass
