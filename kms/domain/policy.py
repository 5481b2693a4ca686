"""Who may do what to which keys: permissions, grants, and the decision rule.

A grant gives a principal (an identity, or ``group:<name>``) a set of permissions on a
resource: one key id (``orders``), every key id starting with a prefix (``tenant-*``), or all
keys (``*``). A grant may also carry encryption-context constraints: every listed key must be
present in the request's context with exactly that value (in the spirit of AWS KMS grant
constraints), so a per-tenant service can be held to its own tenant's data.

Default deny: a call is allowed only if some grant allows it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kms.domain.keys import validate_key_id
from kms.errors import InvalidArgument


class Permission(enum.Enum):
    ADMIN = "admin"  # create keys, update them, change version states, manage grants
    ENCRYPT = "encrypt"  # GenerateDataKey
    DECRYPT = "decrypt"  # Decrypt
    REWRAP = "rewrap"  # ReWrap (of the source key, and of the destination key if another)
    ROTATE = "rotate"  # RotateKey
    AUDIT_READ = "audit-read"  # read and verify the audit log

    @classmethod
    def parse(cls, name: str) -> Permission:
        try:
            return cls(name)
        except ValueError:
            raise InvalidArgument(f"unknown permission {name[:64]!r}; one of {', '.join(p.value for p in cls)}") from None


GROUP_PREFIX = "group:"
_PRINCIPAL = re.compile(r"[\x21-\x7e]{1,512}")  # printable ASCII without spaces (URIs, CNs)
_GROUP = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_principal(principal: str) -> str:
    if not _PRINCIPAL.fullmatch(principal):
        raise InvalidArgument("a principal is an identity or group:<name> of printable ASCII without spaces")
    if principal.startswith(GROUP_PREFIX) and not _GROUP.fullmatch(principal[len(GROUP_PREFIX) :]):
        raise InvalidArgument("group names are 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    return principal


def validate_group(group: str) -> str:
    if not _GROUP.fullmatch(group):
        raise InvalidArgument("group names are 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    return group


def validate_resource(resource: str) -> str:
    """``*``, a key id, or a key id prefix followed by ``*``."""
    if resource == "*":
        return resource
    if resource.endswith("*"):
        prefix = resource[:-1]
        try:
            validate_key_id(prefix)
        except InvalidArgument:
            raise InvalidArgument(f"resource prefix {prefix[:64]!r} must be characters allowed in key ids") from None
        return resource
    validate_key_id(resource)
    return resource


def resource_covers(resource: str, key_id: str) -> bool:
    if resource.endswith("*"):
        return key_id.startswith(resource[:-1])
    return resource == key_id


def resource_includes(outer: str, inner: str) -> bool:
    """Whether every key ``inner`` can name is also covered by ``outer``."""
    if outer.endswith("*"):
        return inner.startswith(outer[:-1])
    return outer == inner


@dataclass(frozen=True)
class Grant:
    principal: str
    resource: str
    permissions: frozenset[Permission]
    # Context entries a request must carry, exactly, for this grant to apply.
    context: Mapping[str, str] = field(default_factory=dict)
    grant_id: str = ""
    created_by: str = ""

    def allows(self, permission: Permission, key_id: str, context: Mapping[str, str] | None) -> bool:
        if permission not in self.permissions or not resource_covers(self.resource, key_id):
            return False
        if not self.context:
            return True
        if context is None:
            return False
        return all(context.get(name) == value for name, value in self.context.items())


@dataclass(frozen=True)
class PolicySnapshot:
    revision: int
    grants: tuple[Grant, ...]
    members: tuple[tuple[str, str], ...]  # (group, identity)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # When denied only because no matching grant's context constraints were met.
    context_mismatch: bool = False


def decide(
    grants: Iterable[Grant], permission: Permission, key_id: str, context: Mapping[str, str] | None
) -> Decision:
    """Allowed if any grant allows; otherwise, whether some grant would have, but for its
    context constraints (so the denial can say so)."""
    constrained = False
    for grant in grants:
        if grant.allows(permission, key_id, context):
            return Decision(True)
        if grant.context and permission in grant.permissions and resource_covers(grant.resource, key_id):
            constrained = True
    return Decision(False, context_mismatch=constrained)
