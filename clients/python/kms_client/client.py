"""KmsClient: the connection to the service and its RPCs, with typed errors and retries."""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, BinaryIO, TypeVar

import grpc
from google.protobuf import duration_pb2

from kms_client import _checksums as checks
from kms_client._admin import AdminMixin
from kms_client._privacy import ErasureMixin
from kms_client._pseudonyms import PseudonymizeMixin
from kms_client._retry import NO_RETRY, RetryPolicy
from kms_client.caching import DataKeyCache, DataKeyCaching
from kms_client.encryption import EnvelopeEncryption
from kms_client.envelope import DEFAULT_FRAME_SIZE
from kms_client.errors import ChecksumMismatch, KmsError, ResponseChecksumMismatch, error_for, from_rpc_error
from kms_client.types import DataKey, Key, Rewrapped, key_from_pb, rewrapped_from_pb
from kms_proto.kms.v1 import kms_pb2 as pb
from kms_proto.kms.v1 import kms_pb2_grpc

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0
MAX_RECEIVE_MESSAGE_BYTES = 16 * 1024 * 1024


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files: the CA that signed the server's certificate (system
    roots if None), and for mutual TLS the client's certificate and private key."""

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as handle:
            return handle.read()

    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs its private key, and the other way round")
    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


class KmsClient(AdminMixin, PseudonymizeMixin, ErasureMixin):
    """A client of the key management service.

    The channel: ``credentials=tls_credentials(...)`` for TLS (mutual TLS with a client
    certificate), which is what anything but a local service needs. Without credentials the
    channel is plaintext, and is refused (ValueError) unless ``target`` is on this host (see
    ``is_loopback_target``) or the caller says ``insecure=True``: data keys and plaintext then
    cross the network in the clear, readable and alterable by anyone on the path. An existing
    ``channel=`` is used as given, and its security is the caller's business. Usable as a
    context manager; ``close()`` wipes the data key cache and releases a channel the client
    opened itself.

    Every method raises a ``kms_client.errors.KmsError`` subclass, never ``grpc.RpcError``.
    UNAVAILABLE is retried with backoff and jitter within ``timeout`` (per call, seconds).

    ``encrypt``/``decrypt``, their ``*_stream`` forms and ``rewrap`` implement envelope
    encryption in the format of docs/envelope-format.md. ``data_key_caching=DataKeyCaching()``
    turns on data key reuse (kms_client.caching explains its limits); it is off by default.

    Integrity in transit (docs/api.md): by default every request carries the CRC32C of the bytes
    it sends and every response's checksums are checked. Bytes altered either way are sent once
    more; if that fails too, ChecksumMismatch (ResponseChecksumMismatch when the response was
    the one altered) is raised, or is the item's result in a batch. ``verify_checksums=False``
    turns this off, for a service that predates it.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
        insecure: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
        data_key_caching: DataKeyCaching | None = None,
        verify_checksums: bool = True,
    ) -> None:
        self._verify_checksums = verify_checksums
        if channel is None:
            if target is None:
                raise ValueError("give a target such as '127.0.0.1:50051', or a channel")
            channel = _open_channel(target, credentials, insecure, options)
            self._owns_channel = True
        else:
            self._owns_channel = False
        self._channel = channel
        self._stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._data_key_cache = None if data_key_caching is None else DataKeyCache(data_key_caching)
        self._envelope = EnvelopeEncryption(self, self._data_key_cache)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Wipes every cached data key, and closes the channel if the client opened it. A key
        that another thread is still using is wiped as soon as that use ends."""
        if self._data_key_cache is not None:
            self._data_key_cache.clear()
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- keys ----------------------------------------------------------------------------

    def create_key(
        self,
        key_id: str,
        *,
        description: str = "",
        rotation_period: timedelta | None = None,
        storage: str | None = None,
        purpose: str | None = None,
        subject_field: str = "",
        retention_period: timedelta | None = None,
        erasure_finality: timedelta | None = None,
        timeout: float | None = None,
    ) -> Key:
        """``storage``: "WRAPPED" or "HSM_OBJECT" (None: the server's default). ``purpose``:
        "ENCRYPT_DECRYPT" (None: the default) or "PSEUDONYMIZE" (a key for ``pseudonymize``).
        ``subject_field``: the encryption-context entry naming the data subject (a key per
        subject, erase_subject); ``retention_period``: versions superseded longer ago are
        destroyed; ``erasure_finality``: the bound on erasures being final in backups (the
        server's default for a key with a subject_field). See docs/privacy.md."""
        request = pb.CreateKeyRequest(
            key_id=key_id, description=description, storage=storage, purpose=purpose, subject_field=subject_field
        )
        if rotation_period is not None:
            request.rotation_period.CopyFrom(_duration(rotation_period))
        if retention_period is not None:
            request.retention_period.CopyFrom(_duration(retention_period))
        if erasure_finality is not None:
            request.erasure_finality.CopyFrom(_duration(erasure_finality))
        return key_from_pb(self._call(self._stub.CreateKey, request, timeout))

    def get_key(self, key_id: str, *, timeout: float | None = None) -> Key:
        return key_from_pb(self._call(self._stub.GetKey, pb.GetKeyRequest(key_id=key_id), timeout))

    def list_keys(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> tuple[list[Key], str]:
        response = self._call(
            self._stub.ListKeys, pb.ListKeysRequest(page_size=page_size, page_token=page_token), timeout
        )
        return [key_from_pb(k) for k in response.keys], response.next_page_token

    def iter_keys(self, *, page_size: int = 0) -> Iterator[Key]:
        token = ""
        while True:
            keys, token = self.list_keys(page_size=page_size, page_token=token)
            yield from keys
            if not token:
                return

    def rotate_key(self, key_id: str, *, timeout: float | None = None) -> Key:
        # Not retried: a retry after a lost response would rotate twice.
        request = pb.RotateKeyRequest(key_id=key_id)
        return key_from_pb(self._call(self._stub.RotateKey, request, timeout, retry=NO_RETRY))

    # -- data keys -------------------------------------------------------------------------

    def generate_data_key(
        self, key_id: str, context: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> DataKey:
        """A fresh AES-256 data key and its wrapped copy. Keep only the wrapped copy."""
        request = pb.GenerateDataKeyRequest(key_id=key_id, encryption_context=context or {})
        response = self._call(self._stub.GenerateDataKey, request, timeout, check=self._check(checks.check_data_key))
        return DataKey(response.key_id, response.key_version, response.wrapped_key, response.plaintext)

    def generate_data_key_without_plaintext(
        self, key_id: str, context: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> DataKey:
        request = pb.GenerateDataKeyRequest(key_id=key_id, encryption_context=context or {})
        response = self._call(
            self._stub.GenerateDataKeyWithoutPlaintext, request, timeout, check=self._check(checks.check_wrapped_only)
        )
        return DataKey(response.key_id, response.key_version, response.wrapped_key)

    def decrypt_data_key(
        self, wrapped_key: bytes, context: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> DataKey:
        request = pb.DecryptRequest(
            wrapped_key=wrapped_key, encryption_context=context or {}, wrapped_key_crc32c=self._crc(wrapped_key)
        )
        response = self._call(self._stub.Decrypt, request, timeout, check=self._check(checks.check_decrypted))
        return DataKey(response.key_id, response.key_version, wrapped_key, response.plaintext)

    def rewrap_data_key(
        self,
        wrapped_key: bytes,
        context: Mapping[str, str] | None = None,
        *,
        destination_key_id: str = "",
        timeout: float | None = None,
    ) -> Rewrapped:
        request = pb.ReWrapRequest(
            wrapped_key=wrapped_key,
            encryption_context=context or {},
            destination_key_id=destination_key_id,
            wrapped_key_crc32c=self._crc(wrapped_key),
        )
        return rewrapped_from_pb(
            self._call(self._stub.ReWrap, request, timeout, check=self._check(checks.check_rewrapped))
        )

    def generate_data_keys(
        self, requests: Iterable[tuple[str, Mapping[str, str]]], *, timeout: float | None = None
    ) -> list[DataKey | KmsError]:
        """One BatchGenerateDataKey call (at most 1000 items); each item is a DataKey or the
        error for that item alone."""

        def send(items: list[tuple[str, Mapping[str, str]]]) -> list[DataKey | KmsError]:
            request = pb.BatchGenerateDataKeyRequest(
                requests=[pb.GenerateDataKeyRequest(key_id=k, encryption_context=c) for k, c in items]
            )
            response = self._call(self._stub.BatchGenerateDataKey, request, timeout)
            return [
                self._outcome(
                    r,
                    "data_key",
                    checks.check_data_key,
                    lambda d: DataKey(d.key_id, d.key_version, d.wrapped_key, d.plaintext),
                )
                for r in response.results
            ]

        return _resending_altered(list(requests), send)

    def decrypt_data_keys(
        self, requests: Iterable[tuple[bytes, Mapping[str, str]]], *, timeout: float | None = None
    ) -> list[DataKey | KmsError]:

        def send(items: list[tuple[bytes, Mapping[str, str]]]) -> list[DataKey | KmsError]:
            request = pb.BatchDecryptRequest(
                requests=[
                    pb.DecryptRequest(wrapped_key=w, encryption_context=c, wrapped_key_crc32c=self._crc(w))
                    for w, c in items
                ]
            )
            response = self._call(self._stub.BatchDecrypt, request, timeout)
            return [
                self._outcome(
                    r,
                    "data_key",
                    checks.check_decrypted,
                    functools.partial(_decrypted_data_key, wrapped),
                )
                for r, (wrapped, _) in zip(response.results, items, strict=True)
            ]

        return _resending_altered(list(requests), send)

    def rewrap_data_keys(
        self,
        requests: Iterable[tuple[bytes, Mapping[str, str]]],
        *,
        destination_key_id: str = "",
        timeout: float | None = None,
    ) -> list[Rewrapped | KmsError]:

        def send(items: list[tuple[bytes, Mapping[str, str]]]) -> list[Rewrapped | KmsError]:
            request = pb.BatchReWrapRequest(requests=[self._rewrap_request(w, c, destination_key_id) for w, c in items])
            response = self._call(self._stub.BatchReWrap, request, timeout)
            return [self._rewrap_outcome(r) for r in response.results]

        return _resending_altered(list(requests), send)

    def stream_rewrap(
        self,
        requests: Iterable[tuple[bytes, Mapping[str, str]]],
        *,
        destination_key_id: str = "",
        timeout: float | None = None,
        items_per_message: int = 500,
    ) -> Iterator[Rewrapped | KmsError]:
        """StreamReWrap: one result per (wrapped key, context), in order, each a Rewrapped or
        that item's error.

        Items go out in messages of ``items_per_message`` (at most 1000), read lazily from
        ``requests`` as the stream's flow control allows, so any number can be sent in bounded
        memory. Not retried (the stream may have been partly processed), nor are items altered
        in transit: their result is ChecksumMismatch.
        """
        if not 1 <= items_per_message <= 1000:
            raise ValueError("items_per_message must be 1 to 1000")
        items = iter(requests)

        def messages() -> Iterator[pb.BatchReWrapRequest]:
            while chunk := list(itertools.islice(items, items_per_message)):
                yield pb.BatchReWrapRequest(requests=[self._rewrap_request(w, c, destination_key_id) for w, c in chunk])

        responses = self._stub.StreamReWrap(
            messages(), timeout=timeout or None, metadata=(("x-request-id", uuid.uuid4().hex),)
        )
        try:
            for response in responses:
                for result in response.results:
                    yield self._rewrap_outcome(result)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # -- envelope encryption (docs/envelope-format.md) ----------------------------------------
    #
    # The context is a map of non-secret strings; the same map must be given to decrypt and
    # rewrap (None is the empty map). Every integrity failure raises InvalidCiphertext or one of
    # its subclasses: TruncatedCiphertext, EncryptionContextMismatch. What else decrypt and
    # rewrap raise is listed in decrypt's docstring (docs/envelope-format.md, "Errors").

    def encrypt(
        self,
        plaintext: bytes | bytearray | memoryview,
        *,
        key_id: str,
        context: Mapping[str, str] | None = None,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ) -> bytes:
        """``plaintext`` encrypted under a data key of ``key_id``, bound to ``context``: a header
        naming the key, the context and the wrapped data key, then AES-256-GCM frames."""
        return self._envelope.encrypt(plaintext, key_id, context, frame_size)

    def decrypt(self, ciphertext: bytes | bytearray | memoryview, *, context: Mapping[str, str] | None = None) -> bytes:
        """The plaintext of an ``encrypt`` result.

        Integrity failures, which never say more than this:

        - EncryptionContextMismatch: ``context`` is not the one in the header (before any call);
        - TruncatedCiphertext: the ciphertext was cut short;
        - InvalidCiphertext (the base of both): any other alteration or corruption, including
          the service refusing to unwrap the wrapped key.

        Errors about the key version the header's wrapped key names, raised as the service
        reports them (docs/envelope-format.md, "Errors"):

        - PermissionDenied: no permission to decrypt with that key under ``context``;
        - KeyVersionNotUsable (a FailedPrecondition): KeyVersionDisabled,
          KeyVersionDestroyScheduled, KeyVersionDestroyed or KeyVersionBelowMinimum;
        - KeyMaterialMissing (a FailedPrecondition): the HSM has no master key for it;

        and, as for any call, ResourceExhausted, Unavailable, DeadlineExceeded, Unauthenticated.
        For an unaltered ciphertext that version is the one that wrapped its data key, under the
        header's key id. The wrapped key is not authenticated (``rewrap`` replaces it), so an
        altered ciphertext can raise these as well as InvalidCiphertext: they say the key cannot
        be used, not that the ciphertext is intact.
        """
        return self._envelope.decrypt(ciphertext, context)

    def encrypt_stream(
        self,
        src: BinaryIO,
        dst: BinaryIO,
        *,
        key_id: str,
        context: Mapping[str, str] | None = None,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ) -> int:
        """Reads ``src`` to its end and writes the ciphertext to ``dst`` (binary file-like
        objects), in constant memory. Returns the number of plaintext bytes. Always uses a fresh
        data key. The ciphertext is the same format as ``encrypt``'s."""
        return self._envelope.encrypt_stream(src, dst, key_id, context, frame_size)

    def decrypt_stream(self, src: BinaryIO, dst: BinaryIO, *, context: Mapping[str, str] | None = None) -> int:
        """Reads one ciphertext from ``src`` to its end and writes the plaintext to ``dst``, in
        constant memory; returns the number of plaintext bytes. Each frame is written only
        after it is authenticated, but earlier frames are already in ``dst`` when a later one
        fails or the input ends early (TruncatedCiphertext): write to a temporary place and
        publish it only once this returns. Raises what ``decrypt`` raises."""
        return self._envelope.decrypt_stream(src, dst, context)

    def rewrap(self, ciphertext: bytes | bytearray | memoryview, *, context: Mapping[str, str] | None = None) -> bytes:
        """``ciphertext`` with its data key re-wrapped under the primary version of its key (by
        the service's ReWrap: the data key never reaches this process). Every byte but the
        wrapped key is unchanged; returned as is when it was already current. Raises what
        ``decrypt`` raises, PermissionDenied meaning no permission to re-wrap."""
        return self._envelope.rewrap(ciphertext, context)

    def rewrap_stream(self, src: BinaryIO, dst: BinaryIO, *, context: Mapping[str, str] | None = None) -> int:
        """``rewrap`` for a ciphertext in a file: writes the new header, then copies the body
        unchanged. Returns the number of body bytes copied."""
        return self._envelope.rewrap_stream(src, dst, context)

    def rewrap_many(self, items: Iterable[tuple[bytes, Mapping[str, str] | None]]) -> list[bytes | KmsError]:
        """``rewrap`` for many (ciphertext, context) pairs through BatchReWrap, one call per
        1000 distinct wrapped keys. Each result is the new ciphertext or that item's error (any
        ``rewrap`` raises); errors of the call itself (Unavailable, ...) are raised."""
        return self._envelope.rewrap_many(items)

    def clear_data_key_cache(self) -> None:
        """Drops every cached data key (no-op without caching)."""
        if self._data_key_cache is not None:
            self._data_key_cache.clear()

    def _forget_subject(self, key_id: str, subject: str) -> None:
        if self._data_key_cache is not None:
            self._data_key_cache.forget_subject(key_id, subject)

    # -- plumbing --------------------------------------------------------------------------

    def _call(
        self,
        method: Any,
        request: Any,
        timeout: float | None,
        retry: RetryPolicy | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> Any:
        """``method(request)`` with the retry policy; ``check`` vets the response (checksums).
        Bytes altered in transit, either way (ChecksumMismatch from the service, or from
        ``check``), are sent once more at once, as a transport fault would be."""
        timeout = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout if timeout else None
        metadata = (("x-request-id", uuid.uuid4().hex),)

        def once(remaining: float | None) -> Any:
            try:
                response = method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
            if check is not None:
                check(response)
            return response

        def attempt(remaining: float | None) -> Any:
            try:
                return once(remaining)
            except ChecksumMismatch:
                return once(None if deadline is None else max(0.0, deadline - time.monotonic()))

        return (retry or self._retry).run(attempt, deadline)

    def _check(self, check: Callable[[Any], None]) -> Callable[[Any], None] | None:
        return check if self._verify_checksums else None

    def _crc(self, data: bytes) -> int | None:
        """The CRC32C a request carries for ``data`` (None: the field stays unset)."""
        return checks.crc32c(data) if self._verify_checksums else None

    def _outcome(
        self, result: Any, field: str, check: Callable[[Any], None], build: Callable[[Any], T]
    ) -> T | KmsError:
        """A batch or stream item: its error, or its ``field`` checked (an alteration becomes
        the item's ResponseChecksumMismatch) and built."""
        if result.HasField("error"):
            return _item_error(result.error)
        item = getattr(result, field)
        if self._verify_checksums:
            try:
                check(item)
            except ResponseChecksumMismatch as error:
                return error
        return build(item)

    def _rewrap_request(self, wrapped: bytes, context: Mapping[str, str], destination_key_id: str) -> pb.ReWrapRequest:
        return pb.ReWrapRequest(
            wrapped_key=wrapped,
            encryption_context=context,
            destination_key_id=destination_key_id,
            wrapped_key_crc32c=self._crc(wrapped),
        )

    def _rewrap_outcome(self, result: pb.ReWrapResult) -> Rewrapped | KmsError:
        return self._outcome(result, "rewrapped", checks.check_rewrapped, rewrapped_from_pb)


# -- the channel ---------------------------------------------------------------------------


def _open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, insecure: bool, options: Sequence[tuple[str, Any]]
) -> grpc.Channel:
    # The caller's options come first: gRPC keeps the first value it is given for a name.
    options = [*options, ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES)]
    if credentials is not None:
        if insecure:
            raise ValueError("credentials and insecure=True contradict each other: give one or the other")
        return grpc.secure_channel(target, credentials, options=options)
    if is_loopback_target(target):
        # Ahead of the caller's options, so that it holds: an HTTP CONNECT proxy named in the
        # environment (grpc_proxy, https_proxy, http_proxy) would carry this plaintext to another host.
        return grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0), *options])
    if not insecure:
        raise ValueError(
            f"{target!r} is not a loopback address, and without TLS data keys and plaintext would cross the "
            "network in the clear: pass credentials=tls_credentials(...), or insecure=True to accept that"
        )
    return grpc.insecure_channel(target, options=options)


