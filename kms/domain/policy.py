"""Who may do what to which keys: identities, permissions, grants, and the decision rule.

Identities. Every call runs as exactly one identity, of one of these kinds:

    spiffe://kms.dev/orders   a URI: a client certificate's only URI SAN (kms.api.tls)
    cn:orders-service         a client certificate's CN, when KMS_CN_IDENTITIES is on
    local                     every plaintext caller on loopback (development)
    anonymous                 a TLS caller without a client certificate
    kms:scheduler             the service itself (kms.service.calls.internal)

The kinds cannot be confused, because a URI identity may not use a reserved scheme (compared
case-insensitively): ``group``, ``cn``, ``kms``, ``local``, ``anonymous``. So no certificate can
name a group, a CN identity, the service itself or the development identity.

Grants. A grant gives a principal a set of permissions on a resource. A principal is an
identity that can hold grants (a URI, ``cn:<name>`` or ``local``, never ``anonymous`` or
``kms:...``) or ``group:<name>``. A resource is one key id (``orders``), all keys (``*``), or a
separated prefix (``tenant-acme-*``): key id characters ending in ``-`` or ``_``, then ``*``,
covering exactly the key ids that start with that prefix. A prefix must end at a separator so
that ``tenant-acme-*`` cannot reach ``tenant-acme2-...``; tenant names must then not contain
the separator that ends their prefix (``tenant-acme_corp-*``, not ``tenant-acme-corp-*``).

A grant may also carry encryption-context constraints: every listed key must be present in the
request's context with exactly that value (in the spirit of AWS KMS grant constraints), so a
per-tenant service can be held to its own tenant's data.

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
    PSEUDONYMIZE = "pseudonymize"  # Pseudonymize (tokens only: it grants no decrypt, nor anything else)
    ERASE = "erase"  # EraseSubject: forget one data subject of a key for good

    @classmethod
    def parse(cls, name: str) -> Permission:
        try:
            return cls(name)
        except ValueError:
            raise InvalidArgument(
                f"unknown permission {name[:64]!r}; one of {', '.join(p.value for p in cls)}"
            ) from None


# --- identities and principals -------------------------------------------------------------

GROUP_PREFIX = "group:"
CN_PREFIX = "cn:"
LOCAL = "local"
ANONYMOUS = "anonymous"
RESERVED_SCHEMES = frozenset({"group", "cn", "kms", "local", "anonymous"})
MAX_URI_LENGTH = 512
MAX_COMMON_NAME_LENGTH = 256

_PRINTABLE = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_GROUP = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_GROUP_RULE = "group names are 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
_IDENTITY_RULE = "an identity is a URI (spiffe://...), cn:<common name> or local"


def clipped(text: str, limit: int = 24) -> str:
    """``text`` quoted for an error message: its first ``limit`` characters, with anything but
    printable ASCII escaped, so that callers' text cannot fill or forge a message or a log line."""
    shown = ascii(text[:limit])
    return f"{shown}..." if len(text) > limit else shown


def uri_identity_flaw(uri: str) -> str | None:
    """Why ``uri`` cannot be an identity, or None if it can.

    A URI identity is 1-512 characters of printable ASCII without spaces, starts with a scheme
    (``[A-Za-z][A-Za-z0-9+.-]*:``), and that scheme is not reserved (RESERVED_SCHEMES, any case).
    """
    if not uri:
        return "is empty"
    if len(uri) > MAX_URI_LENGTH:
        return f"is longer than {MAX_URI_LENGTH} characters"
    if not _PRINTABLE.fullmatch(uri):
        return "has characters other than printable ASCII without spaces"
    scheme = _SCHEME.match(uri)
    if scheme is None:
        return "has no URI scheme (such as spiffe:)"
    if scheme.group(1).lower() in RESERVED_SCHEMES:
        return f"uses the reserved scheme {clipped(scheme.group(1), 16)}"
    return None


def common_name_flaw(common_name: str) -> str | None:
    """Why ``common_name`` cannot name the identity ``cn:<common_name>``, or None if it can:
    1-256 characters of printable ASCII without spaces."""
    if not common_name:
        return "is empty"
    if len(common_name) > MAX_COMMON_NAME_LENGTH:
        return f"is longer than {MAX_COMMON_NAME_LENGTH} characters"
    if not _PRINTABLE.fullmatch(common_name):
        return "has characters other than printable ASCII without spaces"
    return None


def validate_identity(identity: str) -> str:
    """Returns ``identity`` if a caller can be it and hold grants as itself, else raises
    InvalidArgument.

    Such an identity is a URI with a non-reserved scheme, ``cn:<common name>`` or ``local``;
    never ``anonymous`` (every caller without a certificate), ``kms:...`` (the service itself)
    or a group. This is the rule for KMS_BOOTSTRAP_ADMIN and for group members.
    """
    if identity == LOCAL:
        return identity
    if identity == ANONYMOUS:
        raise InvalidArgument("'anonymous' is every caller without a client certificate and cannot hold grants")
    if identity.startswith(CN_PREFIX):
        name_flaw = common_name_flaw(identity[len(CN_PREFIX) :])
        flaw = f"has a common name that {name_flaw}" if name_flaw else None
    else:
        flaw = uri_identity_flaw(identity)
    if flaw:
        raise InvalidArgument(f"{_IDENTITY_RULE}; {clipped(identity)} {flaw}")
    return identity


