"""The gRPC server: the key service, health, reflection, deliberate limits."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kms.api.proto import SERVICES

log = logging.getLogger(__name__)


class ListenRefused(Exception):
    pass


def split_listen(listen: str) -> tuple[str, int]:
    host, separator, port = listen.rpartition(":")
    if not separator or not port.isdigit() or not host:
        raise ListenRefused(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(
    listen: str,
    handler: grpc.GenericRpcHandler,
    health_servicer: health_pb2_grpc.HealthServicer,
    *,
    max_workers: int,
    max_concurrent_rpcs: int,
    max_message_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
    reuse_port: bool = False,
    max_connection_age: float | None = None,
) -> tuple[grpc.Server, int]:
    """Builds and binds (does not start) the server; returns it with the bound port.
    ``reuse_port``: share the port with the other workers of ``kms serve --workers``
    (SO_REUSEPORT), whose supervisor holds it. ``max_connection_age``: seconds after which a
    connection is sent GOAWAY (calls in flight finish; the client connects again)."""
    aging = [("grpc.max_connection_age_ms", int(max_connection_age * 1000))] if max_connection_age else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kms-rpc"),
        handlers=[handler, *extra_handlers],
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Without this, a second server on the same port would share it silently.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *aging,
        ],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *(service.full_name for service in SERVICES),
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server, add_listener(server, listen, credentials)


def add_listener(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Binds ``server`` to one more address (plaintext only on loopback); returns the port."""
    host, _port = split_listen(listen)
    if credentials is None and not is_loopback(host):
        raise ListenRefused(
            f"refusing to serve plaintext gRPC on non-loopback address {host}: configure TLS "
            "(--tls-cert/--tls-key) or listen on 127.0.0.1"
        )
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ListenRefused(f"cannot listen on {listen}: {exc}") from None
    if not port:
        raise ListenRefused(f"cannot listen on {listen}")
    if credentials is None:
        log.warning(
            "serving plaintext gRPC on a loopback address; configure TLS for anything else",
            extra={"fields": {"listen": listen}},
        )
    return port
