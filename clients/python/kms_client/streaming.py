"""Frames to and from binary file-like objects in constant memory.

Two fixed buffers per call, sized to a batch of whole frames (about 512 KiB, at least one frame,
so at most 2 x (4 MiB + 16) for the largest frame size), are reused for the whole stream: peak
memory does not depend on the length of the input. Reads use ``readinto`` when the source has
it; GCM writes into the output buffer in place (``encrypt_into``/``decrypt_into``).

A frame's plaintext reaches ``dst`` only after its tag has been verified, and ``dst`` sees a
batch only once every frame in it has been.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from kms_client.envelope import FRAME_TAG_BYTES, FrameOpener, FrameSealer, Header, parse_header
from kms_client.errors import InvalidArgument, TruncatedCiphertext

BATCH_BYTES = 512 * 1024  # in + out buffers together about the size of one core's L2 cache


def _frames_per_batch(frame_size: int) -> int:
    return max(1, BATCH_BYTES // frame_size)


def fill(src: Any, view: memoryview) -> int:
    """Reads into ``view`` until it is full or the source is at its end; returns the count."""
    filled = 0
    readinto = getattr(src, "readinto", None)
    while filled < len(view):
        if readinto is not None:
            count = readinto(view[filled:])
        else:
            chunk = src.read(len(view) - filled)
            if chunk is not None and not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError("streams must be binary file-like objects (open files with 'rb' / 'wb')")
            count = None if chunk is None else len(chunk)
            if chunk is not None and count:
                view[filled : filled + count] = chunk
        if count is None:
            raise InvalidArgument("non-blocking streams are not supported: the source returned no data")
        if count == 0:
            break
        filled += count
    return filled


def write_all(dst: Any, view: memoryview) -> None:
    while len(view):
        written = dst.write(view)
        if written is None or written >= len(view):
            return
        view = view[written:]


def read_exactly(src: Any, count: int) -> bytes:
    buffer = bytearray(count)
    if fill(src, memoryview(buffer)) != count:
        raise TruncatedCiphertext("ciphertext ends inside its header")
    return bytes(buffer)


def read_header(src: BinaryIO) -> Header:
    """Reads exactly one header from ``src``, leaving it at the first frame."""
    return parse_header(lambda count: read_exactly(src, count))


def seal_stream(src: BinaryIO, dst: BinaryIO, header: Header, sealer: FrameSealer) -> int:
    """Writes the header, then all of ``src`` as frames. Returns the plaintext length."""
    write_all(dst, memoryview(header.encode()))
    batch = _frames_per_batch(sealer.frame_size)
    source = memoryview(bytearray(batch * sealer.frame_size))
    target = memoryview(bytearray(batch * (sealer.frame_size + FRAME_TAG_BYTES)))
    total = 0
    while True:
        count = fill(src, source)
        total += count
        final = count < len(source)  # only the end of the input leaves the buffer short
        written = sealer.seal_run_into(source[:count], target, final=final)
        write_all(dst, target[:written])
        if final:
            return total


def open_stream(src: BinaryIO, dst: BinaryIO, opener: FrameOpener) -> int:
    """Writes the plaintext of the frames that follow the header in ``src``; returns its length.

    Raises TruncatedCiphertext when ``src`` ends before the final frame (the plaintext written
    so far is then incomplete) and InvalidCiphertext when a frame fails to authenticate.
    """
    step = opener.frame_size + FRAME_TAG_BYTES
    batch = _frames_per_batch(opener.frame_size)
    source = memoryview(bytearray(batch * step))
    target = memoryview(bytearray(batch * opener.frame_size))
    total = 0
    while True:
        count = fill(src, source)
        whole = count - count % step
        # A full-length frame is never final, so everything up to the last whole frame opens as
        # non-final; whatever follows it at the end of the input is the final frame.
        written = opener.open_run_into(source[:whole], target, final=False)
        write_all(dst, target[:written])
        total += written
        if count == len(source):
            continue
        written = opener.open_run_into(source[whole:count], target, final=True)
        write_all(dst, target[:written])
        return total + written
