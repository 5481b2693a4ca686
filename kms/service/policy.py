"""Managing grants and groups (the admin permission over what is granted)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from kms.crypto.context import encode_context
from kms.domain.policy import (
    GROUP_PREFIX,
    Grant,
    Permission,
    PolicySnapshot,
    resource_includes,
    validate_group,
    validate_principal,
    validate_resource,
)
from kms.errors import GrantNotFound, InvalidArgument, KmsError
from kms.ports import Clock, PolicyRepository
from kms.service.authz import Authorizer, PolicyCache
from kms.service.calls import Call
from kms.service.lifecycle_ports import Anchoring

log = logging.getLogger(__name__)

MAX_CONSTRAINTS = 16


class PolicyService:
    def __init__(
        self, repository: PolicyRepository, cache: PolicyCache, authorizer: Authorizer, clock: Clock, anchor: Anchoring
    ) -> None:
        self._anchor = anchor
        self._repository = repository
        self._cache = cache
        self._authorizer = authorizer
        self._clock = clock

    def grant(
        self,
        call: Call,
        principal: str,
        resource: str,
        permissions: Iterable[str],
        context: Mapping[str, str] | None = None,
    ) -> Grant:
        validate_principal(principal)
        validate_resource(resource)
        granted = frozenset(Permission.parse(p) for p in permissions)
        if not granted:
            raise InvalidArgument("grant at least one permission")
        constraints = dict(context or {})
        if len(constraints) > MAX_CONSTRAINTS:
            raise InvalidArgument(f"at most {MAX_CONSTRAINTS} context constraints")
        # The constraint's values are recorded only as the keyed digest of their encoding, like
        # any encryption context: a reader of the log learns which entries are pinned, not to what.
        call.trail.note(
            key_id=_key_named(resource),
            context=encode_context(constraints) if constraints else None,
            detail=_describe(principal, resource, granted, constraints),
        )
        self._authorizer.require_admin_over(call, resource)
        stored = self._repository.add_grant(
            Grant(principal, resource, granted, constraints, created_by=call.identity), self._clock.now()
        )
        self._anchor.anchor_now()  # reads the change back through the ledger, then anchors it
        call.trail.note(detail=_describe(principal, resource, granted, constraints) + f" as {stored.grant_id}")
        log.info(
            "permission granted",
            extra={
                "fields": {
                    "grant_id": stored.grant_id,
                    "principal": principal,
                    "resource": resource,
                    "permissions": sorted(p.value for p in granted),
                    "identity": call.identity,
                }
            },
        )
        return stored

    def revoke(self, call: Call, grant_id: str) -> Grant:
        """Only an admin over everything learns that a grant does not exist (and may make this
        replica re-read the policy, in case the grant was made on another one just now); anyone
        else is denied, as for a grant outside what they administer."""
        call.trail.note(detail=f"grant {grant_id[:64]}")
        grant = next((g for g in self._cache.all_grants() if g.grant_id == grant_id), None)
        if grant is None:
            self._authorizer.require_admin_over(call, "*")
            self._anchor.anchor_now()  # reads the change back through the ledger, then anchors it
            grant = next((g for g in self._cache.all_grants() if g.grant_id == grant_id), None)
        if grant is None:
            raise GrantNotFound(grant_id)
        self._authorizer.require_admin_over(call, grant.resource)
        call.trail.note(
            key_id=_key_named(grant.resource),
            detail=f"grant {grant_id}: " + _describe(grant.principal, grant.resource, grant.permissions, grant.context),
        )
        if not self._repository.delete_grant(grant_id):
            raise GrantNotFound(grant_id)
        self._anchor.anchor_now()  # reads the change back through the ledger, then anchors it
        log.info("grant revoked", extra={"fields": {"grant_id": grant_id, "identity": call.identity}})
        return grant

    def grants(self, call: Call, principal: str = "", resource: str = "") -> list[Grant]:
        """The grants the caller administers, optionally only those of a principal or resource."""
        visible = []
        for grant in self._cache.all_grants():
            if principal and grant.principal != principal:
                continue
            if resource and not resource_includes(resource, grant.resource):
                continue
            try:
                self._authorizer.require_admin_over(call, grant.resource)
            except KmsError:
                continue
            visible.append(grant)
        if not visible and not self._authorizer.is_superuser(call):
            self._authorizer.require_admin_over(call, resource or "*")
        return sorted(visible, key=lambda g: (g.resource, g.principal, g.grant_id))

    def add_member(self, call: Call, group: str, identity: str) -> bool:
        call.trail.note(detail=f"{identity[:256]} into group {group[:64]}")
        self._authorizer.require_admin_over(call, "*")
        added = self._repository.add_member(validate_group(group), _identity(identity))
        self._anchor.anchor_now()  # reads the change back through the ledger, then anchors it
        return added

    def remove_member(self, call: Call, group: str, identity: str) -> bool:
        call.trail.note(detail=f"{identity[:256]} out of group {group[:64]}")
        self._authorizer.require_admin_over(call, "*")
        removed = self._repository.remove_member(validate_group(group), _identity(identity))
        self._anchor.anchor_now()  # reads the change back through the ledger, then anchors it
        return removed

    def stored(self) -> PolicySnapshot:
        """Every stored grant and membership, verified or not (kms db verify)."""
        return self._repository.snapshot()

    def members(self, call: Call, group: str = "") -> list[tuple[str, str]]:
        self._authorizer.require_admin_over(call, "*")
        return [(g, i) for g, i in self._cache.members() if not group or g == group]


def _key_named(resource: str) -> str:
    """The key a grant's resource names, for the grant's audit records, so that whoever reads
    one key's records (audit-read on that key) sees who was given or lost access to it; "" for
    "*" and prefixes, which name no one key."""
    return "" if resource.endswith("*") else resource


def _describe(principal: str, resource: str, permissions: Iterable[Permission], constraints: Mapping[str, str]) -> str:
    names = ",".join(sorted(p.value for p in permissions))
    pinned = " when " + ",".join(sorted(constraints)) + " match" if constraints else ""
    return f"{principal} {names} on {resource}{pinned}"


def _identity(identity: str) -> str:
    if identity.startswith(GROUP_PREFIX):
        raise InvalidArgument("groups contain identities, not other groups")
    return validate_principal(identity)
