"""KmsClient: the connection to the service and its RPCs, with typed errors and retries."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2

from kms_client._proto.kms.v1 import kms_pb2 as pb
from kms_client._proto.kms.v1 import kms_pb2_grpc
from kms_client._retry import NO_RETRY, RetryPolicy
from kms_client.errors import KmsError, error_for, from_rpc_error
from kms_client.types import DataKey, Key, Rewrapped, key_from_pb, rewrapped_from_pb

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


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


class KmsClient:
    """A client of the key management service.

    ``KmsClient("127.0.0.1:50051")`` connects without TLS (loopback development);
    ``credentials=tls_credentials(...)`` or an existing ``channel=`` for anything else. Usable as
    a context manager; ``close()`` releases a channel the client opened itself.

    Every method raises a ``kms_client.errors.KmsError`` subclass, never ``grpc.RpcError``.
    UNAVAILABLE is retried with backoff and jitter within ``timeout`` (per call, seconds).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if channel is None:
            if target is None:
                raise ValueError("give a target such as '127.0.0.1:50051', or a channel")
            options = [("grpc.max_receive_message_length", 16 * 1024 * 1024), *options]
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
            self._owns_channel = True
        else:
            self._owns_channel = False
        self._channel = channel
        self._stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- keys ----------------------------------------------------------------------------

    def create_key(
        self, key_id: str, *, description: str = "", rotation_period: timedelta | None = None,
        timeout: float | None = None,
    ) -> Key:
        request = pb.CreateKeyRequest(key_id=key_id, description=description)
        if rotation_period is not None:
            request.rotation_period.CopyFrom(_duration(rotation_period))
        return key_from_pb(self._call(self._stub.CreateKey, request, timeout))

    def get_key(self, key_id: str, *, timeout: float | None = None) -> Key:
        return key_from_pb(self._call(self._stub.GetKey, pb.GetKeyRequest(key_id=key_id), timeout))

    def list_keys(self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None) -> tuple[list[Key], str]:
        response = self._call(self._stub.ListKeys, pb.ListKeysRequest(page_size=page_size, page_token=page_token), timeout)
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
        response = self._call(self._stub.GenerateDataKey, request, timeout)
        return DataKey(response.key_id, response.key_version, response.wrapped_key, response.plaintext)

    def generate_data_key_without_plaintext(
        self, key_id: str, context: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> DataKey:
        request = pb.GenerateDataKeyRequest(key_id=key_id, encryption_context=context or {})
        response = self._call(self._stub.GenerateDataKeyWithoutPlaintext, request, timeout)
        return DataKey(response.key_id, response.key_version, response.wrapped_key)

    def decrypt_data_key(
        self, wrapped_key: bytes, context: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> DataKey:
        request = pb.DecryptRequest(wrapped_key=wrapped_key, encryption_context=context or {})
        response = self._call(self._stub.Decrypt, request, timeout)
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
            wrapped_key=wrapped_key, encryption_context=context or {}, destination_key_id=destination_key_id
        )
        return rewrapped_from_pb(self._call(self._stub.ReWrap, request, timeout))

    def generate_data_keys(
        self, requests: Iterable[tuple[str, Mapping[str, str]]], *, timeout: float | None = None
    ) -> list[DataKey | KmsError]:
        """One BatchGenerateDataKey call (at most 1000 items); each item is a DataKey or the
        error for that item alone."""
        request = pb.BatchGenerateDataKeyRequest(
            requests=[pb.GenerateDataKeyRequest(key_id=k, encryption_context=c) for k, c in requests]
        )
        response = self._call(self._stub.BatchGenerateDataKey, request, timeout)
        return [
            _item_error(r.error)
            if r.HasField("error")
            else DataKey(r.data_key.key_id, r.data_key.key_version, r.data_key.wrapped_key, r.data_key.plaintext)
            for r in response.results
        ]

    def decrypt_data_keys(
        self, requests: Iterable[tuple[bytes, Mapping[str, str]]], *, timeout: float | None = None
    ) -> list[DataKey | KmsError]:
        items = list(requests)
        request = pb.BatchDecryptRequest(
            requests=[pb.DecryptRequest(wrapped_key=w, encryption_context=c) for w, c in items]
        )
        response = self._call(self._stub.BatchDecrypt, request, timeout)
        return [
            _item_error(r.error)
            if r.HasField("error")
            else DataKey(r.data_key.key_id, r.data_key.key_version, wrapped, r.data_key.plaintext)
            for r, (wrapped, _) in zip(response.results, items, strict=True)
        ]

    def rewrap_data_keys(
        self, requests: Iterable[tuple[bytes, Mapping[str, str]]], *, destination_key_id: str = "",
        timeout: float | None = None,
    ) -> list[Rewrapped | KmsError]:
        request = pb.BatchReWrapRequest(
            requests=[
                pb.ReWrapRequest(wrapped_key=w, encryption_context=c, destination_key_id=destination_key_id)
                for w, c in requests
            ]
        )
        response = self._call(self._stub.BatchReWrap, request, timeout)
        return [_rewrap_result(r) for r in response.results]

    def stream_rewrap(
        self, requests: Iterable[tuple[bytes, Mapping[str, str]]], *, destination_key_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[Rewrapped | KmsError]:
        """StreamReWrap: results in request order, each a Rewrapped or that item's error.

        Requests are consumed lazily as the stream's flow control allows, so any number can be
        sent in bounded memory. Not retried (the stream may have been partly processed).
        """
        messages = (
            pb.ReWrapRequest(wrapped_key=w, encryption_context=c, destination_key_id=destination_key_id)
            for w, c in requests
        )
        responses = self._stub.StreamReWrap(
            messages, timeout=timeout or None, metadata=(("x-request-id", uuid.uuid4().hex),)
        )
        try:
            for result in responses:
                yield _rewrap_result(result)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: Any, request: Any, timeout: float | None, retry: RetryPolicy | None = None) -> Any:
        timeout = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout if timeout else None
        metadata = (("x-request-id", uuid.uuid4().hex),)

        def attempt(remaining: float | None) -> Any:
            try:
                return method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None

        return (retry or self._retry).run(attempt, deadline)


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


def _rewrap_result(result: pb.ReWrapResult) -> Rewrapped | KmsError:
    if result.HasField("error"):
        return _item_error(result.error)
    return rewrapped_from_pb(result.rewrapped)
