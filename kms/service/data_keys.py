"""Data keys: generating, unwrapping and re-wrapping them under master keys in the HSM.

Data keys come from the operating system's CSPRNG by default (getrandom(2), buffered per thread
by kms.crypto.random): the plaintext is handed to the caller anyway, so the HSM boundary would
not protect it, and skipping the HSM's RNG saves a round trip per call. ``data_key_source="hsm"``
draws them from the HSM's RNG for deployments whose compliance regime requires it.

Who may move a data key where (ReWrap):

- onto the primary version of its own key: ``rewrap`` on that key;
- onto another key: ``rewrap`` and ``decrypt`` on the source key, and ``encrypt`` on the
  destination. Moving a data key is decrypting it from the source and encrypting it under the
  destination (whoever may decrypt under the destination can then read it), so it needs what
  both of those need; ``rewrap`` alone would let an identity that may decrypt only under its
  own key pull any other key's data keys over to it. Every check uses the request's context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from kms.crypto import checksums, wrapped_key
from kms.crypto.context import encode_context
from kms.crypto.random import random_bytes
from kms.crypto.wrapped_key import DATA_KEY_LENGTH, WrappedKey, WrappedKeyHeader
from kms.domain.keys import Key, KeyVersion, validate_key_id
from kms.domain.policy import Permission
from kms.errors import (
    BatchTooLarge,
    ChecksumMismatch,
    DeadlineExceeded,
    InvalidCiphertext,
    KeyNotFound,
    KeyVersionNotFound,
    KmsError,
    PermissionDenied,
    RewrapDefeatsRetention,
    WrapLimitReached,
)
from kms.ports import MasterKeyCipher
from kms.service.authz import Authorizer
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.usage import UsageRecorder

if TYPE_CHECKING:
    from kms.service.subject_data_keys import SubjectDataKeys

MAX_BATCH = 1000
MAX_WRAPPED_KEY_BYTES = 1024
# Random 96-bit GCM IVs allow 2^32 encryptions under one key (NIST SP 800-38D). The scheduler
# rotates long before (KMS_MAX_WRAPS_PER_VERSION); this is the floor that holds if rotation
# keeps failing, with a margin for the counts other replicas have not written yet.
DEFAULT_HARD_MAX_WRAPS = 3 * 2**30

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class DataKey:
    key_id: str
    key_version: int
    wrapped_key: bytes
    plaintext: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Rewrapped:
    key_id: str
    key_version: int
    source_key_id: str
    source_key_version: int
    wrapped_key: bytes


@dataclass(frozen=True, slots=True)
class _Move:
    """A re-wrap up to its HSM step: open ``parsed`` under ``source`` with ``source_ad``, then
    seal it under ``destination`` with ``destination_ad``, behind ``header`` (the encoded
    WrappedKeyHeader); with no destination, the wrapped key is current already and only has to
    open."""

    source: KeyVersion
    parsed: WrappedKey = field(repr=False)
    wrapped: bytes = field(repr=False)
    source_ad: bytes = field(repr=False)
    destination: KeyVersion | None = None
    header: bytes = b""
    destination_ad: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class _Target:
    """A key's primary version as a re-wrap's destination, with what each item needs of it."""

    key: Key
    version: KeyVersion
    header: bytes  # the encoded WrappedKeyHeader of the version
    detail: str  # the audit record's detail


@dataclass(slots=True)
class _LookedUp:
    """Key lookups made for the items of one batch (see DataKeyService._plan_rewrap)."""

    versions: dict[tuple[str, int], KeyVersion] = field(default_factory=dict)
    retention_checked: set[str] = field(default_factory=set)
    targets: dict[str, _Target] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DataKeyRequest:
    key_id: str
    context: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class UnwrapRequest:
    wrapped_key: bytes = field(repr=False)
    context: Mapping[str, str] = field(repr=False)
    destination_key_id: str = ""
    # The caller's CRC32C of wrapped_key, when it sent one (checked before anything else).
    wrapped_key_crc32c: int | None = None


class DataKeyService:
    def __init__(
        self,
        cache: KeyCache,
        master_keys: MasterKeyCipher,
        usage: UsageRecorder,
        authorizer: Authorizer,
        data_key_source: str = "os",
        *,
        hard_max_wraps: int = DEFAULT_HARD_MAX_WRAPS,
        subjects: SubjectDataKeys | None = None,
    ) -> None:
        self._subjects = subjects  # keys with a subject_field (kms.service.subject_data_keys)
        self._authorizer = authorizer
        self._cache = cache
        self._master_keys = master_keys
        self._usage = usage
        self._hard_max_wraps = hard_max_wraps
        self._random: Callable[[int], bytes] = master_keys.random_bytes if data_key_source == "hsm" else random_bytes

    def generate_data_key(
        self, call: Call, key_id: str, context: Mapping[str, str], *, include_plaintext: bool = True
    ) -> DataKey:
        call.trail.note(key_id=key_id)
        validate_key_id(key_id)
        encoded_context = encode_context(context)
        call.trail.note(context=encoded_context)
        self._authorizer.require(call, Permission.ENCRYPT, key_id, context)
        key = self._cache.get(key_id)
        version = key.primary_for_encrypt()
        call.trail.note(key_version=version.version)
        plaintext = self._random(DATA_KEY_LENGTH)
        if key.subject_field:
            subject_version, wrapped = self._by_subject().wrap(call, key, context, encoded_context, plaintext)
            call.trail.note(key_version=subject_version)
            return DataKey(key_id, subject_version, wrapped, plaintext if include_plaintext else b"")
        wrapped = self._wrap(version, plaintext, encoded_context)
        return DataKey(key_id, version.version, wrapped, plaintext if include_plaintext else b"")

    def decrypt(
        self, call: Call, wrapped: bytes, context: Mapping[str, str], *, wrapped_key_crc32c: int | None = None
    ) -> DataKey:
        """Unwraps ``wrapped``. With ``wrapped_key_crc32c`` (the caller's CRC32C of it), bytes
        altered in transit are refused with ChecksumMismatch before anything else is done."""
        if self._subjects is not None and self._subjects.is_format(wrapped):
            opened = self._subjects.open(call, Permission.DECRYPT, wrapped, context, wrapped_key_crc32c)
            return DataKey(opened.key.key_id, opened.version, wrapped, opened.plaintext)
        parsed, version, encoded_context = self._resolve(call, Permission.DECRYPT, wrapped, context, wrapped_key_crc32c)
        return self._open(parsed, version, encoded_context, wrapped)

    def rewrap(
        self,
        call: Call,
        wrapped: bytes,
        context: Mapping[str, str],
        destination_key_id: str = "",
        *,
        wrapped_key_crc32c: int | None = None,
    ) -> Rewrapped:
        """Moves the data key to the primary version of its key (or of ``destination_key_id``).

        The input is returned unchanged when it is already there, after it has been checked to
        open with ``context``: re-wrapping never vouches for a wrapped key it did not open. The
        data key is unwrapped and wrapped again inside the HSM adapter and never reaches this
        layer. Permissions: see the module docstring.
        """
        planned = self._plan_rewrap(call, wrapped, context, destination_key_id, wrapped_key_crc32c)
        if isinstance(planned, Rewrapped):
            return planned
        source = planned.source
        if planned.destination is None:  # current already: it must still open
            plaintext = self._master_keys.decrypt(source, planned.parsed.iv, planned.parsed.sealed, planned.source_ad)
            if len(plaintext) != DATA_KEY_LENGTH:
                raise InvalidCiphertext()
            self._usage.unwrapped(source)
            return self._unchanged(planned)
        iv, sealed = self._master_keys.rewrap(
            source,
            planned.parsed.iv,
            planned.parsed.sealed,
            planned.source_ad,
            planned.destination,
            planned.destination_ad,
        )
        self._usage.unwrapped(source)
        self._usage.wrapped(planned.destination)
        return self._moved(planned, iv, sealed)

    def _plan_rewrap(
        self,
        call: Call,
        wrapped: bytes,
        context: Mapping[str, str],
        destination_key_id: str,
        wrapped_key_crc32c: int | None,
        looked_up: _LookedUp | None = None,
    ) -> Rewrapped | _Move:
        """Everything of ``rewrap`` before its HSM step (checks, authorization, the wrap budget):
        the HSM step still to do, or the result where there is none (a subject's data key).

        ``looked_up`` keeps, for the items of one batch, what looking up key versions found:
        only lookups, after each item's own authorization, so an item is answered as it would be
        alone, with the key metadata as it was when the batch began (a batch lasts a fraction of
        a second; the key cache keeps metadata for KMS_METADATA_CACHE_TTL anyway)."""
        if destination_key_id:
            validate_key_id(destination_key_id)
        if self._subjects is not None and self._subjects.is_format(wrapped):
            return self._rewrap_subject_data_key(call, wrapped, context, destination_key_id, wrapped_key_crc32c)
        parsed, version, encoded_context = self._resolve(
            call, Permission.REWRAP, wrapped, context, wrapped_key_crc32c, looked_up
        )
        if looked_up is None or version.key_id not in looked_up.retention_checked:
            self._refuse_retention(self._cache.get(version.key_id))
            if looked_up is not None:
                looked_up.retention_checked.add(version.key_id)
        moving = bool(destination_key_id) and destination_key_id != version.key_id
        if moving:
            call.trail.note(detail=f"to {destination_key_id}")
            self._authorizer.require(call, Permission.DECRYPT, version.key_id, context)
            self._authorizer.require(call, Permission.ENCRYPT, destination_key_id, context)
        target = self._target(destination_key_id or version.key_id, looked_up)
        destination = target.version
        call.trail.note(detail=target.detail)
        if target.key.subject_field:  # a subject's key wraps it there, in software
            data_key = self._open(parsed, version, encoded_context, wrapped).plaintext
            number, result = self._by_subject().wrap(call, target.key, context, encoded_context, data_key)
            return Rewrapped(destination.key_id, number, version.key_id, version.version, result)
        source_ad = parsed.header.associated_data(encoded_context)
        if destination.version == version.version and destination.key_id == version.key_id:
            return _Move(version, parsed, wrapped, source_ad)
        self._check_wrap_budget(destination)
        return _Move(version, parsed, wrapped, source_ad, destination, target.header, target.header + encoded_context)

    def _target(self, key_id: str, looked_up: _LookedUp | None) -> _Target:
        """Where a data key re-wrapped to ``key_id`` goes: that key's primary version."""
        if looked_up is not None and (known := looked_up.targets.get(key_id)) is not None:
            return known
        key = self._cache.get(key_id)
        version = key.primary_for_encrypt()
        header = WrappedKeyHeader(version.key_id, version.version).encode()
        target = _Target(key, version, header, f"to {version.key_id} v{version.version}")
        if looked_up is not None:
            looked_up.targets[key_id] = target
        return target

    @staticmethod
    def _unchanged(move: _Move) -> Rewrapped:
        """The result of a wrapped key that is current already (and opened)."""
        source = move.source
        return Rewrapped(source.key_id, source.version, source.key_id, source.version, move.wrapped)

    @staticmethod
    def _moved(move: _Move, iv: bytes, sealed: bytes) -> Rewrapped:
        source, destination = move.source, move.destination
        assert destination is not None
        result = move.header + iv + sealed  # the wrapped key format: header, IV, sealed data key and tag
        return Rewrapped(destination.key_id, destination.version, source.key_id, source.version, result)

    def _complete_moves(self, moves: Sequence[_Move]) -> list[Rewrapped | KmsError]:
        """The HSM steps of ``moves``, in order: those between the same two versions in one pass
        on one session (MasterKeyCipher.rewrap_many, open_lengths), so a batch costs the HSM's
        own time per item and not a session, a key lookup and a trip through Python each. Uses
        are counted per pass."""
        results: dict[int, Rewrapped | KmsError] = {}
        groups: dict[tuple[str, int, str, int], list[int]] = {}
        for index, move in enumerate(moves):
            to = move.destination
            route = (move.source.key_id, move.source.version, to.key_id if to else "", to.version if to else 0)
            groups.setdefault(route, []).append(index)
        for indexes in groups.values():
            group = [moves[index] for index in indexes]
            source, destination = group[0].source, group[0].destination
            done: list[Rewrapped | KmsError]
            try:
                if destination is None:
                    lengths = self._master_keys.open_lengths(
                        source, [(m.parsed.iv, m.parsed.sealed, m.source_ad) for m in group]
                    )
                    done = [
                        self._unchanged(move) if length == DATA_KEY_LENGTH else _invalid(length)
                        for move, length in zip(group, lengths, strict=True)
                    ]
                else:
                    sealed = self._master_keys.rewrap_many(
                        source,
                        destination,
                        [(m.parsed.iv, m.parsed.sealed, m.source_ad, m.destination_ad) for m in group],
                    )
                    done = [
                        outcome if isinstance(outcome, KmsError) else self._moved(move, *outcome)
                        for move, outcome in zip(group, sealed, strict=True)
                    ]
            except KmsError as error:  # the HSM as a whole (unavailable, key missing): every item
                done = [error] * len(group)
            opened = sum(1 for result in done if not isinstance(result, KmsError))
            if opened:
                self._usage.count(source, unwraps=opened)
                if destination is not None:
                    self._usage.count(destination, wraps=opened)
            results.update(zip(indexes, done, strict=True))
        return [results[index] for index in range(len(moves))]

    def _rewrap_subject_data_key(
        self,
        call: Call,
        wrapped: bytes,
        context: Mapping[str, str],
        destination_key_id: str,
        wrapped_key_crc32c: int | None,
    ) -> Rewrapped:
        """A format 2 wrapped key is current as it is (its subject's key moves onto each new
        version by itself): returned unchanged once it opens, or moved to another key."""
        subjects = self._by_subject()
        opened = subjects.open(call, Permission.REWRAP, wrapped, context, wrapped_key_crc32c)
        source = opened.key
        if not destination_key_id or destination_key_id == source.key_id:
            call.trail.note(detail=f"to {source.key_id} (current)")
            return Rewrapped(source.key_id, opened.version, source.key_id, opened.version, wrapped)
        call.trail.note(detail=f"to {destination_key_id}")
        self._authorizer.require(call, Permission.DECRYPT, source.key_id, context)
        self._authorizer.require(call, Permission.ENCRYPT, destination_key_id, context)
        destination_key = self._cache.get(destination_key_id)
        destination = destination_key.primary_for_encrypt()
        if destination_key.subject_field:
            number, result = subjects.wrap(call, destination_key, context, opened.encoded_context, opened.plaintext)
        else:
            number, result = destination.version, self._wrap(destination, opened.plaintext, opened.encoded_context)
        return Rewrapped(destination_key.key_id, number, source.key_id, opened.version, result)

    @staticmethod
    def _refuse_retention(key: Key) -> None:
        if key.retention_period is not None:
            raise RewrapDefeatsRetention(key.key_id, _days(key.retention_period.total_seconds()))

    def _by_subject(self) -> SubjectDataKeys:
        if self._subjects is None:
            raise InvalidCiphertext()  # a service built without subjects serves no subject keys
        return self._subjects

    def may_rewrap_somewhere(self, call: Call) -> None:
        """Raises PermissionDenied unless the caller holds ``rewrap`` on some key: a stream
        holds a server thread while open, so only identities that could use one may open one."""
        if not self._authorizer.holds_anywhere(call, Permission.REWRAP):
            raise PermissionDenied(f"{call.identity} lacks the rewrap permission on every key")

    # -- batches -----------------------------------------------------------------------

    def generate_data_keys(
        self, call: Call, requests: Sequence[DataKeyRequest], *, include_plaintext: bool = True
    ) -> list[DataKey | KmsError]:
        return _each(
            call,
            requests,
            lambda item_call, r: self.generate_data_key(
                item_call, r.key_id, r.context, include_plaintext=include_plaintext
            ),
        )

    def decrypt_many(self, call: Call, requests: Sequence[UnwrapRequest]) -> list[DataKey | KmsError]:
        return _each(
            call,
            requests,
            lambda item_call, r: self.decrypt(
                item_call, r.wrapped_key, r.context, wrapped_key_crc32c=r.wrapped_key_crc32c
            ),
        )

    def rewrap_many(self, call: Call, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
        """``rewrap`` of each request, in order, each with its own authorization, audit trail
        and result, as ``_each`` runs them; the HSM steps wait until every item is planned and
        then run together (``_complete_moves``). When the deadline passes, the items planned
        so far are completed and recorded, then DeadlineExceeded is raised."""
        if len(requests) > MAX_BATCH:
            raise BatchTooLarge(f"a batch holds at most {MAX_BATCH} items")
        item_calls: list[Call] = []
        outcomes: list[Rewrapped | KmsError | _Move] = []
        late: DeadlineExceeded | None = None
        looked_up = _LookedUp()
        for r in requests:
            try:
                call.check_deadline()
            except DeadlineExceeded as error:
                late = error
                break
            item_call = call.for_item()
            try:
                outcome: Rewrapped | KmsError | _Move = self._plan_rewrap(
                    item_call, r.wrapped_key, r.context, r.destination_key_id, r.wrapped_key_crc32c, looked_up
                )
            except KmsError as error:
                outcome = error
            item_calls.append(item_call)
            outcomes.append(outcome)
        moves = [(index, outcome) for index, outcome in enumerate(outcomes) if isinstance(outcome, _Move)]
        completed = self._complete_moves([move for _, move in moves])
        for (index, _), result in zip(moves, completed, strict=True):
            outcomes[index] = result
        results: list[Rewrapped | KmsError] = []
        for item_call, outcome in zip(item_calls, outcomes, strict=True):
            assert not isinstance(outcome, _Move)
            results.append(outcome)
            call.trail.add_item(item_call.trail, outcome if isinstance(outcome, KmsError) else None)
        if late is not None:
            raise late
        return results

    # -- internals ---------------------------------------------------------------------

    def _open(self, parsed: WrappedKey, version: KeyVersion, encoded_context: bytes, wrapped: bytes) -> DataKey:
        plaintext = self._master_keys.decrypt(
            version, parsed.iv, parsed.sealed, parsed.header.associated_data(encoded_context)
        )
        if len(plaintext) != DATA_KEY_LENGTH:
            raise InvalidCiphertext()
        self._usage.unwrapped(version)
        return DataKey(version.key_id, version.version, wrapped, plaintext)

    def _wrap(self, version: KeyVersion, plaintext: bytes, encoded_context: bytes) -> bytes:
        self._check_wrap_budget(version)
        header = WrappedKeyHeader(version.key_id, version.version)
        iv, sealed = self._master_keys.encrypt(version, plaintext, header.associated_data(encoded_context))
        self._usage.wrapped(version)
        return WrappedKey(header, iv, sealed).encode()

    def _check_wrap_budget(self, version: KeyVersion) -> None:
        """Reserves the wrap before it happens (so concurrent calls cannot all pass one check)."""
        refused_at = self._usage.reserve_wrap(version, self._hard_max_wraps)
        if refused_at is not None:
            raise WrapLimitReached(version.key_id, version.version, refused_at, self._hard_max_wraps)

    def _resolve(
        self,
        call: Call,
        permission: Permission,
        wrapped: bytes,
        context: Mapping[str, str],
        wrapped_key_crc32c: int | None = None,
        looked_up: _LookedUp | None = None,
    ) -> tuple[WrappedKey, KeyVersion, bytes]:
        """The parsed wrapped key and the version that must open it (found in ``looked_up`` when
        an earlier item of the batch looked it up: see _plan_rewrap).

        The permission is checked on the key the wrapped key names before that key is looked
        up, so a denial never says whether it exists. A wrapped key naming a key or version
        that does not exist is reported exactly like a corrupted one, so flipping bits in the
        header learns nothing.

        A key of another purpose (PSEUDONYMIZE) is WrongKeyPurpose, after authorization.
        """
        if wrapped_key_crc32c is not None and not checksums.matches(wrapped, wrapped_key_crc32c):
            raise ChecksumMismatch("wrapped_key")
        if len(wrapped) > MAX_WRAPPED_KEY_BYTES:
            raise InvalidCiphertext()
        parsed = wrapped_key.parse(wrapped)
        call.trail.note(key_id=parsed.header.key_id, key_version=parsed.header.key_version)
        encoded_context = encode_context(context)
        call.trail.note(context=encoded_context)
        self._authorizer.require(call, permission, parsed.header.key_id, context)
        named = (parsed.header.key_id, parsed.header.key_version)
        if looked_up is not None and (known := looked_up.versions.get(named)) is not None:
            return parsed, known, encoded_context
        try:
            key: Key = self._cache.get(parsed.header.key_id)
            version = key.version_for_decrypt(parsed.header.key_version)
        except (KeyNotFound, KeyVersionNotFound):
            try:  # a version made elsewhere since this process last read the ledger?
                version = self._cache.caught_up(parsed.header.key_id).version_for_decrypt(parsed.header.key_version)
            except (KeyNotFound, KeyVersionNotFound):
                raise InvalidCiphertext() from None
        if looked_up is not None:
            looked_up.versions[named] = version
        return parsed, version, encoded_context


def _invalid(length: int | KmsError) -> KmsError:
    """The error of a wrapped key that did not open (``length`` is that error) or opened to
    something other than a data key."""
    return length if isinstance(length, KmsError) else InvalidCiphertext()


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{int(seconds)} seconds"


def _each(call: Call, items: Sequence[Item], operation: Callable[[Call, Item], Result]) -> list[Result | KmsError]:
    """Runs ``operation`` per item, each with a trail of its own that becomes the item's audit
    record; an item's failure becomes its result, never the batch's."""
    if len(items) > MAX_BATCH:
        raise BatchTooLarge(f"a batch holds at most {MAX_BATCH} items")
    results: list[Result | KmsError] = []
    for item in items:
        call.check_deadline()
        item_call = call.for_item()
        try:
            results.append(operation(item_call, item))
        except KmsError as error:
            results.append(error)
            call.trail.add_item(item_call.trail, error)
        else:
            call.trail.add_item(item_call.trail, None)
    return results
