"""Authorization and quotas, decided in memory on every call.

Grants live in the database; each replica keeps the copy the metadata ledger vouches for and
reloads it when the ledger shows a change (polled every KMS_POLICY_POLL_INTERVAL, 250 ms by
default), so a policy change made on any replica applies on every replica within a second.
Changes made through this replica apply at once.

Superusers: the bootstrap admin (KMS_BOOTSTRAP_ADMIN) may do everything, so that it can grant
narrower permissions to others. In development mode (plaintext on loopback, no bootstrap admin
configured) every caller is the identity ``local`` and is the superuser; TLS turns that off.

Quotas are token buckets per (identity, permission), per replica; an item of a batch counts as
one call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from kms.domain.policy import (
    ANONYMOUS,
    GROUP_PREFIX,
    Decision,
    Grant,
    Permission,
    PolicySnapshot,
    decide,
    resource_covers,
    resource_includes,
    validate_principal,
    validate_resource,
)
from kms.domain.quota import Bucket, Limit
from kms.errors import KmsError, MetadataIntegrityLost, PermissionDenied, RateLimited, Unauthenticated
from kms.ports import PolicyRepository
from kms.service.calls import SYSTEM_PREFIX, Call

log = logging.getLogger(__name__)

# Positions of the ledger a policy load tries before it keeps what verifies without reporting.
_LOAD_ATTEMPTS = 10


class PolicyVerifier(Protocol):
    """Which stored grants and memberships the metadata ledger vouches for
    (kms.service.integrity.MetadataIntegrity)."""

    @property
    def seq(self) -> int: ...

    @property
    def problem(self) -> str | None: ...

    def refresh(self) -> None: ...

    def grant_verified(self, grant: Grant, *, report: bool = True) -> bool: ...

    def member_verified(self, group: str, identity: str, *, report: bool = True) -> bool: ...


class PolicyCache:
    """The grants and memberships in force, as this replica believes them: the stored rows the
    metadata ledger vouches for, and no other. Reloaded whenever the ledger shows a policy
    change (kms.service.integrity calls ``refresh``), and at once after a change made here."""

    def __init__(self, repository: PolicyRepository, verifier: PolicyVerifier) -> None:
        self._repository = repository
        self._verifier = verifier
        # (grants by principal, groups by identity): one object, swapped in whole, so a reader
        # never pairs a new policy's grants with an old one's groups.
        self._policy: tuple[dict[str, list[Grant]], dict[str, frozenset[str]]] = ({}, {})
        # Loads one at a time: a load must not replace a fresher policy with an older one.
        self._loading = threading.Lock()
        self._warned: set[str] = set()

    def refresh(self, force: bool = True) -> None:
        """Loads the rows the ledger vouches for, judged against the ledger as this replica has
        read it and at the same position: rows read at a later position are caught up with
        first (they would look forged), and rows judged while this replica read further are
        judged again (a grant revoked meanwhile would look restored). Other replicas and
        workers append entries (of keys, too) all the time, so a position is tried several
        times; the last try keeps what verifies and reports nothing."""
        for attempt in range(_LOAD_ATTEMPTS):
            if self._verifier.problem is not None:
                self._policy = ({}, {})  # nothing in the database can be believed
                return
            with self._loading:
                before = self._verifier.seq
                snapshot = self._repository.snapshot()
                if snapshot.revision <= before:
                    refused = self._load(snapshot)
                    if snapshot.revision == before == self._verifier.seq:
                        self._report(refused)
                        return
                    if attempt == _LOAD_ATTEMPTS - 1:
                        return
                    continue
            self._verifier.refresh()

    def check_trusted(self) -> None:
        """Raises MetadataIntegrityLost while no stored grant can be believed."""
        problem = self._verifier.problem
        if problem is not None:
            raise MetadataIntegrityLost(problem)

    def grants(self, identity: str, groups: Iterable[str] = ()) -> list[Grant]:
        by_principal, groups_of = self._policy
        found = list(by_principal.get(identity, ()))
        for group in {*groups, *groups_of.get(identity, ())}:
            found += by_principal.get(GROUP_PREFIX + group, ())
        return found

    def all_grants(self) -> list[Grant]:
        return [grant for grants in self._policy[0].values() for grant in grants]

    def groups_of(self, identity: str) -> frozenset[str]:
        return self._policy[1].get(identity, frozenset())

    def members(self) -> list[tuple[str, str]]:
        return sorted((group, identity) for identity, groups in self._policy[1].items() for group in groups)

    def _load(self, snapshot: PolicySnapshot) -> list[Grant | tuple[str, str]]:
        """Keeps the rows that verify; returns the others, not yet reported."""
        refused: list[Grant | tuple[str, str]] = []
        by_principal: dict[str, list[Grant]] = defaultdict(list)
        for grant in snapshot.grants:
            if self._verifier.grant_verified(grant, report=False):
                self._warn_if_inert(grant)
                by_principal[grant.principal].append(grant)
            else:
                refused.append(grant)
        groups: dict[str, set[str]] = defaultdict(set)
        for group, identity in snapshot.members:
            if self._verifier.member_verified(group, identity, report=False):
                groups[identity].add(group)
            else:
                refused.append((group, identity))
        self._policy = (dict(by_principal), {identity: frozenset(names) for identity, names in groups.items()})
        return refused

    def _report(self, refused: list[Grant | tuple[str, str]]) -> None:
        for row in refused:
            if isinstance(row, Grant):
                self._verifier.grant_verified(row)
            else:
                self._verifier.member_verified(*row)

    def _warn_if_inert(self, grant: Grant) -> None:
        """Grants stored by an older version under rules since tightened (a prefix that does not
        end at a separator, a principal no certificate can be) now match nothing: say so once."""
        if grant.grant_id in self._warned:
            return
        try:
            validate_resource(grant.resource)
            validate_principal(grant.principal)
        except KmsError as error:
            self._warned.add(grant.grant_id)
            log.warning(
                "grant matches nothing under the current rules; revoke it and grant again",
                extra={"fields": {"grant_id": grant.grant_id, "problem": error.message}},
            )


class QuotaBook:
    """Token buckets per (identity, permission), ``limits`` per permission (absent: unlimited);
    and per identity a budget of failed calls (``failures``), paid after the fact."""

    MAX_BUCKETS = 100_000

    def __init__(
        self,
        limits: Mapping[Permission, Limit],
        failures: Limit | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = dict(limits)
        self._failures = failures
        self._monotonic = monotonic
        self._buckets: dict[tuple[str, Permission | None], Bucket] = {}
        self._lock = threading.Lock()

    def take(self, identity: str, permission: Permission, count: int = 1) -> None:
        limit = self._limits.get(permission)
        if limit is None:
            return
        now = self._monotonic()
        with self._lock:
            bucket = self._bucket(identity, permission, limit, now)
            # A call of more items than the burst could never be served: it waits for a full
            # bucket instead and leaves the bucket in debt for the rest (as far as -burst).
            wait = bucket.take(min(count, limit.burst), now)
            if not wait and count > limit.burst:
                bucket.charge(count - limit.burst, now)
        if wait:
            raise RateLimited(permission.value, wait)

    def check_failures(self, identity: str) -> None:
        """Raises RateLimited while ``identity`` has spent its failure budget."""
        if self._failures is None:
            return
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.get((identity, None))
            wait = bucket.wait(now) if bucket is not None else 0.0
        if wait:
            raise RateLimited("failed calls", wait)

    def charge_failures(self, identity: str, count: int) -> None:
        if self._failures is None:
            return
        now = self._monotonic()
        with self._lock:
            self._bucket(identity, None, self._failures, now).charge(count, now)

    def _bucket(self, identity: str, permission: Permission | None, limit: Limit, now: float) -> Bucket:
        key = (identity, permission)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                # Identities come from certificates of one CA, so this is rare; full buckets
                # carry no state worth keeping.
                self._buckets = {k: b for k, b in self._buckets.items() if b.tokens < b.limit.burst}
            bucket = self._buckets[key] = Bucket(limit, limit.burst, now)
        return bucket


class Authorizer:
    def __init__(self, policies: PolicyCache, quotas: QuotaBook, superusers: Iterable[str]) -> None:
        self._policies = policies
        self._quotas = quotas
        self._superusers = frozenset(superusers)

    def is_superuser(self, call: Call) -> bool:
        return call.identity in self._superusers

    def admit(self, call: Call) -> None:
        """The door, before a request is even parsed: an identity that holds no grant at all may
        do nothing, and one that has spent its failure budget waits."""
        if self.is_superuser(call) or call.identity.startswith(SYSTEM_PREFIX):
            return
        self._quotas.check_failures(call.identity)
        self._policies.check_trusted()
        if not self._policies.grants(call.identity, call.groups):
            if call.identity == ANONYMOUS:
                raise Unauthenticated("this call needs an authenticated identity (a TLS client certificate)")
            raise PermissionDenied(f"{call.identity} holds no grant")

    def charge_failures(self, call: Call, count: int) -> None:
        if not self.is_superuser(call):
            self._quotas.charge_failures(call.identity, count)

    def require(
        self,
        call: Call,
        permission: Permission,
        key_id: str,
        context: Mapping[str, str] | None = None,
        *,
        uses: int = 1,
    ) -> None:
        """Raises PermissionDenied (or Unauthenticated for a caller without identity) unless a
        grant allows ``permission`` on ``key_id`` with ``context``; then takes ``uses`` quota
        tokens (one per item the call does, as for batches)."""
        if not self.is_superuser(call):
            decision = decide(self._policies.grants(call.identity, call.groups), permission, key_id, context)
            if not decision.allowed:
                raise self._denial(call, permission, f"key {key_id!r}", decision)
        self._quotas.take(call.identity, permission, uses)

    def holds_anywhere(self, call: Call, permission: Permission) -> bool:
        """Whether some grant gives ``permission`` on some key (streams are opened only by
        identities that could use them)."""
        if self.is_superuser(call):
            return True
        return any(permission in grant.permissions for grant in self._policies.grants(call.identity, call.groups))

    def require_any(self, call: Call, key_id: str) -> None:
        """Reading a key's metadata needs some unconstrained permission on it, whichever."""
        if self.may_see(call, key_id):
            return
        raise self._denial(call, None, f"key {key_id!r}", Decision(False))

    def may_see(self, call: Call, key_id: str) -> bool:
        """Metadata (a key, its versions and usage) is visible to an admin and to whoever holds an
        unconstrained grant on the key. A grant constrained to an encryption context does not
        count: metadata reads carry no context, and a tenant held to its own context must not
        learn which other tenants' keys exist or how much they are used."""
        if self.is_superuser(call):
            return True
        return any(
            not grant.context and resource_covers(grant.resource, key_id)
            for grant in self._policies.grants(call.identity, call.groups)
        )

    def require_admin_over(self, call: Call, resource: str) -> None:
        """Managing grants on ``resource`` needs an unconstrained admin grant that covers all of it."""
        if self.is_superuser(call):
            return
        for grant in self._policies.grants(call.identity, call.groups):
            if (
                Permission.ADMIN in grant.permissions
                and not grant.context
                and resource_includes(grant.resource, resource)
            ):
                return
        raise self._denial(call, Permission.ADMIN, f"{resource!r}", Decision(False))

    def _denial(self, call: Call, permission: Permission | None, what: str, decision: Decision) -> KmsError:
        if call.identity == ANONYMOUS:
            return Unauthenticated("this call needs an authenticated identity (a TLS client certificate)")
        needed = f"the {permission.value} permission" if permission else "a permission"
        suffix = " for this encryption context" if decision.context_mismatch else ""
        return PermissionDenied(f"{call.identity} lacks {needed} on {what}{suffix}")
