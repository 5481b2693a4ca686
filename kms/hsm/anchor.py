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
position any of them holds, so a crash between the two steps loses nothing. Someone with the
user PIN can change it, as they can use every key: the anchor protects against database
writers, not PIN holders.
"""

from __future__ import annotations

import struct
import threading

import pkcs11
from pkcs11 import Attribute, ObjectClass

from kms.errors import LedgerTampered
from kms.hsm.pool import SessionPool

_VALUE = struct.Struct(">Q32s")


class Pkcs11Anchor:
    def __init__(self, pool: SessionPool, label_prefix: str = "kms") -> None:
        self._pool = pool
        self.label = f"{label_prefix}:ledger-anchor"
        self._lock = threading.Lock()

    def read(self) -> tuple[int, str]:
        """(seq, entry hash in hex) the anchor holds; (0, "") before the first advance."""
        with self._pool.objects.shared():
            found = self._pool.run(lambda pooled: [bytes(o[Attribute.VALUE]) for o in self._objects(pooled)])
        return max((_decode(value) for value in found), default=(0, ""))

    def advance(self, seq: int, hash_hex: str) -> None:
        """Moves the anchor to ``seq`` unless it is already there or further."""
        with self._lock:
            current, _ = self.read()
            if seq > current:
                self._write(seq, hash_hex)

    def reset(self, seq: int, hash_hex: str) -> None:
        """Sets the anchor to ``seq`` whatever it held: an operator accepting a restored
        database (``kms db accept-restore``)."""
        with self._lock:
            self._write(seq, hash_hex)

    def _write(self, seq: int, hash_hex: str) -> None:
        value = _VALUE.pack(seq, bytes.fromhex(hash_hex))

        def write(pooled) -> None:  # noqa: ANN001 - a PooledSession
            older = self._objects(pooled)
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
            for stale in older:
                stale.destroy()

        with self._pool.objects.exclusive():
            self._pool.run(write)

    def _objects(self, pooled) -> list[pkcs11.Object]:  # noqa: ANN001 - a PooledSession
        return list(pooled.session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: self.label}))


def _decode(value: bytes) -> tuple[int, str]:
    if len(value) != _VALUE.size:
        raise LedgerTampered("the HSM's ledger anchor holds a value of the wrong size")
    seq, hash_ = _VALUE.unpack(value)
    return seq, hash_.hex()
