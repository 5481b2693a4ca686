"""The ledger anchor: a data object in the HSM holding the newest metadata ledger position the
service has vouched for.

A database rolled back as a whole (a restored backup, or a writer who copies an old state back)
is consistent with itself: its ledger chain and seal verify. What it cannot do is reach the
anchor's position, which lives where the database writer cannot reach: the service compares the
two at start and on every poll, and a ledger behind its anchor is refused (kms.service.integrity).

The anchor is a CKO_DATA token object, private (only a logged-in session sees it), labelled
"<prefix>:ledger-anchor", whose value is uint64 seq || 32-byte entry hash (big-endian). Tokens
may refuse to change a data object's value (SoftHSM answers CKR_ATTRIBUTE_READ_ONLY), so moving
the anchor creates a new object and then destroys the older ones; the anchor is the highest
position any of them holds, so a crash between the two steps loses nothing.

Several processes move the same anchor (replicas on one token, the workers of ``kms serve
--workers``), and this process's lock does not hold them back: an object listed here may be
destroyed by another before its value is read (the listing is then taken again: the object
that replaced it was created before it was destroyed), or before this process destroys it
(nothing left to do), and an object listed may hold a higher position than the one written
(another process moved further first), so moving the anchor destroys only objects at or below
its new position. Someone with the user PIN can change it, as they can use every key: the
anchor protects against database writers, not PIN holders.
"""

from __future__ import annotations

import contextlib
import struct
import threading

import pkcs11
import pkcs11.exceptions as p11
from pkcs11 import Attribute, ObjectClass

from kms.errors import LedgerTampered
from kms.hsm.pool import SessionPool

_VALUE = struct.Struct(">Q32s")
_LISTINGS = 5  # listings taken before giving up on reading objects other processes keep replacing


class Pkcs11Anchor:
    def __init__(self, pool: SessionPool, label_prefix: str = "kms") -> None:
        self._pool = pool
        self.label = f"{label_prefix}:ledger-anchor"
        self._lock = threading.Lock()

    def read(self) -> tuple[int, str]:
        """(seq, entry hash in hex) the anchor holds; (0, "") before the first advance."""
        with self._pool.objects.shared():
            found = self._pool.run(self._listed)
        return max((_decode(value) for _, value in found), default=(0, ""))

    def advance(self, seq: int, hash_hex: str) -> None:
        """Moves the anchor to ``seq`` unless it is already there or further."""
        with self._lock:
            current, _ = self.read()
            if seq > current:
                self._write(seq, hash_hex, replace_higher=False)

    def reset(self, seq: int, hash_hex: str) -> None:
        """Sets the anchor to ``seq`` whatever it held: an operator accepting a restored
        database (``kms db accept-restore``)."""
        with self._lock:
            self._write(seq, hash_hex, replace_higher=True)

    def _write(self, seq: int, hash_hex: str, *, replace_higher: bool) -> None:
        value = _VALUE.pack(seq, bytes.fromhex(hash_hex))

        def write(pooled) -> None:  # noqa: ANN001 - a PooledSession
            older = [found for found, held in self._listed(pooled) if replace_higher or _decode(held)[0] <= seq]
            try:
                pooled.session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.LABEL: self.label,
                        Attribute.APPLICATION: "kms",
                        Attribute.VALUE: value,
                    }
                )
            except p11.ObjectHandleInvalid:
                # Created, then destroyed by another process moving the anchor further before
                # python-pkcs11 read it back: nothing is lost if the anchor is at least here.
                if max((_decode(held)[0] for _, held in self._listed(pooled)), default=0) < seq:
                    raise
            for stale in older:
                with contextlib.suppress(p11.ObjectHandleInvalid):  # another process destroyed it first
                    stale.destroy()

        with self._pool.objects.exclusive():
            self._pool.run(write)

    def _listed(self, pooled) -> list[tuple[pkcs11.Object, bytes]]:  # noqa: ANN001 - a PooledSession
        """The anchor's objects and their values, as one listing saw them all."""
        for _ in range(_LISTINGS):
            try:
                return [(found, bytes(found[Attribute.VALUE])) for found in self._objects(pooled)]
            except p11.ObjectHandleInvalid:
                continue  # one was destroyed by another process moving the anchor: list again
        raise p11.ObjectHandleInvalid()

    def _objects(self, pooled) -> list[pkcs11.Object]:  # noqa: ANN001 - a PooledSession
        return list(pooled.session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: self.label}))


def _decode(value: bytes) -> tuple[int, str]:
    if len(value) != _VALUE.size:
        raise LedgerTampered("the HSM's ledger anchor holds a value of the wrong size")
    seq, hash_ = _VALUE.unpack(value)
    return seq, hash_.hex()