def is_loopback_target(target: str) -> bool:
    """Whether every address a gRPC ``target`` can reach is on this host, judged from its
    spelling alone (nothing is resolved). True for:

    - ``unix:path``, ``unix:///absolute/path``, ``unix-abstract:name``: local sockets;
    - ``HOST``, ``HOST:PORT``, ``dns:HOST:PORT`` and ``dns:///HOST:PORT`` where HOST is
      ``localhost`` (any case, no trailing dot: ``localhost.`` may be sent to a DNS server), an
      IPv4 address in 127.0.0.0/8, or ``::1`` (bare, or in brackets as ``[::1]:PORT``);
    - ``dns://AUTHORITY/HOST:PORT`` where HOST is such an address literal (a name would be
      resolved by that DNS server);
    - ``ipv4:ADDR[:PORT][,...]`` and ``ipv6:ADDR[,...]`` / ``ipv6:[ADDR]:PORT[,...]`` when every
      address is loopback.

    IPv4-mapped forms (``::ffff:127.0.0.1``) count as their IPv4 address. Anything else is
    False: other names, other schemes (``vsock:``, ``xds:``...), percent-encoded or malformed
    targets, ports that are not decimal numbers, and the wildcard addresses 0.0.0.0 and ``::``.
    """
    scheme, colon, rest = target.partition(":")
    if colon and scheme in ("unix", "unix-abstract"):
        return True
    if colon and scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
        return all(_is_loopback_host_port(a, names=False, version=int(scheme[-1])) for a in addresses)
    if colon and scheme == "dns":
        if not rest.startswith("//"):
            return _is_loopback_host_port(rest, names=True)
        authority, slash, host_port = rest[2:].partition("/")
        return bool(slash) and _is_loopback_host_port(host_port, names=not authority)
    return _is_loopback_host_port(target, names=True)


