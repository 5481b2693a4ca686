"""Rotating the root key of the key hierarchy, and retiring old roots.

``rotate`` makes a new root the active one and re-wraps every stored version key under it, one
key at a time, each in its own transaction (with its ledger entry). It is resumable: when
versions are still wrapped under an older root, it carries on onto the newest root instead of
making another. For each key, the new wrapped keys are made in the HSM first, outside any
database lock; the transaction then checks, under the key's lock, that the key still holds the
wrapped keys the new ones were made from, and records them. A crash at any moment leaves every
version under one root or the other, and both roots stay until ``retire`` is asked for: nothing
is lost, and a rerun picks up where this one stopped.

``retire`` destroys an old root only once no version, of any state but DESTROYED, is wrapped
under it. Copies of the database from before the rotation hold versions wrapped under the old
root: they open as long as that root exists, and never after it is retired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kms.crashpoints import crash_point
from kms.domain.keys import Key, KeyVersion, Purpose, Storage, VersionState, WrappedMaterial
from kms.errors import FailedPrecondition, KeyNotFound
from kms.ports import KeyRepository, RootKeyStore
from kms.service.calls import internal
from kms.service.key_cache import KeyCache
from kms.service.recording import CallRecorder

log = logging.getLogger(__name__)


@dataclass
class RootRotation:
    root_key_id: str
    created: bool
    keys: int = 0
    versions: int = 0
    skipped: list[str] = field(default_factory=list)  # keys that changed meanwhile: rerun picks them up


class RootKeys:
    def __init__(
        self,
        repository: KeyRepository,
        roots: RootKeyStore,
        cache: KeyCache,
        recorder: CallRecorder,
        *,
        settle: float,
        read_ledger: Callable[[], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._repository = repository
        self._roots = roots
        self._cache = cache
        self._recorder = recorder
        # Serving processes search for roots again at this interval (KMS_HSM_ROOT_REFRESH): once
        # it has passed, none wraps a new version under the old root any more.
        self._settle = settle
        self._sleep = sleep
        # Keys other processes created since this one last read the ledger are found by the
        # scan of the database; the ledger must know them before they can be believed.
        self._read_ledger = read_ledger

    def rotate(self, *, batch: int = 200, on_progress: Callable[[int], None] = lambda versions: None) -> RootRotation:
        """Re-wraps every version key under the newest root, making a new root first unless
        versions are still left under an older one (a rerun after an interruption)."""
        newest = self._roots.active_root()
        resuming = bool(self._repository.keys_wrapped_outside(newest, 1, None))
        if resuming:
            report = RootRotation(newest, created=False)
        else:
            report = RootRotation(self._roots.create_root(), created=True)
            crash_point("root_rotation.after_root_created")
            self._audit("RootKeyCreated", "", f"root key {report.root_key_id} is the active root")
        self._sleep(self._settle)
        # A version a server prepared under the old root just before it saw the new one may be
        # committed behind the scan: a second pass from the start finds it.
        for _pass in range(2):
            report.skipped = []  # what the last pass could not move is what a rerun must
            self._read_ledger()
            after: str | None = None
            while key_ids := self._repository.keys_wrapped_outside(report.root_key_id, batch, after):
                for key_id in key_ids:
                    moved = self._rewrap_key(key_id, report.root_key_id)
                    if moved is None:
                        report.skipped.append(key_id)
                    else:
                        report.keys += 1
                        report.versions += moved
                        on_progress(moved)
                after = key_ids[-1]
        self._audit(
            "RootRotation",
            "",
            f"{report.versions} versions of {report.keys} keys re-wrapped under "
            f"root key {report.root_key_id}; {len(report.skipped)} keys left for a rerun",
        )
        return report

    def retire(self, root_key_id: str) -> None:
        """Destroys an older root once nothing is wrapped under it."""
        if root_key_id == self._roots.active_root():
            raise FailedPrecondition(f"root key {root_key_id} is the active root; rotate the root first")
        if root_key_id not in self._roots.roots():
            raise KeyNotFound(f"root:{root_key_id}")
        if self._repository.keys_wrapped_under(root_key_id, 1):
            raise FailedPrecondition(
                f"versions are still wrapped under root key {root_key_id}; run kms hsm rotate-root until none are"
            )
        self._roots.destroy_root(root_key_id)
        self._audit("RootKeyRetired", "", f"root key {root_key_id} destroyed in the HSM")

    def _rewrap_key(self, key_id: str, to_root: str) -> int | None:
        """Re-wraps the versions of one key; None when the key changed meanwhile."""
        try:
            current = self._cache.read_through(key_id)
        except KeyNotFound:
            return None  # created after this pass read the ledger: the next pass or a rerun
        kind = "hmac" if current.purpose is Purpose.PSEUDONYMIZE else "aes"
        moved: dict[int, KeyVersion] = {}
        for version in current.versions:
            if version.storage is not Storage.WRAPPED or version.root_key_id == to_root or not version.wrapped_material:
                continue
            material = self._roots.rewrap_material(
                key_id,
                version.version,
                WrappedMaterial(version.wrapped_material, version.root_key_id),
                version.material_mac,
                kind,
                to_root,
            )
            moved[version.version] = replace(
                version,
                wrapped_material=material.blob,
                root_key_id=material.root_key_id,
                material_mac=self._roots.bind(key_id, version.version, material),
            )
        if not moved:
            return 0
        with self._repository.transaction(key_id) as transaction:
            locked = self._cache.locked(key_id, transaction.key)
            if locked is None or not _same_material(locked, current, moved):
                return None
            saved = transaction.save(replace(locked, versions=tuple(moved.get(v.version, v) for v in locked.versions)))
            crash_point("root_rotation.before_commit")
        crash_point("root_rotation.after_commit")
        self._cache.put(saved, transaction.appended)
        self._audit("RootRewrap", key_id, f"{len(moved)} versions re-wrapped under root key {to_root}")
        return len(moved)

    def _audit(self, action: str, key_id: str, detail: str) -> None:
        call = internal("roots")
        call.trail.note(key_id=key_id, detail=detail)
        self._recorder.finish(call, None, action=action, fail_open=True)


def _same_material(locked: Key, read: Key, moved: dict[int, KeyVersion]) -> bool:
    """Whether the versions re-wrapped still hold, under the lock, what they were read with."""
    for number in moved:
        before, now = read.version(number), locked.version(number)
        if (now.wrapped_material, now.root_key_id, now.state is VersionState.DESTROYED) != (
            before.wrapped_material,
            before.root_key_id,
            False,
        ):
            return False
    return True
