"""The envelope ciphertext format, version 1 (docs/envelope-format.md is the specification).

This module is the SDK's hazmat layer: the only one that touches AES-GCM, HKDF and HMAC, and
the only one that knows the byte layout. Pure functions over bytes, no I/O and no service.

    offset     size  field
    0          4     magic, "KMSE"
    4          1     format version, 0x01
    5          2     algorithm suite, 0x0001
    7          4     frame size F: plaintext bytes in every non-final frame, 1 to 2^22
    11         32    salt, random per message
    43         1     key id length L, 1 to 64
    44         L     key id, ASCII [A-Za-z0-9_-]
    44+L       2     encoded context length C, 2 to 8192
    46+L       C     encryption context, canonical encoding (kms_client._context)
    46+L+C     32    commitment
    78+L+C     32    header tag: HMAC-SHA256(header key, bytes [0, 78+L+C))
    110+L+C    2     wrapped key length W, 1 to 1024
    112+L+C    W     wrapped data key (the service's format, opaque to the SDK)
    112+L+C+W        frames: AES-256-GCM(frame key, nonce(i, final), frame plaintext, aad=header tag)

    frame key || header key || commitment = HKDF-SHA256(ikm=data key, salt=salt,
                                                        info="KMSE" 01 0001, length=96)
    nonce(i, final) = uint88 i || (0x01 if final else 0x00)

Every non-final frame holds exactly F plaintext bytes; the final frame holds 0 to F-1, so a
frame's role follows from its length alone and the empty message is one empty final frame.
Everything before the header tag is authenticated; the wrapped key after it is not, which is
what lets ``rewrap`` replace it without the data key. A wrapped key for any other data key
fails the commitment check, which runs (with the header tag check) before any frame is opened.
"""

from __future__ import annotations

import hmac as _constant_time
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms_client._context import MAX_ENCODED_BYTES, decode_context
from kms_client.errors import InvalidArgument, InvalidCiphertext, TruncatedCiphertext

MAGIC = b"KMSE"
FORMAT_VERSION = 1
SUITE_AES256_GCM_HKDF_SHA256_COMMIT = 0x0001
DEFAULT_FRAME_SIZE = 64 * 1024
MAX_FRAME_SIZE = 4 * 1024 * 1024
MAX_FRAMES = 2**32  # frame indexes 0 .. 2^32-1; the nonce has room for 88 bits
MAX_WRAPPED_KEY_BYTES = 1024
DATA_KEY_BYTES = 32
SALT_BYTES = 32
COMMITMENT_BYTES = 32
TAG_BYTES = 32  # header tag (HMAC-SHA256)
FRAME_TAG_BYTES = 16  # AES-GCM tag
INVALID = "ciphertext is invalid or does not match the encryption context"  # one message: no oracle
KDF_INFO = MAGIC + bytes((FORMAT_VERSION,)) + SUITE_AES256_GCM_HKDF_SHA256_COMMIT.to_bytes(2, "big")

_PREFIX = struct.Struct(">4sBHI32sB")  # magic, version, suite, frame size, salt, key id length
_IDENTITY = struct.Struct(">4sBH")  # magic, version, suite: checked before anything else is read
_U16 = struct.Struct(">H")
_NONCE = struct.Struct(">7xIB")  # uint88 counter (high 56 bits zero below MAX_FRAMES) || final flag
_KEY_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")


