"""The plugin's unix socket: claiming its path safely and binding it private to this user.

gRPC, asked to listen on ``unix:PATH``, silently unlinks any socket already at PATH and takes
it over, even one another process is serving; and it creates the new socket with the process's
umask. So before gRPC sees the path, ``claim`` decides what may go: nothing there is fine, a
socket that refuses connections is a stale leftover and is removed, a socket that accepts them
is another live plugin (SocketInUse), and anything else, a file, a directory or a symlink, is
never touched (SocketPathRefused). ``bind_private`` then binds with a umask that leaves the
socket 0600 from its first instant, and checks the result.

Between ``claim`` and the bind another process could claim the same path; two plugins started
on one path at the same instant is an operator error this does not try to arbitrate.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

SOCKET_MODE = 0o600
# sockaddr_un.sun_path on Linux: 108 bytes including the terminating NUL.
MAX_PATH_BYTES = 107
_PROBE_TIMEOUT = 1.0


class SocketPathRefused(Exception):
    """The socket path cannot be used: too long, no such directory, or something that is not
    a socket is there."""


class SocketInUse(SocketPathRefused):
    """A process is accepting connections on the socket path."""


def absolute_socket_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute (symlinks are not resolved), checked for length and parent.

    Raises SocketPathRefused for a path longer than a unix socket address allows or whose
    directory does not exist.
    """
    absolute = Path(os.path.abspath(os.fspath(path)))
    if len(os.fsencode(absolute)) > MAX_PATH_BYTES:
        raise SocketPathRefused(f"socket path is longer than {MAX_PATH_BYTES} bytes: {absolute}")
    if not absolute.parent.is_dir():
        raise SocketPathRefused(f"the socket's directory does not exist: {absolute.parent}")
    return absolute


def claim(path: Path) -> None:
    """Leaves ``path`` free for a new socket, removing a stale socket that is there.

    Raises SocketInUse when a process accepts connections on it, SocketPathRefused when
    something other than a socket is there or when it cannot tell (no permission to connect).
    """
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketPathRefused(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except FileNotFoundError:
        return  # removed meanwhile
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.info("removed a stale plugin socket", extra={"fields": {"socket": str(path)}})
        return
    except OSError as error:
        why = errno.errorcode.get(error.errno or 0, "error")
        raise SocketPathRefused(f"cannot tell whether {path} is in use ({why}); refusing to replace it") from None
    finally:
        probe.close()
    raise SocketInUse(f"another process is serving on {path}")


def bind_private(server: grpc.Server, path: Path) -> None:
    """Binds ``server`` (not yet started) to a new unix socket at ``path``, mode 0600.

    The umask is narrowed around the bind, so the socket never exists with wider permissions.
    It is process-wide: call this before the process starts threads that create files. Raises
    SocketPathRefused if the bind fails or the result is not a 0600 socket owned by this user.
    """
    previous = os.umask(0o777 & ~SOCKET_MODE)
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    except RuntimeError:
        bound = 0
    finally:
        os.umask(previous)
    if not bound:
        raise SocketPathRefused(f"cannot listen on {path}")
    os.chmod(path, SOCKET_MODE)
    made = os.lstat(path)
    if not stat.S_ISSOCK(made.st_mode) or made.st_uid != os.geteuid() or stat.S_IMODE(made.st_mode) != SOCKET_MODE:
        raise SocketPathRefused(f"{path} is not a private socket of this user after binding")
