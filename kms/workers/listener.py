"""The port the workers share, held by the supervisor.

The supervisor binds a socket with SO_REUSEPORT to the configured address and keeps it bound,
without listening, for as long as it runs. That gives ``--listen HOST:0`` one port, known before
any worker starts, and keeps the port for restarted workers: only sockets that also ask for
SO_REUSEPORT, under the same user (Linux requires the same effective uid), can join it. The
kernel hands connections only to listening sockets, so none waits on the supervisor's; it
spreads them over the workers by a hash of the connection's addresses and ports.

Before that, a plain bind of an explicitly given port proves that nothing else holds it: a
second server on the same port is refused, as without workers, rather than silently sharing
its connections.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from kms.api.server import ListenRefused, split_listen


@dataclass
class SharedPort:
    host: str  # numeric: every worker binds exactly the address the supervisor holds
    port: int
    _socket: socket.socket

    @property
    def listen(self) -> str:
        """HOST:PORT for the workers' --listen."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        self._socket.close()


def reserve(listen: str) -> SharedPort:
    """Binds (does not listen on) ``listen`` with SO_REUSEPORT; raises ListenRefused."""
    host, port = split_listen(listen)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ListenRefused(f"cannot resolve {host}: {error.strerror}") from None
    numeric = str(ipaddress.ip_address(address[0]))
    if port:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(address)
            except OSError as error:
                raise ListenRefused(f"cannot listen on {listen}: {error.strerror}") from None
    held = socket.socket(family, kind, proto)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(address)
    except OSError as error:
        held.close()
        raise ListenRefused(f"cannot listen on {listen}: {error.strerror}") from None
    return SharedPort(numeric, held.getsockname()[1], held)
