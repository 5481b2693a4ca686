"""The raw HSM baseline: AES-GCM C_Encrypt through python-pkcs11, with nothing of the KMS around
it, on the bench server's own token and master key.

It runs in a process of its own (SoftHSM reads its configuration once per process, and the
bench's parent process must not hold the GIL for it). There the token is found exactly as the
server finds it (``softhsm.provision`` on the same data directory) and the module is loaded
through ``Pkcs11Module``, so SoftHSM runs with OS locking as in the server. Each thread has its
own session and looks its key handle up before the clock starts; a call is a fresh 96-bit IV
and one C_Encrypt of a 32-byte data key with the given associated data: what one wrap costs the
service inside the HSM adapter.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _harness import Measurement, run_threads

DATA_KEY = bytes(32)
GCM_TAG_BITS = 128
# unwrap_from for a source key generated as a session object, as a WRAPPED version's key is.
SESSION_KEY = ""


def measure_wrap(
    data_dir: Path,
    object_id: str | None,
    associated_data: bytes,
    thread_counts: Sequence[int],
    duration: float,
    warmup: float = 1.0,
    *,
    unwrap_from: str | None = None,
) -> list[Measurement]:
    """One measurement per thread count, named ``raw HSM wrap``. ``object_id`` is the master
    key's CKA_ID in hexadecimal (KeyVersion.hsm_object_id); None wraps with an AES-256 session
    key generated in the child, as a WRAPPED version's key is a session object in the server.
    With ``unwrap_from`` (another
    master key's CKA_ID, or SESSION_KEY for another generated session key), each call first
    unwraps a data key under that key, then wraps it under ``object_id``: a re-wrap as the HSM
    sees it, named ``raw HSM unwrap+wrap``."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(
            _measure_in_child,
            data_dir,
            object_id,
            associated_data,
            tuple(thread_counts),
            duration,
            warmup,
            unwrap_from,
        ).result()


def _measure_in_child(
    data_dir: Path,
    object_id: str | None,
    associated_data: bytes,
    thread_counts: tuple[int, ...],
    duration: float,
    warmup: float,
    unwrap_from: str | None,
) -> list[Measurement]:
    import pkcs11
    from pkcs11 import KeyType, Mechanism, ObjectClass
    from pkcs11.mechanisms import GCMParams

    from kms.hsm import softhsm
    from kms.hsm.module import Pkcs11Module

    token_files = softhsm.provision(data_dir)
    token = Pkcs11Module.load(token_files.module_path).lib.get_token(token_label=token_files.token_label)
    sessions: list[pkcs11.Session] = []

    def wrapper(session: pkcs11.Session) -> Callable[[], bytes]:
        if object_id is None:
            key = session.generate_key(KeyType.AES, 256, store=False)
        else:
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, id=bytes.fromhex(object_id))

        def wrap() -> bytes:
            parameters = GCMParams(os.urandom(12), associated_data, GCM_TAG_BITS)
            return key.encrypt(DATA_KEY, mechanism=Mechanism.AES_GCM, mechanism_param=parameters)

        if unwrap_from is None:
            return wrap
        if unwrap_from == SESSION_KEY:
            source = session.generate_key(KeyType.AES, 256, store=False)
        else:
            source = session.get_key(object_class=ObjectClass.SECRET_KEY, id=bytes.fromhex(unwrap_from))
        iv = os.urandom(12)
        sealed = source.encrypt(DATA_KEY, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, associated_data))

        def unwrap_and_wrap() -> bytes:
            data_key = source.decrypt(
                sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, associated_data)
            )
            parameters = GCMParams(os.urandom(12), associated_data, GCM_TAG_BITS)
            return key.encrypt(data_key, mechanism=Mechanism.AES_GCM, mechanism_param=parameters)

        return unwrap_and_wrap

    results = []
    # The login belongs to the process and the other sessions share it; it lasts as long as the
    # session that made it.
    with token.open(user_pin=token_files.read_pin()):
        for threads in thread_counts:
            while len(sessions) < threads:
                sessions.append(token.open())
            operations = [wrapper(session) for session in sessions[:threads]]
            name = "raw HSM wrap" if unwrap_from is None else "raw HSM unwrap+wrap"
            results.append(run_threads(name, operations, duration, warmup))
    return results
