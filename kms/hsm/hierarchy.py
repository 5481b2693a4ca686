"""The key hierarchy: version keys that live outside the HSM, wrapped under a root key inside it.

An HSM holds thousands of objects, not millions; a multi-tenant service may need a key per
tenant, each with versions. So, in the manner of AWS KMS's backing keys, a version's key can be
*wrapped* instead of a token object:

- **Generating.** C_GenerateKey makes the version's key as a session object (sensitive,
  extractable only so that it can be wrapped), C_WrapKey wraps it under the active root key with
  CKM_AES_KEY_WRAP (RFC 3394, which also checks integrity on unwrap), and the session object is
  destroyed at once. The key's value never exists outside the HSM unwrapped; the wrapped blob is
  stored in the database with the version.
- **Binding.** The blob is bound to its key id and version by an HMAC computed in the HSM with
  the seal key, over ``"kms-material-v1" || text(key id) || uint32 version || text(root key id)
  || blob``, stored beside it and checked before every unwrap: a database writer who swaps two
  versions' blobs is refused (and the metadata ledger covers the same rows).
- **Using.** C_UnwrapKey under the root makes a session object that is sensitive, not
  extractable, and able only to do what the version does (encrypt/decrypt, or sign/verify for
  HMAC keys), held in a process-wide LRU of handles (kms.hsm.handles) by one dedicated session.
- **Roots.** Root keys are token objects labelled "<prefix>:root", generated in the HSM, AES-256,
  never extractable, able only to wrap and unwrap. Every root is vetted like any key this service
  trusts (kms.hsm.trust); the newest sound one wraps new versions, older ones keep unwrapping
  the versions they wrapped until ``kms hsm rotate-root`` has re-wrapped them all
  (kms.service.roots) and the old root is retired.

Why not CKA_WRAP_WITH_TRUSTED: it needs the root marked CKA_TRUSTED by the security officer,
which many deployments cannot do from the service. The exposure it would close is narrow here:
a version's key is extractable only while it is a session object of the service's own session,
between C_GenerateKey and C_DestroyObject, and no other application sees session objects.
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
import time
from collections.abc import Callable
from datetime import datetime

import pkcs11
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from kms.domain.keys import WrappedMaterial
from kms.errors import KeyMaterialCorrupt, RootKeyUntrusted
from kms.hsm import raw
from kms.hsm.object_ids import new_object_id, object_id_time
from kms.hsm.pool import PooledSession, SessionPool, object_handle
from kms.hsm.quirks import quirks_for
from kms.hsm.trust import unmet

log = logging.getLogger(__name__)

# How long a process trusts its list of root keys before searching the token again: the bound
# on how late a server starts wrapping new versions under a root another process created.
ROOT_REFRESH = 30.0

AES = "aes"
HMAC = "hmac"

_ROOT_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.WRAP: True,
    Attribute.UNWRAP: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
    Attribute.MODIFIABLE: False,
    Attribute.COPYABLE: False,
}

_ROOT_SOUND = {
    Attribute.KEY_TYPE: KeyType.AES,
    Attribute.VALUE_LEN: 32,
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.LOCAL: True,
    Attribute.SENSITIVE: True,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.WRAP: True,
    Attribute.UNWRAP: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}

# What each kind of version key may do once unwrapped for use.
_USE = {
    AES: {
        raw.CKA_KEY_TYPE: raw.CKK_AES,
        raw.CKA_ENCRYPT: True,
        raw.CKA_DECRYPT: True,
        raw.CKA_SIGN: False,
        raw.CKA_VERIFY: False,
    },
    HMAC: {
        raw.CKA_KEY_TYPE: raw.CKK_GENERIC_SECRET,
        raw.CKA_ENCRYPT: False,
        raw.CKA_DECRYPT: False,
        raw.CKA_SIGN: True,
        raw.CKA_VERIFY: True,
    },
}
_GENERATE = {AES: raw.CKM_AES_KEY_GEN, HMAC: raw.CKM_GENERIC_SECRET_KEY_GEN}

Material = WrappedMaterial


def binding_message(key_id: str, version: int, root_key_id: str, blob: bytes) -> bytes:
    def text(value: str) -> bytes:
        encoded = value.encode()
        return struct.pack(">I", len(encoded)) + encoded

    return b"kms-material-v1" + text(key_id) + struct.pack(">I", version) + text(root_key_id) + blob


def new_material_id() -> str:
    """The id a wrapped version is known by (its master_key_id): 16 random bytes, hex."""
    return secrets.token_hex(16)


class KeyHierarchy:
    def __init__(
        self,
        pool: SessionPool,
        clock_now: Callable[[], datetime],
        label_prefix: str,
        mac: Callable[[bytes], str],
        check_mac: Callable[[bytes, str], bool],
        creation_lock: Callable[[], object],
        *,
        root_refresh: float = ROOT_REFRESH,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._now = clock_now
        self.root_label = f"{label_prefix}:root"
        self._mac = mac
        self._check_mac = check_mac
        self._creation_lock = creation_lock
        self._lock = threading.Lock()
        # root CKA_ID (hex) -> handle, for the pool generation they were found in
        self._roots: dict[str, int] = {}
        self._roots_generation = -1
        # Another process (kms hsm rotate-root, another replica) may add a root: the list is
        # searched again this often, and at once when a stored version names a root not in it.
        self._root_refresh = root_refresh
        self._monotonic = monotonic
        self._roots_found = 0.0

    # -- roots -----------------------------------------------------------------------------

    def active_root(self) -> str:
        """The CKA_ID (hex) of the root that wraps new versions: the newest sound root,
        created on first use."""
        roots = self.roots()
        if not roots:
            with self._creation_lock():  # type: ignore[attr-defined]
                self._forget_roots()
                roots = self.roots()
                if not roots:
                    self._create_root()
                    self._forget_roots()
                    roots = self.roots()
        return max(roots, key=lambda root_id: object_id_time(bytes.fromhex(root_id)))

    def roots(self) -> list[str]:
        """Every sound root (CKA_ID hex). A root object whose attributes do not prove it was
        generated here as a wrap-only, never-extractable key is reported and never used."""
        return list(self._root_handles())

    def create_root(self) -> str:
        """A new root, which becomes the active one (root rotation's first step)."""
        with self._creation_lock():  # type: ignore[attr-defined]
            object_id = self._create_root()
        self._forget_roots()
        return object_id

    def destroy_root(self, root_key_id: str) -> None:
        object_id = bytes.fromhex(root_key_id)

        def destroy(pooled: PooledSession) -> None:
            for found in pooled.objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: object_id, Attribute.LABEL: self.root_label}
            ):
                found.destroy()

        with self._pool.objects.exclusive():
            self._pool.run(destroy)
        self._forget_roots()

    # -- version keys ------------------------------------------------------------------------

    def generate(self, kind: str = AES) -> Material:
        """A new version key of ``kind``, generated in the HSM and returned only wrapped."""
        root_id = self.active_root()
        root = self._root_handles()[root_id]
        attributes = {
            raw.CKA_CLASS: raw.CKO_SECRET_KEY,
            raw.CKA_TOKEN: False,
            raw.CKA_PRIVATE: True,
            raw.CKA_SENSITIVE: True,
            raw.CKA_EXTRACTABLE: True,
            raw.CKA_VALUE_LEN: 32,
            **_USE[kind],
        }

        def generate_and_wrap(pooled: PooledSession) -> bytes:
            calls = pooled.raw
            handle = calls.generate_secret(pooled.handle, _GENERATE[kind], attributes)
            try:
                return calls.wrap(pooled.handle, root, handle)
            finally:
                calls.destroy(pooled.handle, handle)

        with self._pool.objects.exclusive():  # see SessionPool.objects
            blob = self._pool.run(generate_and_wrap)
        return Material(blob, root_id)

    def bind(self, key_id: str, version: int, material: Material) -> str:
        """The binding MAC of ``material`` to ``key_id`` version ``version`` (hex)."""
        return self._mac(binding_message(key_id, version, material.root_key_id, material.blob))

    def unwrap(
        self, key_id: str, version: int, material: Material, mac: str, kind: str = AES
    ) -> tuple[int, Callable[[int], None]]:
        """A usable handle of the version's key (a session object of the holder session), and how
        to destroy it. Raises KeyMaterialCorrupt when the binding or the blob does not verify."""
        if not self._check_mac(binding_message(key_id, version, material.root_key_id, material.blob), mac):
            raise KeyMaterialCorrupt(key_id, version, "its wrapped key is not bound to this key and version")
        root = self._root_handle(material.root_key_id)
        if root is None:
            raise KeyMaterialCorrupt(key_id, version, f"its root key {material.root_key_id} is not in the HSM")
        attributes = {
            raw.CKA_CLASS: raw.CKO_SECRET_KEY,
            raw.CKA_TOKEN: False,
            raw.CKA_PRIVATE: True,
            raw.CKA_SENSITIVE: True,
            raw.CKA_EXTRACTABLE: False,
            raw.CKA_WRAP: False,
            raw.CKA_UNWRAP: False,
            raw.CKA_DERIVE: False,
            **_USE[kind],
        }

        def unwrap(pooled: PooledSession) -> int:
            try:
                return pooled.raw.unwrap(pooled.handle, root, material.blob, attributes)
            except pkcs11.PKCS11Error as error:
                if isinstance(error, quirks_for(self._pool.module.lib.manufacturer_id).unwrap_failures):
                    raise KeyMaterialCorrupt(key_id, version, "its wrapped key does not unwrap") from None
                raise

        with self._pool.objects.exclusive():
            handle = self._pool.run_holder(unwrap)
        return handle, self._destroyer()

    def rewrap_material(
        self, key_id: str, version: int, material: Material, mac: str, kind: str, to_root: str
    ) -> Material:
        """The same version key wrapped under ``to_root`` (root rotation). The key is unwrapped
        as an extractable session object of this call only, wrapped again, and destroyed."""
        if not self._check_mac(binding_message(key_id, version, material.root_key_id, material.blob), mac):
            raise KeyMaterialCorrupt(key_id, version, "its wrapped key is not bound to this key and version")
        source, destination = self._root_handle(material.root_key_id), self._root_handle(to_root)
        if source is None or destination is None:
            raise KeyMaterialCorrupt(key_id, version, "a root key is not in the HSM")
        attributes = {
            raw.CKA_CLASS: raw.CKO_SECRET_KEY,
            raw.CKA_TOKEN: False,
            raw.CKA_PRIVATE: True,
            raw.CKA_SENSITIVE: True,
            raw.CKA_EXTRACTABLE: True,
            **_USE[kind],
        }

        def move(pooled: PooledSession) -> bytes:
            calls = pooled.raw
            handle = calls.unwrap(pooled.handle, source, material.blob, attributes)
            try:
                return calls.wrap(pooled.handle, destination, handle)
            finally:
                calls.destroy(pooled.handle, handle)

        with self._pool.objects.exclusive():
            blob = self._pool.run(move)
        return Material(blob, to_root)

    # -- internals ---------------------------------------------------------------------------

    def _destroyer(self) -> Callable[[int], None]:
        def destroy(handle: int) -> None:
            with self._pool.objects.exclusive():
                self._pool.run_holder(lambda pooled: pooled.raw.destroy(pooled.handle, handle))

        return destroy

    def _root_handles(self) -> dict[str, int]:
        generation = self._pool.generation
        with self._lock:
            fresh = self._monotonic() - self._roots_found < self._root_refresh
            if self._roots_generation == generation and self._roots and fresh:
                return dict(self._roots)

        def search(pooled: PooledSession) -> tuple[dict[str, int], int]:
            sound: dict[str, int] = {}
            unsound = 0
            for found in pooled.session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self.root_label}
            ):
                object_id = bytes(found[Attribute.ID]).hex()
                problems = unmet(found, _ROOT_SOUND)
                if problems:
                    unsound += 1
                    log.critical(
                        "root key object not trusted; it is not used",
                        extra={"fields": {"root_key_id": object_id, "unmet": list(problems)}},
                    )
                    continue
                sound[object_id] = object_handle(found)
            return sound, unsound

        with self._pool.objects.shared():
            roots, unsound = self._pool.run(search)
        if not roots and unsound:
            raise RootKeyUntrusted(self.root_label)  # never create another over them
        with self._lock:
            self._roots, self._roots_generation = roots, generation
            self._roots_found = self._monotonic()
        return dict(roots)

    def _root_handle(self, root_key_id: str) -> int | None:
        handle = self._root_handles().get(root_key_id)
        if handle is None:
            self._forget_roots()  # made since the last search, by another process?
            handle = self._root_handles().get(root_key_id)
        return handle

    def _forget_roots(self) -> None:
        with self._lock:
            self._roots, self._roots_generation = {}, -1

    def _create_root(self) -> str:
        object_id = new_object_id(self._now())
        with self._pool.objects.exclusive():
            self._pool.run(
                lambda pooled: pooled.session.generate_key(
                    KeyType.AES,
                    256,
                    id=object_id,
                    label=self.root_label,
                    store=True,
                    capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
                    template=_ROOT_TEMPLATE,
                )
            )
        log.info("root key created", extra={"fields": {"root_key_id": object_id.hex()}})
        return object_id.hex()
