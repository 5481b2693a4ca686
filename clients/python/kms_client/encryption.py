"""Envelope encryption recipes: the service's data keys plus the local format of
kms_client.envelope. KmsClient's ``encrypt``, ``decrypt``, ``*_stream`` and ``rewrap*`` methods
delegate here; nothing in this module touches a cipher directly.

Order of checks on decrypt, before any plaintext is released:
1. the header parses (magic, version, suite, limits);
2. the caller's encryption context equals the header's, byte for byte in canonical form
   (EncryptionContextMismatch, without a call to the service);
3. the service unwraps the wrapped key with that context (it binds the context to the wrapped
   key) and says which key opened it: it must be the header's key id, checked again whenever a
   cached data key is used. The service's errors about the key version the wrapped key names
   (PermissionDenied, KeyVersionNotUsable, ...) pass through as they are: the wrapped key is
   not authenticated, so they describe that key, never the ciphertext's integrity;
4. the key commitment and then the header tag are checked with keys derived from the data key;
5. each frame is authenticated before its plaintext is written out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from kms_client import envelope, streaming
from kms_client._context import encode_context
from kms_client.caching import CachedDataKey, DataKeyCache
from kms_client.errors import EncryptionContextMismatch, InvalidCiphertext, KmsError
from kms_client.types import DataKey

if TYPE_CHECKING:
    from kms_client.client import KmsClient

DataKeyT = TypeVar("DataKeyT", DataKey, CachedDataKey)

MAX_REWRAP_BATCH = 1000  # the service's BatchReWrap limit
COPY_CHUNK = 1024 * 1024


class EnvelopeEncryption:
    def __init__(self, client: KmsClient, cache: DataKeyCache | None) -> None:
        self._client = client
        self._cache = cache

    # -- data keys -----------------------------------------------------------------------
    #
    # A data key is used only inside a ``with`` block: a cached one is leased from the cache
    # for that long, so another thread that evicts it meanwhile cannot wipe it mid-use. A key
    # fresh from the service is protobuf's immutable bytes (which nothing can wipe); the cache
    # keeps a bytearray copy of its own.

    @contextmanager
    def _data_key_for_encrypt(
        self, key_id: str, context: Mapping[str, str], encoded: bytes, size: int | None
    ) -> Iterator[DataKey | CachedDataKey]:
        if self._cache is not None and size is not None:
            with self._cache.take_for_encrypt(key_id, encoded, size) as cached:
                if cached is not None:
                    yield cached
                    return
        data_key = self._client.generate_data_key(key_id, dict(context))
        if len(data_key.plaintext) != envelope.DATA_KEY_BYTES or data_key.key_id != key_id:
            raise KmsError("the service returned a data key that does not fit the request")
        if self._cache is not None and size is not None:
            self._cache.store_for_encrypt(key_id, encoded, data_key, size)
        yield data_key

    @contextmanager
    def _data_key_for_decrypt(
        self, header: envelope.Header, context: Mapping[str, str], encoded: bytes
    ) -> Iterator[DataKey | CachedDataKey]:
        _check_context(header, encoded)
        if self._cache is not None:
            with self._cache.get_for_decrypt(header.wrapped_key, encoded) as cached:
                if cached is not None:
                    # Checked on a cache hit too: the cache is keyed by the wrapped key and the
                    # context, which a forged header naming another key id can carry unchanged.
                    yield _checked(cached, header)
                    return
        data_key = _checked(self._client.decrypt_data_key(header.wrapped_key, dict(context)), header)
        if self._cache is not None:
            self._cache.store_for_decrypt(header.wrapped_key, encoded, data_key)
        yield data_key

    def _seal_header(
        self, key_id: str, context: Mapping[str, str] | None, frame_size: int, size: int | None
    ) -> tuple[envelope.Header, envelope.FrameSealer]:
        envelope.check_frame_size(frame_size)
        context = context or {}
        encoded = encode_context(context)
        # The sealer holds only keys derived for this message, so the data key is free to go
        # (and a cached one to be wiped) as soon as the header is sealed.
        with self._data_key_for_encrypt(key_id, context, encoded, size) as data_key:
            return envelope.seal_header(
                data_key.plaintext,
                key_id=key_id,
                encoded_context=encoded,
                wrapped_key=data_key.wrapped_key,
                frame_size=frame_size,
                salt=os.urandom(envelope.SALT_BYTES),
            )

    def _open_header(self, header: envelope.Header, context: Mapping[str, str] | None) -> envelope.FrameOpener:
        context = context or {}
        with self._data_key_for_decrypt(header, context, encode_context(context)) as data_key:
            return envelope.open_header(data_key.plaintext, header)

    # -- messages ------------------------------------------------------------------------

    def encrypt(
        self, plaintext: bytes | bytearray | memoryview, key_id: str, context: Mapping[str, str] | None, frame_size: int
    ) -> bytes:
        view = memoryview(plaintext).cast("B")
        header, sealer = self._seal_header(key_id, context, frame_size, len(view))
        return header.encode() + envelope.seal_frames(sealer, view)

    def decrypt(self, ciphertext: bytes | bytearray | memoryview, context: Mapping[str, str] | None) -> bytes:
        view = memoryview(ciphertext).cast("B")
        header = envelope.parse_header_bytes(view)
        opener = self._open_header(header, context)
        return envelope.open_frames(opener, view[header.length :])

    def encrypt_stream(
        self, src: BinaryIO, dst: BinaryIO, key_id: str, context: Mapping[str, str] | None, frame_size: int
    ) -> int:
        header, sealer = self._seal_header(key_id, context, frame_size, None)
        return streaming.seal_stream(src, dst, header, sealer)

    def decrypt_stream(self, src: BinaryIO, dst: BinaryIO, context: Mapping[str, str] | None) -> int:
        header = streaming.read_header(src)
        opener = self._open_header(header, context)
        return streaming.open_stream(src, dst, opener)

    # -- rewrap --------------------------------------------------------------------------

    def _rewrapped_header(self, header: envelope.Header, context: Mapping[str, str] | None) -> envelope.Header:
        context = context or {}
        _check_context(header, encode_context(context))
        result = self._client.rewrap_data_key(header.wrapped_key, dict(context))
        if result.key_id != header.key_id:
            raise InvalidCiphertext(envelope.INVALID)
        return header.with_wrapped_key(result.wrapped_key)

    def rewrap(self, ciphertext: bytes | bytearray | memoryview, context: Mapping[str, str] | None) -> bytes:
        view = memoryview(ciphertext).cast("B")
        header = envelope.parse_header_bytes(view)
        return envelope.replace_wrapped_key(view, self._rewrapped_header(header, context).wrapped_key)

    def rewrap_stream(self, src: BinaryIO, dst: BinaryIO, context: Mapping[str, str] | None) -> int:
        header = streaming.read_header(src)
        new_header = self._rewrapped_header(header, context)
        streaming.write_all(dst, memoryview(new_header.encode()))
        buffer = memoryview(bytearray(COPY_CHUNK))
        copied = 0
        while count := streaming.fill(src, buffer):
            streaming.write_all(dst, buffer[:count])
            copied += count
        return copied

    def rewrap_many(self, items: Iterable[tuple[bytes, Mapping[str, str] | None]]) -> list[bytes | KmsError]:
        """Each item's ciphertext rewrapped, or the error for that item alone. Ciphertexts that
        share a wrapped key (a cached data key) cost one item of a BatchReWrap between them."""
        results: list[bytes | KmsError] = []
        # (wrapped key, encoded context) -> (context, [(item index, the key id its header names)])
        groups: dict[tuple[bytes, bytes], tuple[Mapping[str, str], list[tuple[int, str]]]] = {}
        for index, (ciphertext, context) in enumerate(items):
            try:
                header = envelope.parse_header_bytes(ciphertext)
                _check_context(header, encode_context(context or {}))
            except KmsError as error:
                results.append(error)
                continue
            results.append(bytes(ciphertext))
            slot = (header.wrapped_key, header.encoded_context)
            groups.setdefault(slot, (context or {}, []))[1].append((index, header.key_id))
        slots = list(groups)
        for start in range(0, len(slots), MAX_REWRAP_BATCH):
            batch = slots[start : start + MAX_REWRAP_BATCH]
            answers = self._client.rewrap_data_keys([(wrapped, dict(groups[(wrapped, c)][0])) for wrapped, c in batch])
            for slot, answer in zip(batch, answers, strict=True):
                # Every item against its own header: items that share a wrapped key may still
                # name different key ids, and only those naming the key that opened it are genuine.
                for index, key_id in groups[slot][1]:
                    current = results[index]
                    assert isinstance(current, bytes)
                    if isinstance(answer, KmsError):
                        results[index] = answer
                    elif answer.key_id != key_id:
                        results[index] = InvalidCiphertext(envelope.INVALID)
                    else:
                        results[index] = envelope.replace_wrapped_key(current, answer.wrapped_key)
        return results


def _checked(data_key: DataKeyT, header: envelope.Header) -> DataKeyT:
    """``data_key`` if it is a data key of the key the header names; else InvalidCiphertext."""
    if data_key.key_id != header.key_id or len(data_key.plaintext) != envelope.DATA_KEY_BYTES:
        raise InvalidCiphertext(envelope.INVALID)
    return data_key


def _check_context(header: envelope.Header, encoded_context: bytes) -> None:
    if encoded_context != header.encoded_context:
        raise EncryptionContextMismatch("the encryption context does not match the one in the ciphertext")
