"""The audit log's seal: HMAC-SHA256 with a key that is generated in the HSM and never leaves it.

The key is a CKK_GENERIC_SECRET of 256 bits labelled "<prefix>:audit-seal", sensitive, never
extractable, able only to sign and verify (CKM_SHA256_HMAC). Replicas starting together may
each create one; all of them are kept, sealing uses the oldest, and a seal is accepted if any of
them verifies it, so the choice never breaks verification.
"""

from __future__ import annotations

import threading

import pkcs11
import pkcs11.exceptions as p11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from kms.hsm.master_keys import new_object_id, object_id_time
from kms.hsm.pool import PooledSession, SessionPool
from kms.ports import Clock

_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
    Attribute.MODIFIABLE: False,
    Attribute.COPYABLE: False,
}


_DERIVE_PREFIX = b"kms-derive-v1\x00"


class Pkcs11AuditSealer:
    def __init__(self, pool: SessionPool, clock: Clock, label_prefix: str = "kms") -> None:
        self._pool = pool
        self._clock = clock
        self.label = f"{label_prefix}:audit-seal"
        self._key_ids: list[bytes] = []
        self._lock = threading.Lock()

    def seal(self, message: bytes) -> str:
        """HMAC-SHA256 of ``message`` under the oldest seal key, in hex."""
        key_id = self._keys()[0]
        return self._pool.run(lambda pooled: _key(pooled, key_id).sign(message, mechanism=Mechanism.SHA256_HMAC).hex())

    def derive(self, purpose: bytes) -> bytes:
        # Its own prefix, so that no derived value is ever the MAC of a sealed message.
        message = _DERIVE_PREFIX + purpose
        key_id = self._keys()[0]
        return self._pool.run(lambda pooled: bytes(_key(pooled, key_id).sign(message, mechanism=Mechanism.SHA256_HMAC)))

    def check(self, message: bytes, mac_hex: str) -> bool:
        try:
            mac = bytes.fromhex(mac_hex)
        except ValueError:
            return False
        for key_id in self._keys():
            def verify(pooled: PooledSession, key_id: bytes = key_id) -> bool:
                # python-pkcs11 answers a bad MAC with False (it catches CKR_SIGNATURE_INVALID).
                try:
                    return bool(_key(pooled, key_id).verify(message, mac, mechanism=Mechanism.SHA256_HMAC))
                except p11.SignatureLenRange:
                    return False
            if self._pool.run(verify):
                return True
        return False

    def _keys(self) -> list[bytes]:
        if self._key_ids:
            return self._key_ids
        with self._lock:
            if not self._key_ids:
                found = self._find()
                if not found:
                    with self._pool.objects.exclusive():
                        self._create()
                    found = self._find()
                self._key_ids = sorted(found, key=object_id_time)
        return self._key_ids

    def _find(self) -> list[bytes]:
        query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self.label}
        with self._pool.objects.shared():
            return self._pool.run(lambda pooled: [bytes(o[Attribute.ID]) for o in pooled.session.get_objects(query)])

    def _create(self) -> None:
        object_id = new_object_id(self._clock.now())
        self._pool.run(
            lambda pooled: pooled.session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                id=object_id,
                label=self.label,
                store=True,
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                template=_TEMPLATE,
            )
        )


def _key(pooled: PooledSession, key_id: bytes) -> pkcs11.SecretKey:
    key = pooled.key(key_id)
    if key is None:
        raise p11.NoSuchKey()
    return key