# -- the header --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed envelope header. Fields are as received: nothing here is authenticated until
    ``open_header`` has checked the commitment and the header tag with the data key."""

    key_id: str
    context: Mapping[str, str]
    encoded_context: bytes = field(repr=False)
    frame_size: int
    salt: bytes = field(repr=False)
    commitment: bytes = field(repr=False)
    header_tag: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)

    def authenticated_bytes(self) -> bytes:
        """Bytes [0, 78+L+C): every field before the header tag."""
        key_id = self.key_id.encode("ascii")
        return b"".join(
            (
                _PREFIX.pack(
                    MAGIC, FORMAT_VERSION, SUITE_AES256_GCM_HKDF_SHA256_COMMIT, self.frame_size, self.salt, len(key_id)
                ),
                key_id,
                _U16.pack(len(self.encoded_context)),
                self.encoded_context,
                self.commitment,
            )
        )

    def encode(self) -> bytes:
        return b"".join(
            (self.authenticated_bytes(), self.header_tag, _U16.pack(len(self.wrapped_key)), self.wrapped_key)
        )

    @property
    def length(self) -> int:
        return 112 + len(self.key_id) + len(self.encoded_context) + len(self.wrapped_key)

    @property
    def wrapped_key_offset(self) -> int:
        """Offset of the wrapped key length field: everything before it is authenticated."""
        return 110 + len(self.key_id) + len(self.encoded_context)

    def with_wrapped_key(self, wrapped_key: bytes) -> Header:
        _check_wrapped_key(wrapped_key)
        return replace(self, wrapped_key=bytes(wrapped_key))


def parse_header(read: Callable[[int], bytes]) -> Header:
    """Reads one header through ``read(n)``, which returns exactly n bytes or raises
    TruncatedCiphertext. Raises InvalidCiphertext for anything that is not a v1 header."""
    identity = read(_IDENTITY.size)
    magic, version, suite = _IDENTITY.unpack(identity)
    if magic != MAGIC:
        raise InvalidCiphertext("not an envelope ciphertext (bad magic)")
    if version != FORMAT_VERSION:
        raise InvalidCiphertext(f"unsupported envelope format version {version} (this SDK reads {FORMAT_VERSION})")
    if suite != SUITE_AES256_GCM_HKDF_SHA256_COMMIT:
        raise InvalidCiphertext(f"unsupported algorithm suite {suite:#06x}")
    _, _, _, frame_size, salt, key_id_length = _PREFIX.unpack(identity + read(_PREFIX.size - _IDENTITY.size))
    if not 1 <= frame_size <= MAX_FRAME_SIZE:
        raise InvalidCiphertext(f"frame size must be 1 to {MAX_FRAME_SIZE} bytes")
    key_id = read(key_id_length) if key_id_length else b""
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidCiphertext("malformed key id in header")
    (context_length,) = _U16.unpack(read(2))
    if not 2 <= context_length <= MAX_ENCODED_BYTES:
        raise InvalidCiphertext("malformed encryption context in header")
    encoded_context = read(context_length)
    context = decode_context(encoded_context)
    commitment = read(COMMITMENT_BYTES)
    header_tag = read(TAG_BYTES)
    (wrapped_length,) = _U16.unpack(read(2))
    if not 1 <= wrapped_length <= MAX_WRAPPED_KEY_BYTES:
        raise InvalidCiphertext("malformed wrapped key in header")
    return Header(
        key_id=key_id.decode("ascii"),
        context=MappingProxyType(context),
        encoded_context=bytes(encoded_context),
        frame_size=frame_size,
        salt=bytes(salt),
        commitment=bytes(commitment),
        header_tag=bytes(header_tag),
        wrapped_key=bytes(read(wrapped_length)),
    )


def parse_header_bytes(data: bytes | bytearray | memoryview) -> Header:
    """The header at the start of ``data`` (its length is ``header.length``)."""
    view = memoryview(data)
    offset = 0

    def read(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(view):
            raise TruncatedCiphertext("ciphertext ends inside its header")
        offset += n
        return view[offset - n : offset].tobytes()

    return parse_header(read)


def replace_wrapped_key(ciphertext: bytes | bytearray | memoryview, wrapped_key: bytes) -> bytes:
    """``ciphertext`` with the wrapped key in its header replaced by ``wrapped_key``; every other
    byte (the authenticated header, its tag and the body) is kept. For re-wrapping tools: the
    result decrypts if and only if ``wrapped_key`` wraps the same data key with the same context."""
    view = memoryview(ciphertext).cast("B")
    header = parse_header_bytes(view)
    _check_wrapped_key(wrapped_key)
    if bytes(wrapped_key) == header.wrapped_key:
        return bytes(view)
    return b"".join(
        (view[: header.wrapped_key_offset], _U16.pack(len(wrapped_key)), wrapped_key, view[header.length :])
    )


def _check_wrapped_key(wrapped_key: bytes) -> None:
    if not 1 <= len(wrapped_key) <= MAX_WRAPPED_KEY_BYTES:
        raise InvalidArgument(f"a wrapped key must be 1 to {MAX_WRAPPED_KEY_BYTES} bytes")


def check_frame_size(frame_size: int) -> int:
    if not isinstance(frame_size, int) or not 1 <= frame_size <= MAX_FRAME_SIZE:
        raise InvalidArgument(f"frame_size must be an integer from 1 to {MAX_FRAME_SIZE}")
    return frame_size


# -- keys --------------------------------------------------------------------------------------


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256 (pyca/cryptography's). Raises ValueError past 255*32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True, slots=True)
class MessageKeys:
    """The per-message secrets derived from a data key and a salt. Never printed."""

    frame_key: bytes = field(repr=False)
    header_key: bytes = field(repr=False)
    commitment: bytes = field(repr=False)


def derive_message_keys(data_key: bytes | memoryview, salt: bytes) -> MessageKeys:
    if len(data_key) != DATA_KEY_BYTES or len(salt) != SALT_BYTES:
        raise InvalidArgument("a data key and a salt are 32 bytes each")
    okm = hkdf_sha256(bytes(data_key), salt, KDF_INFO, 96)
    return MessageKeys(okm[:32], okm[32:64], okm[64:])


def _header_tag(header_key: bytes, authenticated: bytes) -> bytes:
    mac = crypto_hmac.HMAC(header_key, hashes.SHA256())
    mac.update(authenticated)
    return mac.finalize()


def seal_header(
    data_key: bytes | memoryview,
    *,
    key_id: str,
    encoded_context: bytes,
    wrapped_key: bytes,
    frame_size: int,
    salt: bytes,
) -> tuple[Header, FrameSealer]:
    """A new message's header and the sealer for its frames."""
    check_frame_size(frame_size)
    _check_wrapped_key(wrapped_key)
    if not _KEY_ID.fullmatch(key_id.encode("ascii", "replace")):
        raise InvalidArgument("a key id is 1-64 characters of [A-Za-z0-9_-]")
    keys = derive_message_keys(data_key, salt)
    unsigned = Header(
        key_id=key_id,
        context=MappingProxyType(decode_context(encoded_context)),
        encoded_context=bytes(encoded_context),
        frame_size=frame_size,
        salt=bytes(salt),
        commitment=keys.commitment,
        header_tag=b"",
        wrapped_key=bytes(wrapped_key),
    )
    header = replace(unsigned, header_tag=_header_tag(keys.header_key, unsigned.authenticated_bytes()))
    return header, FrameSealer(keys.frame_key, header.header_tag, frame_size)


