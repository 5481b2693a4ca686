"""KeyManagementService: each method converts the request, calls a use case, converts back.

Methods receive the parsed request and the service-level Call built by kms.api.handlers; errors
are raised as KmsError and mapped to statuses there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta

from kms.api import convert
from kms.api.errors import item_error
from kms.api.privacy_servicer import ErasureMethods
from kms.api.proto import pb
from kms.domain.policy import clipped
from kms.errors import InvalidArgument, InvalidPrivacySetting, InvalidRotationPeriod, KmsError
from kms.service.calls import Call, Trail
from kms.service.data_keys import DataKeyRequest, DataKeyService, UnwrapRequest
from kms.service.erasure import ErasureService
from kms.service.keys import KeyService
from kms.service.lifecycle import KeyChanges, LifecycleService
from kms.service.pseudonyms import PseudonymService

UPDATABLE = frozenset(
    {"description", "rotation_period", "min_decryption_version", "storage", "retention_period", "erasure_finality"}
)
DEFAULT_RETIRE_MIN_IDLE = timedelta(days=7)


class KeyManagementServicer(ErasureMethods):
    def __init__(
        self,
        keys: KeyService,
        data_keys: DataKeyService,
        lifecycle: LifecycleService,
        *,
        pseudonyms: PseudonymService,
        erasures: ErasureService | None = None,
    ) -> None:
        self._erasures = erasures
        self._keys = keys
        self._data_keys = data_keys
        self._lifecycle = lifecycle
        self._pseudonyms = pseudonyms

    def CreateKey(self, request: pb.CreateKeyRequest, call: Call) -> pb.Key:
        rotation_period = convert.optional_duration(request, "rotation_period", InvalidRotationPeriod)
        return convert.key(
            self._keys.create_key(
                call,
                request.key_id,
                request.description,
                rotation_period,
                storage=convert.storage(request.storage),
                purpose=convert.purpose(request.purpose),
                subject_field=request.subject_field,
                retention_period=convert.optional_duration(request, "retention_period", InvalidPrivacySetting),
                erasure_finality=convert.optional_duration(request, "erasure_finality", InvalidPrivacySetting),
            )
        )

    def GetKey(self, request: pb.GetKeyRequest, call: Call) -> pb.Key:
        return convert.key(self._keys.get_key(call, request.key_id))

    def ListKeys(self, request: pb.ListKeysRequest, call: Call) -> pb.ListKeysResponse:
        keys, next_page_token = self._keys.list_keys(call, request.page_size, request.page_token)
        return pb.ListKeysResponse(keys=[convert.key(k) for k in keys], next_page_token=next_page_token)

    def RotateKey(self, request: pb.RotateKeyRequest, call: Call) -> pb.Key:
        return convert.key(self._keys.rotate_key(call, request.key_id))

    def UpdateKey(self, request: pb.UpdateKeyRequest, call: Call) -> pb.Key:
        paths = set(request.update_mask.paths)
        if not paths:
            raise InvalidArgument("update_mask must name the fields to change")
        if unknown := paths - UPDATABLE:
            # The caller's paths are quoted with escapes and cut short (clipped): an error message
            # never carries control characters or unbounded text from a request.
            named = ", ".join(clipped(path) for path in sorted(unknown)[:3])
            named += " and others" if len(unknown) > 3 else ""
            raise InvalidArgument(
                f"update_mask names fields that cannot be updated: {named} (updatable: {', '.join(sorted(UPDATABLE))})"
            )
        changes: KeyChanges = {}
        if "description" in paths:
            changes["description"] = request.description
        if "rotation_period" in paths:
            changes["rotation_period"] = convert.optional_duration(request, "rotation_period", InvalidRotationPeriod)
        if "min_decryption_version" in paths:
            changes["min_decryption_version"] = request.min_decryption_version
        if "storage" in paths:
            chosen = convert.storage(request.storage)
            if chosen is None:
                raise InvalidArgument("storage must be WRAPPED or HSM_OBJECT")
            changes["storage"] = chosen
        for setting in ("retention_period", "erasure_finality"):
            if setting in paths:  # unset or zero: cleared
                value = convert.optional_duration(request, setting, InvalidPrivacySetting)
                changes[setting] = value or None
        return convert.key(self._lifecycle.update_key(call, request.key_id, **changes))

    def DisableKeyVersion(self, request: pb.DisableKeyVersionRequest, call: Call) -> pb.Key:
        return convert.key(self._lifecycle.disable_version(call, request.key_id, request.version))

    def EnableKeyVersion(self, request: pb.EnableKeyVersionRequest, call: Call) -> pb.Key:
        return convert.key(self._lifecycle.enable_version(call, request.key_id, request.version))

    def ScheduleKeyVersionDestruction(self, request: pb.ScheduleKeyVersionDestructionRequest, call: Call) -> pb.Key:
        window = convert.optional_duration(request, "pending_window")
        return convert.key(self._lifecycle.schedule_destruction(call, request.key_id, request.version, window))

    def CancelKeyVersionDestruction(self, request: pb.CancelKeyVersionDestructionRequest, call: Call) -> pb.Key:
        return convert.key(self._lifecycle.cancel_destruction(call, request.key_id, request.version))

    def RetireKeyVersion(self, request: pb.RetireKeyVersionRequest, call: Call) -> pb.Key:
        min_idle = convert.optional_duration(request, "min_idle")
        return convert.key(
            self._lifecycle.retire_version(
                call,
                request.key_id,
                request.version,
                min_idle=DEFAULT_RETIRE_MIN_IDLE if min_idle is None else min_idle,
                pending_window=convert.optional_duration(request, "pending_window"),
            )
        )

    def GenerateDataKey(self, request: pb.GenerateDataKeyRequest, call: Call) -> pb.GenerateDataKeyResponse:
        return convert.data_key(self._data_keys.generate_data_key(call, request.key_id, request.encryption_context))

    def GenerateDataKeyWithoutPlaintext(
        self, request: pb.GenerateDataKeyRequest, call: Call
    ) -> pb.GenerateDataKeyWithoutPlaintextResponse:
        data_key = self._data_keys.generate_data_key(
            call, request.key_id, request.encryption_context, include_plaintext=False
        )
        return convert.data_key_without_plaintext(data_key)

    def Decrypt(self, request: pb.DecryptRequest, call: Call) -> pb.DecryptResponse:
        checksum = convert.request_crc32c(request)
        data_key = self._data_keys.decrypt(
            call, request.wrapped_key, request.encryption_context, wrapped_key_crc32c=checksum
        )
        return convert.decrypted(data_key, verified=checksum is not None)

    def ReWrap(self, request: pb.ReWrapRequest, call: Call) -> pb.ReWrapResponse:
        return convert.rewrapped(self._rewrap(request, call), verified=request.HasField("wrapped_key_crc32c"))

    def Pseudonymize(self, request: pb.PseudonymizeRequest, call: Call) -> pb.PseudonymizeResponse:
        outcome = self._pseudonyms.pseudonymize(
            call,
            request.key_id,
            request.values,
            request.context,
            key_version=request.key_version or None,
            values_crc32c=request.values_crc32c,
        )
        return convert.pseudonyms(outcome, checked=len(request.values_crc32c) > 0)

    def BatchGenerateDataKey(
        self, request: pb.BatchGenerateDataKeyRequest, call: Call
    ) -> pb.BatchGenerateDataKeyResponse:
        results = self._data_keys.generate_data_keys(
            call, [DataKeyRequest(r.key_id, r.encryption_context) for r in request.requests]
        )
        return pb.BatchGenerateDataKeyResponse(
            results=[
                pb.GenerateDataKeyResult(error=item_error(r))
                if isinstance(r, KmsError)
                else pb.GenerateDataKeyResult(data_key=convert.data_key(r))
                for r in results
            ]
        )

    def BatchDecrypt(self, request: pb.BatchDecryptRequest, call: Call) -> pb.BatchDecryptResponse:
        results = self._data_keys.decrypt_many(
            call,
            [
                UnwrapRequest(r.wrapped_key, r.encryption_context, wrapped_key_crc32c=convert.request_crc32c(r))
                for r in request.requests
            ],
        )
        return pb.BatchDecryptResponse(
            results=[
                pb.DecryptResult(error=item_error(r))
                if isinstance(r, KmsError)
                else pb.DecryptResult(data_key=convert.decrypted(r, verified=asked.HasField("wrapped_key_crc32c")))
                for r, asked in zip(results, request.requests, strict=True)
            ]
        )

    def BatchReWrap(self, request: pb.BatchReWrapRequest, call: Call) -> pb.BatchReWrapResponse:
        results = self._data_keys.rewrap_many(
            call,
            [
                UnwrapRequest(r.wrapped_key, r.encryption_context, r.destination_key_id, convert.request_crc32c(r))
                for r in request.requests
            ],
        )
        # Results added in place: building each ReWrapResult and then handing the list over
        # copies every message twice, which cost several times more per item (upb).
        response = pb.BatchReWrapResponse()
        add = response.results.add
        for outcome, asked in zip(results, request.requests, strict=True):
            if isinstance(outcome, KmsError):
                add(error=item_error(outcome))
            else:
                add(rewrapped=convert.rewrapped(outcome, asked.HasField("wrapped_key_crc32c")))
        return response

    def StreamReWrap(
        self, requests: Iterable[pb.BatchReWrapRequest | KmsError], call: Call
    ) -> Iterator[pb.BatchReWrapResponse]:
        """Authorizes at once (only an identity that may re-wrap somewhere opens a stream), then
        answers each request message in turn."""
        self._data_keys.may_rewrap_somewhere(call)
        return self._stream_rewrap(requests, call)

    def _stream_rewrap(
        self, requests: Iterable[pb.BatchReWrapRequest | KmsError], call: Call
    ) -> Iterator[pb.BatchReWrapResponse]:
        for request in requests:
            if isinstance(request, KmsError):  # a message that did not parse: one error result
                call.trail.add_item(Trail(), request)
                yield pb.BatchReWrapResponse(results=[_rewrap_result(request)])
                continue
            try:
                yield self.BatchReWrap(request, call)
            except KmsError as error:  # the message as a whole (too many items): one error result
                call.trail.add_item(Trail(), error)
                yield pb.BatchReWrapResponse(results=[_rewrap_result(error)])

    def _rewrap(self, request: pb.ReWrapRequest, call: Call):  # noqa: ANN202
        return self._data_keys.rewrap(
            call,
            request.wrapped_key,
            request.encryption_context,
            request.destination_key_id,
            wrapped_key_crc32c=convert.request_crc32c(request),
        )


def _rewrap_result(outcome: object, verified: bool = False) -> pb.ReWrapResult:
    if isinstance(outcome, KmsError):
        return pb.ReWrapResult(error=item_error(outcome))
    return pb.ReWrapResult(rewrapped=convert.rewrapped(outcome, verified))  # type: ignore[arg-type]
