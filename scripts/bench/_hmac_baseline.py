"""The raw HSM HMAC baseline: HMAC-SHA256 of each of 1000 messages on the bench server's own
token and HMAC key, with nothing of the KMS around it.

As _hsm_baseline.py, it runs in a process of its own, finds the token as the server does
(``softhsm.provision`` on the same data directory) and loads the module through
``Pkcs11Module`` (OS locking, as in the server). Each thread has its own session and looks its
key handle up before the clock starts. One measured call is one batch: C_SignInit and C_Sign
with CKM_SHA256_HMAC for each of the messages, either through python-pkcs11 (``key.sign``) or
through the same ctypes loop the server uses (``RawCalls.hmac_sha256_many``), so the two show
what the binding costs and the server's ratio is against the faster floor.

The key is the HSM_OBJECT version's token object, and, for the ctypes loop, also a session
object of the same kind (generated here: sensitive, never extractable, sign/verify only). The
server HMACs a WRAPPED version with a session object (the version key unwrapped into the holder
session), and SoftHSM reads a token object's file on every C_SignInit (two opens, six fcntl
locks per MAC), so a session object is the faster floor: WRAPPED is measured against it, not
against the slower token object.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _harness import Measurement, run_threads

TOKEN_OBJECT = ("raw HMAC python-pkcs11", "raw HMAC ctypes")
SESSION_OBJECT = "raw HMAC ctypes, session object"


def measure_hmac(
    data_dir: Path,
    object_id: str,
    messages: Sequence[bytes],
    thread_counts: Sequence[int],
    duration: float,
    warmup: float = 1.0,
) -> list[Measurement]:
    """For each thread count, three measurements, each call HMACing every one of ``messages``:
    ``raw HMAC python-pkcs11`` and ``raw HMAC ctypes`` under the token object whose CKA_ID is
    ``object_id`` (KeyVersion.hsm_object_id of an HSM_OBJECT PSEUDONYMIZE version), and
    ``raw HMAC ctypes, session object`` under a session object of the same kind."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(
            _measure_in_child, data_dir, object_id, tuple(messages), tuple(thread_counts), duration, warmup
        ).result()


def _measure_in_child(
    data_dir: Path,
    object_id: str,
    messages: tuple[bytes, ...],
    thread_counts: tuple[int, ...],
    duration: float,
    warmup: float,
) -> list[Measurement]:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    from kms.hsm import softhsm
    from kms.hsm.module import Pkcs11Module

    token_files = softhsm.provision(data_dir)
    module = Pkcs11Module.load(token_files.module_path)
    token = module.lib.get_token(token_label=token_files.token_label)
    sessions: list[pkcs11.Session] = []

    def through_python_pkcs11(session: pkcs11.Session) -> Callable[[], list[bytes]]:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, id=bytes.fromhex(object_id))
        return lambda: [key.sign(message, mechanism=Mechanism.SHA256_HMAC) for message in messages]

    def through_ctypes(session: pkcs11.Session) -> Callable[[], list[bytes]]:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, id=bytes.fromhex(object_id))
        handle, raw = session.handle, module.raw
        return lambda: raw.hmac_sha256_many(handle, key.handle, messages)

    results = []
    with token.open(user_pin=token_files.read_pin()) as login:
        # Like a WRAPPED version's unwrapped key: a session object of the logged-in application,
        # usable from each thread's own session.
        session_key = login.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            store=False,
            template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.DECRYPT: False,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            },
        )

        def through_ctypes_session_object(session: pkcs11.Session) -> Callable[[], list[bytes]]:
            handle, raw = session.handle, module.raw
            return lambda: raw.hmac_sha256_many(handle, session_key.handle, messages)

        for threads in thread_counts:
            while len(sessions) < threads:
                sessions.append(token.open())
            for name, make in (
                ("raw HMAC python-pkcs11", through_python_pkcs11),
                ("raw HMAC ctypes", through_ctypes),
                (SESSION_OBJECT, through_ctypes_session_object),
            ):
                operations = [make(session) for session in sessions[:threads]]
                results.append(run_threads(name, operations, duration, warmup))
    return results
