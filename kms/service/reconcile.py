"""Start-up reconciliation of the HSM's master keys with the database's key versions.

Two kinds of disagreement can exist:

- A leftover: an HSM object labelled for a version that no committed row names. It comes from a
  crash (or a failed commit) between creating the object and recording it, or from restoring
  the database from an older backup. A leftover in the version slot right after a key's newest
  version is *adopted*: recorded as an ENABLED version that is not primary (a key the database
  no longer knows is recreated from its leftovers, newest as primary). Adopting is always safe:
  a leftover from a crash wrapped nothing, and one from a restored database may protect data
  that would otherwise be lost. Leftovers are never destroyed automatically; retiring an
  adopted version goes through the normal lifecycle, and anything that cannot be adopted (a
  slot already taken, a gap, attributes that do not prove in-HSM generation) is reported.
- A missing object: a committed, not-destroyed version whose HSM object is gone. By
  construction this cannot come from a crash of this service; it means the HSM lost data or
  someone deleted objects. It is reported loudly; nothing can repair it.

Each key is handled under its write lock, so reconciliation never races a create or rotation
running on another replica.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from kms.domain.keys import Key, KeyVersion, Purpose, Storage, VersionState, new_key
from kms.errors import KeyMetadataUnverified
from kms.ports import Clock, KeyRepository, MasterKeyInventory, MasterKeyObject
from kms.service.calls import internal
from kms.service.key_cache import KeyCache
from kms.service.recording import CallRecorder

log = logging.getLogger(__name__)

RECOVERED_DESCRIPTION = "recovered from HSM objects by reconciliation"


@dataclass
class ReconciliationReport:
    adopted: list[KeyVersion] = field(default_factory=list)
    missing: list[KeyVersion] = field(default_factory=list)
    unresolved: list[MasterKeyObject] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.missing and not self.unresolved


class Reconciler:
    def __init__(
        self,
        repository: KeyRepository,
        master_keys: MasterKeyInventory,
        cache: KeyCache,
        clock: Clock,
        recorder: CallRecorder,
    ) -> None:
        self._recorder = recorder
        self._repository = repository
        self._master_keys = master_keys
        self._cache = cache
        self._clock = clock

    def reconcile(self, *, repair: bool = True) -> ReconciliationReport:
        """Compares HSM and database; with ``repair``, adopts leftovers. Raises Unavailable
        errors when either side cannot be read."""
        report = ReconciliationReport()
        objects = self._master_keys.list_objects()
        present = {found.master_key_id for found in objects}
        referenced: set[str] = set()
        now = self._clock.now()
        for key in self._repository.all_keys():
            for version in key.versions:
                referenced.add(version.master_key_id)
                if (
                    version.storage is Storage.HSM_OBJECT
                    and version.must_have_material(now)
                    and version.master_key_id not in present
                ):
                    report.missing.append(version)
        leftovers: dict[str, list[MasterKeyObject]] = defaultdict(list)
        for found in objects:
            if found.master_key_id not in referenced:
                leftovers[found.key_id].append(found)
        for key_id, strays in sorted(leftovers.items()):
            try:
                adopted = self._adopt(key_id) if repair else []
            except KeyMetadataUnverified:
                adopted = []  # reported by the ledger check; its leftovers stay unresolved
            report.adopted += adopted
            taken = {version.master_key_id for version in adopted}
            report.unresolved += [leftover for leftover in strays if leftover.master_key_id not in taken]
        self._log(report)
        self._record(report)
        return report

    def _adopt(self, key_id: str) -> list[KeyVersion]:
        adopted: list[KeyVersion] = []
        with self._repository.transaction(key_id) as transaction:
            # Only what the ledger vouches for is extended: a key whose rows were deleted or
            # altered outside the service is reported, never rebuilt from its HSM objects
            # (that would bring back versions someone had disabled). Raises KeyMetadataUnverified.
            key: Key | None = self._cache.locked(key_id, transaction.key)
            recovering = key is None
            known = {version.master_key_id for version in key.versions} if key else set()
            slot = (key.latest_version if key else 0) + 1
            # A leftover is adopted only as the kind of key the key's purpose uses (a recovered
            # key is an ENCRYPT_DECRYPT one: HMAC leftovers of a lost key stay for an operator).
            kind = "hmac" if key is not None and key.purpose is Purpose.PSEUDONYMIZE else "aes"
            while True:
                candidates = sorted(
                    (
                        c
                        for c in self._master_keys.find(key_id, slot)
                        if c.sound and c.kind == kind and c.master_key_id not in known
                    ),
                    key=lambda c: c.create_time,
                )
                if not candidates:
                    break
                chosen = candidates[-1]
                version = KeyVersion(
                    key_id=key_id,
                    version=slot,
                    state=VersionState.ENABLED,
                    master_key_id=chosen.master_key_id,
                    master_key_label=chosen.label,
                    create_time=chosen.create_time,
                )
                now = self._clock.now()
                if key is None:
                    key = new_key(key_id, RECOVERED_DESCRIPTION, version, now)
                elif recovering:
                    key = key.with_new_primary(version, now)
                else:
                    key = key.with_adopted_version(version, now)
                adopted.append(version)
                slot += 1
            if adopted and key is not None:
                key = transaction.save(key)
        if key is not None:
            self._cache.put(key)
        return adopted

    def _record(self, report: ReconciliationReport) -> None:
        """The audit log gets what reconciliation changed or found wrong, under kms:reconciler."""
        for version in report.adopted:
            call = internal("reconciler")
            call.trail.note(
                key_id=version.key_id,
                key_version=version.version,
                detail=f"adopted leftover master key {version.master_key_id}",
            )
            self._recorder.finish(call, None, action="ReconciliationAdopt", fail_open=True)
        for version in report.missing:
            call = internal("reconciler")
            call.trail.note(
                key_id=version.key_id,
                key_version=version.version,
                detail=f"master key {version.master_key_id} missing from the HSM ({version.state.value})",
            )
            self._recorder.finish(call, None, action="ReconciliationMissing", fail_open=True)
        for found in report.unresolved:
            call = internal("reconciler")
            call.trail.note(
                key_id=found.key_id,
                key_version=found.version,
                detail=f"unreferenced master key {found.master_key_id} left for an operator"
                + ("" if found.sound else " (attributes do not prove in-HSM generation)"),
            )
            self._recorder.finish(call, None, action="ReconciliationUnresolved", fail_open=True)

    @staticmethod
    def _log(report: ReconciliationReport) -> None:
        for version in report.adopted:
            log.warning(
                "adopted leftover master key as a version",
                extra={
                    "fields": {
                        "key_id": version.key_id,
                        "version": version.version,
                        "master_key_id": version.master_key_id,
                    }
                },
            )
        for version in report.missing:
            log.critical(
                "master key object missing from the HSM for a recorded version",
                extra={
                    "fields": {
                        "key_id": version.key_id,
                        "version": version.version,
                        "master_key_id": version.master_key_id,
                        "state": version.state.value,
                    }
                },
            )
        for found in report.unresolved:
            log.warning(
                "unreferenced master key object left for an operator",
                extra={"fields": {"label": found.label, "master_key_id": found.master_key_id, "sound": found.sound}},
            )