def open_header(data_key: bytes | memoryview, header: Header) -> FrameOpener:
    """Checks the key commitment, then the header tag; returns the opener for the frames.

    Raises InvalidCiphertext when ``data_key`` is not the message's data key or any
    authenticated header field was altered. Both checks are constant-time.
    """
    keys = derive_message_keys(data_key, header.salt)
    if not _constant_time.compare_digest(keys.commitment, header.commitment):
        raise InvalidCiphertext(INVALID)
    mac = crypto_hmac.HMAC(keys.header_key, hashes.SHA256())
    mac.update(header.authenticated_bytes())
    try:
        mac.verify(header.header_tag)
    except InvalidSignature:
        raise InvalidCiphertext(INVALID) from None
    return FrameOpener(keys.frame_key, header.header_tag, header.frame_size)


# -- frames ------------------------------------------------------------------------------------


class Aes256Gcm:
    """AES-256-GCM with 96-bit nonces and 128-bit tags, writing into caller buffers. Opening
    never leaves unauthenticated plaintext behind: on a bad tag the output buffer is zeroed."""

    __slots__ = ("_aead", "seal_into")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise InvalidArgument("AES-256-GCM takes a 32-byte key")
        self._aead = AESGCM(key)
        # seal_into(nonce, plaintext, aad, out) is pyca's encrypt_into itself: one Python call
        # less per frame on the hot path (sealing has no failure to clean up after).
        self.seal_into = self._aead.encrypt_into

    def __repr__(self) -> str:
        return "Aes256Gcm(<key hidden>)"

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < FRAME_TAG_BYTES:
            raise InvalidCiphertext(INVALID)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise InvalidCiphertext(INVALID) from None

    def open_into(self, nonce: bytes, sealed: memoryview, aad: bytes, out: memoryview) -> None:
        if len(sealed) < FRAME_TAG_BYTES:
            raise InvalidCiphertext(INVALID)
        try:
            self._aead.decrypt_into(nonce, sealed, aad, out)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise InvalidCiphertext(INVALID) from None


def frame_nonce(index: int, final: bool) -> bytes:
    if not 0 <= index < MAX_FRAMES:
        raise InvalidCiphertext(f"a message has at most {MAX_FRAMES} frames")
    return _NONCE.pack(index, 1 if final else 0)


class _Frames:
    """Frame indexes of one message, handed out in order, each once, the final one last."""

    __slots__ = ("_aad", "_gcm", "finished", "frame_size", "index")

    def __init__(self, frame_key: bytes, header_tag: bytes, frame_size: int) -> None:
        self._gcm = Aes256Gcm(frame_key)
        self._aad = header_tag
        self.frame_size = frame_size
        self.index = 0
        self.finished = False

    def _take(self, count: int, final: bool) -> int:
        """Reserves the next ``count`` indexes (the last one final if ``final``); returns the first."""
        if self.finished:
            raise InvalidCiphertext("data after the final frame")
        first = self.index
        if first + count > MAX_FRAMES:
            raise self._too_many()
        self.index = first + count
        self.finished = final
        return first

    def _too_many(self) -> Exception:
        raise NotImplementedError

    def _check_run(self, length: int, final: bool) -> int:
        """The number of frames in a run of ``length`` bytes of plaintext: whole frames, plus
        the final one when ``final``."""
        full, rest = divmod(length, self.frame_size)
        if rest and not final:
            raise ValueError("a non-final frame is exactly frame_size bytes, the final one fewer")
        return full + 1 if final else full


