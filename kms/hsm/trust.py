"""Whether a key object found in the HSM may be used: its attributes must prove how it was made.

A label or a CKA_ID is only a name, and anyone who ever held the user PIN could have created
objects under any name: imported with a value they know (C_CreateObject with CKA_VALUE),
generated extractable, or allowed to do more than we ask of it. Finding an object where our key
should be therefore proves nothing. Before a key object is used, its attributes are read and
compared with a table of what this service's own objects show (``_SOUND`` and ``_SOUND_HMAC``
in kms.hsm.master_keys, ``_SOUND`` in kms.hsm.audit_seal):

    CKA_LOCAL                    true: generated inside the token by C_GenerateKey; never
                                 imported, unwrapped or derived (no template can set it)
    CKA_ALWAYS_SENSITIVE         true, and CKA_NEVER_EXTRACTABLE true: its value was never
                                 readable, not even before a later C_SetAttributeValue
    CKA_SENSITIVE, CKA_EXTRACTABLE  true and false: and it is not readable now
    CKA_TOKEN, CKA_PRIVATE       true: a durable object, usable only after login (a public
                                 object is usable without the PIN)
    key type, CKA_VALUE_LEN, and each capability (encrypt, decrypt, sign, verify, wrap, unwrap,
    derive) exactly as the table says

An attribute the token does not report counts as not shown. An object that does not meet its
table is never used: the operation fails with an UNAVAILABLE-class error (MasterKeyUntrusted,
SealKeyUntrusted) and the service logs CRITICAL.

Cost. Attributes are read when a session first finds an object, and the verdict is remembered
per (CKA_ID, object handle) for the current connection to the module (``Verdicts``), so an
object is vetted once per process, not per call. The handle is part of the key because a CKA_ID
can be reused: an object destroyed and replaced under the same id (the attack above) has a new
handle and is vetted afresh. Verdicts are forgotten when the pool reconnects, because handle
numbers start again after the module is re-initialized. A token that hands out different
handles per session makes this once per session and object, still not per call; a token that
gave a destroyed object's handle number to a new object with the same CKA_ID would defeat the
sessions' handle cache (kms.hsm.pool) as much as this one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import pkcs11
import pkcs11.exceptions as p11
from pkcs11 import Attribute

from kms.hsm.pool import PooledSession, object_handle

Requirements = Mapping[Attribute, object]


def unmet(found: pkcs11.Object, requirements: Requirements) -> tuple[str, ...]:
    """The names of the attributes (e.g. "CKA_LOCAL") whose values on ``found`` are not the
    ones ``requirements`` asks for; empty when the object meets them all.

    Only the listed attributes are read (never CKA_VALUE). Connection faults propagate, so a
    lost session is never taken for an untrustworthy object.
    """
    try:
        values = found.get_attributes(list(requirements))
    except (p11.AttributeTypeInvalid, p11.AttributeSensitive):
        values = {}  # python-pkcs11 drops unreported attributes itself; this is for tokens that raise
    return tuple(
        f"CKA_{Attribute(attribute).name}"
        for attribute, expected in requirements.items()
        if values.get(attribute) != expected
    )


def unmet_any(found: pkcs11.Object, alternatives: Sequence[Requirements]) -> tuple[str, ...]:
    """Empty when ``found`` meets one of the ``alternatives`` (a kind of key some tokens make
    with either of two key types), else the problems of the alternative it comes closest to."""
    closest: tuple[str, ...] | None = None
    for requirements in alternatives:
        problems = unmet(found, requirements)
        if not problems:
            return ()
        if closest is None or len(problems) < len(closest):
            closest = problems
    return closest if closest is not None else ("no requirements given",)


class Verdicts:
    """What vetting found for each object, remembered for the current connection (see above)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._problems: dict[tuple[bytes, int], tuple[str, ...]] = {}

    def vet(
        self,
        pooled: PooledSession,
        object_id: bytes,
        found: pkcs11.Object,
        vet: Callable[[pkcs11.Object], tuple[str, ...]],
    ) -> tuple[tuple[str, ...], bool]:
        """(problems, first): the problems ``vet`` finds with ``found`` (empty when it may be
        used), and whether this is the first verdict on that object, for alarms raised once."""
        key = (object_id, object_handle(found))
        with self._lock:
            if pooled.generation == self._generation and key in self._problems:
                return self._problems[key], False
        problems = vet(found)
        with self._lock:
            if pooled.generation < self._generation:
                return problems, False  # a session from before a reconnection: its handle says nothing now
            if pooled.generation > self._generation:
                self._generation, self._problems = pooled.generation, {}
            first = key not in self._problems
            return self._problems.setdefault(key, problems), first


# Conditions to move into kms.errors (UNAVAILABLE: no call can be served with the key until an
# operator has looked; retrying is harmless).
