"""Authorization and quotas, decided in memory on every call.

Grants live in the database; each replica keeps a copy and polls a revision number every
``poll_interval`` (250 ms by default) and reloads when it changed, so a policy change made on
any replica applies on every replica within a second. Changes made through this replica apply
at once.

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

from kms.domain.policy import GROUP_PREFIX, Decision, Grant, Permission, PolicySnapshot, decide, resource_includes
from kms.domain.quota import Bucket, Limit
from kms.errors import KmsError, PermissionDenied, RateLimited, Unauthenticated
from kms.ports import PolicyRepository
from kms.service.calls import Call

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


class PolicyCache:
    def __init__(self, repository: PolicyRepository, poll_interval: float = 0.25) -> None:
        self._repository = repository
        self._poll_interval = poll_interval
        self._revision = -1
        # (grants by principal, groups by identity): one object, swapped in whole, so a reader
        # never pairs a new policy's grants with an old one's groups.
        self._policy: tuple[dict[str, list[Grant]], dict[str, frozenset[str]]] = ({}, {})
        # Loads one at a time: the poller must not replace a fresher policy, loaded just after
        # a change, with an older one it read before.
        self._loading = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kms-policy", daemon=True)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self, force: bool = False) -> None:
        with self._loading:
            if force or self._repository.revision() != self._revision:
                self._load(self._repository.snapshot())

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

    def _load(self, snapshot: PolicySnapshot) -> None:
        by_principal: dict[str, list[Grant]] = defaultdict(list)
        for grant in snapshot.grants:
            by_principal[grant.principal].append(grant)
        groups: dict[str, set[str]] = defaultdict(set)
        for group, identity in snapshot.members:
            groups[identity].add(group)
        self._policy = (dict(by_principal), {identity: frozenset(names) for identity, names in groups.items()})
        self._revision = snapshot.revision

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.refresh()
            except KmsError as error:
                log.warning("policy refresh failed", extra={"fields": {"error": error.message}})


class QuotaBook:
    """Token buckets per (identity, permission); ``limits`` per permission, absent: unlimited."""

    def __init__(self, limits: Mapping[Permission, Limit], monotonic: Callable[[], float] = time.monotonic) -> None:
        self._limits = dict(limits)
        self._monotonic = monotonic
        self._buckets: dict[tuple[str, Permission], Bucket] = {}
        self._lock = threading.Lock()

    def take(self, identity: str, permission: Permission, count: int = 1) -> None:
        limit = self._limits.get(permission)
        if limit is None:
            return
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.get((identity, permission))
            if bucket is None:
                bucket = self._buckets[(identity, permission)] = Bucket(limit, limit.burst, now)
            wait = bucket.take(count, now)
        if wait:
            raise RateLimited(permission.value, wait)


class Authorizer:
    def __init__(self, policies: PolicyCache, quotas: QuotaBook, superusers: Iterable[str]) -> None:
        self._policies = policies
        self._quotas = quotas
        self._superusers = frozenset(superusers)

    def is_superuser(self, call: Call) -> bool:
        return call.identity in self._superusers

    def require(
        self, call: Call, permission: Permission, key_id: str, context: Mapping[str, str] | None = None
    ) -> None:
        """Raises PermissionDenied (or Unauthenticated for a caller without identity) unless a
        grant allows ``permission`` on ``key_id`` with ``context``; then takes one quota token."""
        if not self.is_superuser(call):
            decision = decide(self._policies.grants(call.identity, call.groups), permission, key_id, context)
            if not decision.allowed:
                raise self._denial(call, permission, f"key {key_id!r}", decision)
        self._quotas.take(call.identity, permission)

    def require_any(self, call: Call, key_id: str) -> None:
        """Reading a key's metadata needs some permission on it, whichever."""
        if self.is_superuser(call) or self.may_see(call, key_id):
            return
        raise self._denial(call, None, f"key {key_id!r}", Decision(False))

    def may_see(self, call: Call, key_id: str) -> bool:
        if self.is_superuser(call):
            return True
        grants = self._policies.grants(call.identity, call.groups)
        return any(decide(grants, p, key_id, None).allowed or _constrained(grants, p, key_id) for p in Permission)

    def require_admin_over(self, call: Call, resource: str) -> None:
        """Managing grants on ``resource`` needs an unconstrained admin grant that covers all of it."""
        if self.is_superuser(call):
            return
        for grant in self._policies.grants(call.identity, call.groups):
            if Permission.ADMIN in grant.permissions and not grant.context and resource_includes(grant.resource, resource):
                return
        raise self._denial(call, Permission.ADMIN, f"{resource!r}", Decision(False))

    def _denial(self, call: Call, permission: Permission | None, what: str, decision: Decision) -> KmsError:
        if call.identity == ANONYMOUS:
            return Unauthenticated("this call needs an authenticated identity (a TLS client certificate)")
        needed = f"the {permission.value} permission" if permission else "a permission"
        suffix = " for this encryption context" if decision.context_mismatch else ""
        return PermissionDenied(f"{call.identity} lacks {needed} on {what}{suffix}")


def _constrained(grants: list[Grant], permission: Permission, key_id: str) -> bool:
    return decide(grants, permission, key_id, None).context_mismatch