class FrameSealer(_Frames):
    """Seals one message's frames in order: ``frame_size`` bytes for each non-final frame, fewer
    for the final one."""

    __slots__ = ()

    def _too_many(self) -> Exception:
        return InvalidArgument(f"plaintext needs more than {MAX_FRAMES} frames of {self.frame_size} bytes")

    def seal_run_into(self, plaintext: memoryview, out: memoryview, final: bool) -> int:
        """Seals ``plaintext`` as consecutive frames into ``out``: whole non-final frames, then,
        if ``final``, the final frame with the rest (possibly empty). Returns the bytes written."""
        size, step = self.frame_size, self.frame_size + FRAME_TAG_BYTES
        count = self._check_run(len(plaintext), final)
        full = count - 1 if final else count
        first = self._take(count, final)
        seal, pack, aad = self._gcm.seal_into, _NONCE.pack, self._aad
        for i in range(full):
            seal(pack(first + i, 0), plaintext[i * size : (i + 1) * size], aad, out[i * step : (i + 1) * step])
        if not final:
            return full * step
        end = full * step + len(plaintext) - full * size + FRAME_TAG_BYTES
        seal(pack(first + full, 1), plaintext[full * size :], aad, out[full * step : end])
        return end

    def seal(self, plaintext: bytes, final: bool) -> bytes:
        out = bytearray(len(plaintext) + FRAME_TAG_BYTES)
        self.seal_run_into(memoryview(plaintext), memoryview(out), final)
        return bytes(out)


class FrameOpener(_Frames):
    """Opens one message's frames in order; exists only once ``open_header`` has passed."""

    __slots__ = ()

    def _too_many(self) -> Exception:
        return InvalidCiphertext(f"a message has at most {MAX_FRAMES} frames")

    def open_run_into(self, sealed: memoryview, out: memoryview, final: bool) -> int:
        """Opens consecutive frames from ``sealed`` into ``out``: whole non-final frames, then,
        if ``final``, the final frame (``sealed`` must then end with at least its 16-byte tag).
        Returns the plaintext bytes written; on a bad frame, raises with ``out`` zeroed from it on."""
        size, step = self.frame_size, self.frame_size + FRAME_TAG_BYTES
        full, rest = divmod(len(sealed), step)
        if rest and not final:
            raise ValueError("a run of non-final frames is a multiple of frame_size + 16 bytes")
        if final and rest < FRAME_TAG_BYTES:
            raise TruncatedCiphertext("ciphertext ends before its final frame")
        first = self._take(full + 1 if final else full, final)
        open_, pack, aad = self._gcm.open_into, _NONCE.pack, self._aad
        for i in range(full):
            open_(pack(first + i, 0), sealed[i * step : (i + 1) * step], aad, out[i * size : (i + 1) * size])
        if not final:
            return full * size
        end = full * size + rest - FRAME_TAG_BYTES
        open_(pack(first + full, 1), sealed[full * step :], aad, out[full * size : end])
        return end


# -- whole messages ----------------------------------------------------------------------------


def body_length(plaintext_length: int, frame_size: int) -> int:
    return plaintext_length + (plaintext_length // frame_size + 1) * FRAME_TAG_BYTES


def seal_frames(sealer: FrameSealer, plaintext: bytes | bytearray | memoryview) -> bytes:
    """The body of a message: all of ``plaintext`` in frames, the last one final."""
    source = memoryview(plaintext).cast("B")
    out = bytearray(body_length(len(source), sealer.frame_size))
    sealer.seal_run_into(source, memoryview(out), final=True)
    return bytes(out)


def open_frames(opener: FrameOpener, body: bytes | bytearray | memoryview) -> bytes:
    """The plaintext of a whole body. Raises TruncatedCiphertext when it ends before a final
    frame, InvalidCiphertext when any frame fails to authenticate or data follows the end."""
    source = memoryview(body).cast("B")
    full = len(source) // (opener.frame_size + FRAME_TAG_BYTES)
    out = bytearray(max(0, len(source) - (full + 1) * FRAME_TAG_BYTES))
    opener.open_run_into(source, memoryview(out), final=True)
    return bytes(out)