def validate_principal(principal: str) -> str:
    """Returns ``principal`` if a grant can name it, else raises InvalidArgument: an identity
    that can hold grants (validate_identity) or ``group:<name>``."""
    if principal.startswith(GROUP_PREFIX):
        validate_group(principal[len(GROUP_PREFIX) :])
        return principal
    try:
        return validate_identity(principal)
    except InvalidArgument as error:
        raise InvalidArgument(f"a principal is an identity or group:<name>; {error.message}") from None


def validate_group(group: str) -> str:
    if not _GROUP.fullmatch(group):
        raise InvalidArgument(_GROUP_RULE)
    return group


# --- resources -----------------------------------------------------------------------------

ALL_KEYS = "*"
PREFIX_SEPARATORS = ("-", "_")


def validate_resource(resource: str) -> str:
    """Returns ``resource`` if a grant can be made on it, else raises InvalidArgument.

    A resource is ``*``, a key id, or a separated prefix: key id characters ending in ``-`` or
    ``_``, then ``*`` (``tenant-acme-*``). ``tenant-acme*`` is refused: it would also cover
    ``tenant-acme2-...``, another tenant's keys.
    """
    if resource == ALL_KEYS:
        return resource
    if not resource.endswith("*"):
        return validate_key_id(resource)
    prefix = resource[:-1]
    try:
        validate_key_id(prefix)
    except InvalidArgument:
        raise InvalidArgument(f"resource prefix {clipped(prefix, 64)} must be characters allowed in key ids") from None
    if not prefix.endswith(PREFIX_SEPARATORS):
        raise InvalidArgument(_unseparated(prefix))
    return resource


def _unseparated(prefix: str) -> str:
    rule = "a prefix grant must end at a separator ('-' or '_')"
    if len(prefix) >= 64:
        return rule
    return (
        f"{rule}: {prefix + '*'!r} would also cover {prefix + '2'!r} and other longer key ids; "
        f"grant {prefix + '-*'!r} (or {prefix + '_*'!r}) instead"
    )


def _family(resource: str) -> str | None:
    """The prefix a grant on ``resource`` covers: "" for ``*``, the prefix of a separated prefix,
    None for anything else (a key id, or no valid resource at all)."""
    if resource == ALL_KEYS:
        return ""
    prefix = resource[:-1]
    if not (resource.endswith("*") and prefix.endswith(PREFIX_SEPARATORS)):
        return None
    try:
        return validate_key_id(prefix)
    except InvalidArgument:
        return None


def resource_covers(resource: str, key_id: str) -> bool:
    """Whether a grant on ``resource`` applies to ``key_id``.

    ``*`` covers every key id; a separated prefix covers exactly the key ids that start with it
    (separator included: ``tenant-acme-*`` covers ``tenant-acme-orders`` and ``tenant-acme-``,
    never ``tenant-acme`` or ``tenant-acme2-orders``); a key id covers itself. A resource of no
    valid form, such as an unseparated prefix stored before separators were required, covers
    nothing: such grants fail closed until they are replaced.
    """
    family = _family(resource)
    if family is not None:
        return key_id.startswith(family)
    return "*" not in resource and resource == key_id


def resource_includes(outer: str, inner: str) -> bool:
    """Whether every key id a grant on ``inner`` could cover is covered by ``outer``: who
    administers ``outer`` administers grants on ``inner``.

    For valid resources this is the subset relation of resource_covers, erring only toward
    False in one edge: a 64-character prefix covers just the key id equal to it, yet a grant on
    that key id does not include it. An ``inner`` of no valid form counts for every key id its
    text claims (so only an admin over all of them manages it); an ``outer`` of no valid form
    includes nothing, as it covers nothing.
    """
    family = _family(outer)
    if family is None:
        return "*" not in outer and outer == inner
    if inner == ALL_KEYS:
        return outer == ALL_KEYS
    return inner.removesuffix("*").startswith(family)


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
    revision: int  # the metadata ledger's position the rows were read at
    grants: tuple[Grant, ...]
    members: tuple[tuple[str, str], ...]  # (group, identity)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # When denied only because no matching grant's context constraints were met.
    context_mismatch: bool = False


def decide(grants: Iterable[Grant], permission: Permission, key_id: str, context: Mapping[str, str] | None) -> Decision:
    """Allowed if any grant allows; otherwise, whether some grant would have, but for its
    context constraints (so the denial can say so)."""
    constrained = False
    for grant in grants:
        if grant.allows(permission, key_id, context):
            return Decision(True)
        if grant.context and permission in grant.permissions and resource_covers(grant.resource, key_id):
            constrained = True
    return Decision(False, context_mismatch=constrained)