_PORT = re.compile(r"[0-9]{1,5}")


def _is_loopback_host_port(text: str, *, names: bool, version: int | None = None) -> bool:
    """``text`` is HOST, HOST:PORT, [IPV6] or [IPV6]:PORT with a loopback HOST. ``names`` admits
    ``localhost``; ``version`` (4 or 6) admits only address literals of that version."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and _PORT.fullmatch(port[1:]))):
            return False
        return version != 4 and _is_loopback_address(host, version=6)
    if text.count(":") > 1:  # a bare IPv6 address, which leaves no room for a port
        host = text
    else:
        host, colon, port = text.partition(":")
        if colon and not _PORT.fullmatch(port):
            return False
    if names and host.lower() == "localhost":
        return True
    return _is_loopback_address(host, version=version)


def _is_loopback_address(text: str, *, version: int | None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if version is not None and address.version != version:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _duration(value: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def _item_error(error: pb.ItemError) -> KmsError:
    try:
        code = next(c for c in grpc.StatusCode if c.value[0] == error.code)
    except StopIteration:
        code = grpc.StatusCode.UNKNOWN
    return error_for(code, error.message, error.reason)


Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


def _resending_altered(items: list[Item], send: Callable[[list[Item]], list[Outcome]]) -> list[Outcome]:
    """``send(items)``, then once more for the items whose bytes were altered in transit (their
    outcome a ChecksumMismatch), whose outcomes replace the first ones."""
    outcomes = send(items)
    again = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, ChecksumMismatch)]
    if again:
        for index, outcome in zip(again, send([items[i] for i in again]), strict=True):
            outcomes[index] = outcome
    return outcomes


def _decrypted_data_key(wrapped: bytes, decrypted: Any) -> DataKey:
    return DataKey(decrypted.key_id, decrypted.key_version, wrapped, decrypted.plaintext)
