"""Random bytes from the operating system's CSPRNG (getrandom(2)), drawn 4 KiB at a time.

Each thread keeps its own buffer, so the hot path makes one system call per ~100 data keys
instead of two per call: under load every system call is a GIL hand-off between the server's
threads, which costs more than the randomness itself. Bytes are handed out once and zeroed in
the buffer as they go. A forked child starts with an empty buffer, so parent and child can
never share bytes.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096


class _Buffer(threading.local):
    def __init__(self) -> None:
        self.data = bytearray()
        self.offset = 0


_local = _Buffer()


def random_bytes(length: int) -> bytes:
    if length > _CHUNK // 4:
        return os.urandom(length)
    buffer = _local
    if buffer.offset + length > len(buffer.data):
        buffer.data[:] = bytes(len(buffer.data))
        buffer.data = bytearray(os.urandom(_CHUNK))
        buffer.offset = 0
    start, buffer.offset = buffer.offset, buffer.offset + length
    taken = bytes(buffer.data[start : buffer.offset])
    buffer.data[start : buffer.offset] = bytes(length)
    return taken


def _forget_after_fork() -> None:
    global _local
    _local = _Buffer()


os.register_at_fork(after_in_child=_forget_after_fork)
