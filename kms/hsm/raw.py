"""The PKCS#11 calls made with a key handle found once per process, through the module's own
function list.

PKCS#11 makes an object handle valid in every session of the application that can see the
object (v2.40, section 2.7: handles are per application, not per session), so a key looked up
once serves every pooled session. python-pkcs11 cannot express that: each of its key objects is
bound to the session it was found on, and it offers no way to use a handle from another session,
so with N pooled sessions each key would be searched N times (C_FindObjects, linear in the
objects on a SoftHSM token). These calls take the session and key handles explicitly. Each is
one foreign call through ctypes, which releases the GIL while the HSM works.

Only what the hot path and the key hierarchy need is here: GCM encrypt and decrypt, HMAC sign
and verify, key generation, wrap, unwrap and destroy. Sessions, login, search and attributes
stay with python-pkcs11. Errors are raised as python-pkcs11's exception classes, so that the
session pool classifies them as it classifies python-pkcs11's own (kms.hsm.faults).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence

import pkcs11.exceptions as p11

CK_ULONG = ctypes.c_ulong
CK_BYTE_P = ctypes.POINTER(ctypes.c_ubyte)

# Positions in CK_FUNCTION_LIST (PKCS#11 v2.40, pkcs11f.h), after the CK_VERSION header.
C_DESTROY_OBJECT = 22
C_ENCRYPT_INIT, C_ENCRYPT = 29, 30
C_DECRYPT_INIT, C_DECRYPT = 33, 34
C_SIGN_INIT, C_SIGN = 42, 43
C_VERIFY_INIT, C_VERIFY = 48, 49
C_GENERATE_KEY = 58
C_WRAP_KEY, C_UNWRAP_KEY = 60, 61
FUNCTION_COUNT = 68

CKM_AES_KEY_GEN = 0x1080
CKM_AES_GCM = 0x1087
CKM_AES_KEY_WRAP = 0x2109  # RFC 3394
CKM_SHA256_HMAC = 0x0251
CKM_GENERIC_SECRET_KEY_GEN = 0x0350

CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL = 0x000, 0x001, 0x002, 0x003
CKA_KEY_TYPE, CKA_ID, CKA_SENSITIVE = 0x100, 0x102, 0x103
CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_VERIFY, CKA_DERIVE = (
    0x104,
    0x105,
    0x106,
    0x107,
    0x108,
    0x10A,
    0x10C,
)
CKA_VALUE_LEN, CKA_EXTRACTABLE, CKA_MODIFIABLE, CKA_COPYABLE = 0x161, 0x162, 0x170, 0x171
CKA_WRAP_WITH_TRUSTED = 0x210
CKO_SECRET_KEY = 4
CKK_GENERIC_SECRET, CKK_AES = 0x10, 0x1F

_TAG_BITS = 128
# The largest input of the batch GCM loops: a wrapped key's sealed part is bounded well below it
# (kms.service.data_keys.MAX_WRAPPED_KEY_BYTES); a longer one is refused before the HSM.
MAX_GCM_INPUT = 1024

# The CKR values (pkcs11t.h) the session pool and the GCM quirks care about, as python-pkcs11's
# classes; any other is a plain PKCS11Error naming its code.
_ERRORS: Mapping[int, type[p11.PKCS11Error]] = {
    0x005: p11.GeneralError,
    0x006: p11.FunctionFailed,
    0x007: p11.ArgumentsBad,
    0x030: p11.DeviceError,
    0x031: p11.DeviceMemory,
    0x032: p11.DeviceRemoved,
    0x040: p11.EncryptedDataInvalid,
    0x041: p11.EncryptedDataLenRange,
    0x060: p11.KeyHandleInvalid,
    0x06A: p11.KeyUnextractable,
    0x070: p11.MechanismInvalid,
    0x071: p11.MechanismParamInvalid,
    0x082: p11.ObjectHandleInvalid,
    0x0B0: p11.SessionClosed,
    0x0B1: p11.SessionCount,
    0x0B3: p11.SessionHandleInvalid,
    0x0C0: p11.SignatureInvalid,
    0x0C1: p11.SignatureLenRange,
    0x0D0: p11.TemplateIncomplete,
    0x0D1: p11.TemplateInconsistent,
    0x0E0: p11.TokenNotPresent,
    0x0E1: p11.TokenNotRecognised,
    0x101: p11.UserNotLoggedIn,
    0x110: p11.WrappedKeyInvalid,
    0x112: p11.WrappedKeyLenRange,
    0x113: p11.WrappingKeyHandleInvalid,
    0x120: p11.UnwrappingKeyHandleInvalid,
    0x190: p11.PKCS11Error,  # CKR_CRYPTOKI_NOT_INITIALIZED: faults.classify knows it by message
    0x200: p11.FunctionRejected,
}


class Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", CK_ULONG)]


class GcmParams(ctypes.Structure):
    """CK_GCM_PARAMS as PKCS#11 v2.40 defines it (with ulIvBits)."""

    _fields_ = [
        ("pIv", CK_BYTE_P),
        ("ulIvLen", CK_ULONG),
        ("ulIvBits", CK_ULONG),
        ("pAAD", CK_BYTE_P),
        ("ulAADLen", CK_ULONG),
        ("ulTagBits", CK_ULONG),
    ]


class GcmParamsBytes(ctypes.Structure):
    """CK_GCM_PARAMS laid out as GcmParams, with char pointers: a bytes object assigned to pIv
    or pAAD is passed as it is, without a copy (the batch loops reuse one structure)."""

    _fields_ = [
        ("pIv", ctypes.c_char_p),
        ("ulIvLen", CK_ULONG),
        ("ulIvBits", CK_ULONG),
        ("pAAD", ctypes.c_char_p),
        ("ulAADLen", CK_ULONG),
        ("ulTagBits", CK_ULONG),
    ]


class Attribute(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", CK_ULONG)]


_INIT = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.POINTER(Mechanism), CK_ULONG)
_ONE_SHOT = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, CK_BYTE_P, CK_ULONG, CK_BYTE_P, ctypes.POINTER(CK_ULONG))
# C_Sign with the data as a char pointer: bytes objects are passed without a copy.
_SIGN_BYTES = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG, CK_BYTE_P, ctypes.POINTER(CK_ULONG))
# C_Encrypt and C_Decrypt with input and output as char pointers: the input a bytes object or a
# buffer made once per batch, passed without a copy, the output a buffer made once per batch.
_ONE_SHOT_BYTES = ctypes.CFUNCTYPE(
    CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p, ctypes.POINTER(CK_ULONG)
)
_VERIFY = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, CK_BYTE_P, CK_ULONG, CK_BYTE_P, CK_ULONG)
_DESTROY = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, CK_ULONG)
_GENERATE = ctypes.CFUNCTYPE(
    CK_ULONG, CK_ULONG, ctypes.POINTER(Mechanism), ctypes.POINTER(Attribute), CK_ULONG, ctypes.POINTER(CK_ULONG)
)
_WRAP = ctypes.CFUNCTYPE(
    CK_ULONG, CK_ULONG, ctypes.POINTER(Mechanism), CK_ULONG, CK_ULONG, CK_BYTE_P, ctypes.POINTER(CK_ULONG)
)
_UNWRAP = ctypes.CFUNCTYPE(
    CK_ULONG,
    CK_ULONG,
    ctypes.POINTER(Mechanism),
    CK_ULONG,
    CK_BYTE_P,
    CK_ULONG,
    ctypes.POINTER(Attribute),
    CK_ULONG,
    ctypes.POINTER(CK_ULONG),
)


def _error_of(rv: int) -> type[p11.PKCS11Error]:
    return _ERRORS.get(rv, p11.PKCS11Error)


def check(rv: int) -> None:
    if rv:
        error = _ERRORS.get(rv, p11.PKCS11Error)
        if error is p11.PKCS11Error:
            raise p11.PKCS11Error("not initialized" if rv == 0x190 else f"CKR 0x{rv:x}")
        raise error()


def _bytes(data: bytes) -> tuple[ctypes.Array[ctypes.c_ubyte], int]:
    buffer = (ctypes.c_ubyte * max(1, len(data))).from_buffer_copy(data or b"\0")
    return buffer, len(data)


def _out(length: int) -> ctypes.Array[ctypes.c_ubyte]:
    return (ctypes.c_ubyte * max(1, length))()


def template(values: Mapping[int, bool | int | bytes]) -> tuple[ctypes.Array[Attribute], list[object]]:
    """A CK_ATTRIBUTE array for ``values`` (booleans as CK_BBOOL, ints as CK_ULONG, bytes as
    they are), and the buffers it points into, which the caller keeps alive for the call."""
    keep: list[object] = []
    attributes = (Attribute * len(values))()
    for index, (kind, value) in enumerate(values.items()):
        if isinstance(value, bool):
            buffer: ctypes._CData = ctypes.c_ubyte(1 if value else 0)
            size = 1
        elif isinstance(value, int):
            buffer = CK_ULONG(value)
            size = ctypes.sizeof(CK_ULONG)
        else:
            buffer = (ctypes.c_ubyte * max(1, len(value))).from_buffer_copy(value or b"\0")
            size = len(value)
        keep.append(buffer)
        attributes[index] = Attribute(kind, ctypes.cast(ctypes.pointer(buffer), ctypes.c_void_p), size)
    return attributes, keep


def _entry(functions: ctypes.Array[ctypes.c_void_p], index: int) -> int:
    address = functions[index]
    if not address:  # a module that leaves out a function this package calls cannot serve
        raise p11.FunctionNotSupported()
    return address


class RawCalls:
    """The functions of one loaded module (its CK_FUNCTION_LIST), called with explicit handles."""

    def __init__(self, functions: ctypes.Array[ctypes.c_void_p]) -> None:
        self._encrypt_init = _INIT(_entry(functions, C_ENCRYPT_INIT))
        self._encrypt = _ONE_SHOT(_entry(functions, C_ENCRYPT))
        self._decrypt_init = _INIT(_entry(functions, C_DECRYPT_INIT))
        self._decrypt = _ONE_SHOT(_entry(functions, C_DECRYPT))
        self._sign_init = _INIT(_entry(functions, C_SIGN_INIT))
        self._sign = _ONE_SHOT(_entry(functions, C_SIGN))
        self._sign_bytes = _SIGN_BYTES(_entry(functions, C_SIGN))
        self._encrypt_bytes = _ONE_SHOT_BYTES(_entry(functions, C_ENCRYPT))
        self._decrypt_bytes = _ONE_SHOT_BYTES(_entry(functions, C_DECRYPT))
        self._verify_init = _INIT(_entry(functions, C_VERIFY_INIT))
        self._verify = _VERIFY(_entry(functions, C_VERIFY))
        self._destroy = _DESTROY(_entry(functions, C_DESTROY_OBJECT))
        self._generate = _GENERATE(_entry(functions, C_GENERATE_KEY))
        self._wrap = _WRAP(_entry(functions, C_WRAP_KEY))
        self._unwrap = _UNWRAP(_entry(functions, C_UNWRAP_KEY))

    def gcm_encrypt(self, session: int, key: int, iv: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
        """AES-GCM with a 128-bit tag: ciphertext followed by the tag."""
        mechanism, _keep = _gcm(iv, associated_data)
        check(self._encrypt_init(session, ctypes.byref(mechanism), key))
        data, size = _bytes(plaintext)
        out = _out(size + _TAG_BITS // 8)
        length = CK_ULONG(len(out))
        check(self._encrypt(session, data, size, out, ctypes.byref(length)))
        return bytes(out[: length.value])

    def gcm_decrypt(self, session: int, key: int, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        """Opens ciphertext-and-tag; a failed tag check raises what the token says (see quirks)."""
        mechanism, _keep = _gcm(iv, associated_data)
        check(self._decrypt_init(session, ctypes.byref(mechanism), key))
        data, size = _bytes(sealed)
        out = _out(size)
        length = CK_ULONG(len(out))
        check(self._decrypt(session, data, size, out, ctypes.byref(length)))
        return bytes(out[: length.value])

    def gcm_rewrap_many(
        self,
        session: int,
        source: int,
        destination: int,
        items: Sequence[tuple[bytes, bytes, bytes, bytes, bytes]],
        auth_failures: tuple[type[p11.PKCS11Error], ...],
    ) -> list[bytes | None]:
        """For each (iv, sealed, associated data, new iv, new associated data): opens ``sealed``
        under ``source`` and seals what it holds under ``destination``; the result is the new
        ciphertext-and-tag, or None where the tag did not verify (an error in ``auth_failures``).

        The loop a re-wrap batch costs, with nothing per item but the four PKCS#11 calls: the
        mechanisms and buffers are made once. The opened data key stays in a C buffer of this
        call, never a Python object, and the buffer is zeroed before returning."""
        opening, opening_ref = _gcm_template()
        sealing, sealing_ref = _gcm_template()
        clear = ctypes.create_string_buffer(MAX_GCM_INPUT)
        out = ctypes.create_string_buffer(MAX_GCM_INPUT + _TAG_BITS // 8)
        length = CK_ULONG()
        length_ref = ctypes.byref(length)
        decrypt_init, decrypt = self._decrypt_init, self._decrypt_bytes
        encrypt_init, encrypt = self._encrypt_init, self._encrypt_bytes
        results: list[bytes | None] = []
        try:
            for iv, sealed, associated_data, new_iv, new_associated_data in items:
                opening.pIv, opening.ulIvLen, opening.ulIvBits = iv, len(iv), 8 * len(iv)
                opening.pAAD, opening.ulAADLen = associated_data, len(associated_data)
                check(decrypt_init(session, opening_ref, source))
                length.value = MAX_GCM_INPUT
                rv = decrypt(session, sealed, len(sealed), clear, length_ref)
                if rv:
                    if _error_of(rv) in auth_failures:
                        results.append(None)
                        continue
                    check(rv)
                sealing.pIv, sealing.ulIvLen, sealing.ulIvBits = new_iv, len(new_iv), 8 * len(new_iv)
                sealing.pAAD, sealing.ulAADLen = new_associated_data, len(new_associated_data)
                check(encrypt_init(session, sealing_ref, destination))
                size = length.value
                length.value = len(out)
                check(encrypt(session, clear, size, out, length_ref))
                results.append(ctypes.string_at(out, length.value))
        finally:
            ctypes.memset(clear, 0, len(clear))
        return results

    def gcm_open_lengths(
        self,
        session: int,
        key: int,
        items: Sequence[tuple[bytes, bytes, bytes]],
        auth_failures: tuple[type[p11.PKCS11Error], ...],
    ) -> list[int | None]:
        """For each (iv, sealed, associated data): whether ``sealed`` opens under ``key``, as the
        length of what it holds, or None where the tag did not verify (an error in
        ``auth_failures``). What is opened stays in a C buffer, zeroed before returning: a
        check that a wrapped key opens needs no key material in Python."""
        opening, opening_ref = _gcm_template()
        clear = ctypes.create_string_buffer(MAX_GCM_INPUT)
        length = CK_ULONG()
        length_ref = ctypes.byref(length)
        decrypt_init, decrypt = self._decrypt_init, self._decrypt_bytes
        results: list[int | None] = []
        try:
            for iv, sealed, associated_data in items:
                opening.pIv, opening.ulIvLen, opening.ulIvBits = iv, len(iv), 8 * len(iv)
                opening.pAAD, opening.ulAADLen = associated_data, len(associated_data)
                check(decrypt_init(session, opening_ref, key))
                length.value = MAX_GCM_INPUT
                rv = decrypt(session, sealed, len(sealed), clear, length_ref)
                if rv:
                    if _error_of(rv) in auth_failures:
                        results.append(None)
                        continue
                    check(rv)
                results.append(length.value)
        finally:
            ctypes.memset(clear, 0, len(clear))
        return results

    def hmac_sha256(self, session: int, key: int, message: bytes) -> bytes:
        mechanism = Mechanism(CKM_SHA256_HMAC, None, 0)
        check(self._sign_init(session, ctypes.byref(mechanism), key))
        data, size = _bytes(message)
        out = _out(32)
        length = CK_ULONG(32)
        check(self._sign(session, data, size, out, ctypes.byref(length)))
        return bytes(out[: length.value])

    def hmac_sha256_many(self, session: int, key: int, messages: Sequence[bytes]) -> list[bytes]:
        """HMAC-SHA256 of each message, in order, on one session with one key handle: the loop a
        pseudonymization batch costs, with nothing per message but C_SignInit and C_Sign (the
        mechanism, the output buffer and its length are made once)."""
        mechanism = Mechanism(CKM_SHA256_HMAC, None, 0)
        mechanism_ref = ctypes.byref(mechanism)
        out = _out(32)
        length = CK_ULONG(32)
        length_ref = ctypes.byref(length)
        sign_init, sign = self._sign_init, self._sign_bytes
        macs = []
        for message in messages:
            check(sign_init(session, mechanism_ref, key))
            length.value = 32
            check(sign(session, message, len(message), out, length_ref))
            if length.value != 32:
                raise p11.GeneralError()
            macs.append(bytes(out))
        return macs

    def hmac_sha256_verify(self, session: int, key: int, message: bytes, mac: bytes) -> bool:
        mechanism = Mechanism(CKM_SHA256_HMAC, None, 0)
        check(self._verify_init(session, ctypes.byref(mechanism), key))
        data, size = _bytes(message)
        signature, signature_size = _bytes(mac)
        rv = self._verify(session, data, size, signature, signature_size)
        if rv in (0x0C0, 0x0C1):  # CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE
            return False
        check(rv)
        return True

    def generate_secret(self, session: int, mechanism_type: int, attributes: Mapping[int, bool | int | bytes]) -> int:
        """C_GenerateKey; returns the new object's handle."""
        mechanism = Mechanism(mechanism_type, None, 0)
        array, _keep = template(attributes)
        handle = CK_ULONG()
        check(self._generate(session, ctypes.byref(mechanism), array, len(attributes), ctypes.byref(handle)))
        return handle.value

    def wrap(self, session: int, wrapping_key: int, key: int) -> bytes:
        """C_WrapKey with CKM_AES_KEY_WRAP (RFC 3394)."""
        mechanism = Mechanism(CKM_AES_KEY_WRAP, None, 0)
        length = CK_ULONG(0)
        check(self._wrap(session, ctypes.byref(mechanism), wrapping_key, key, None, ctypes.byref(length)))
        out = _out(length.value)
        check(self._wrap(session, ctypes.byref(mechanism), wrapping_key, key, out, ctypes.byref(length)))
        return bytes(out[: length.value])

    def unwrap(
        self, session: int, unwrapping_key: int, wrapped: bytes, attributes: Mapping[int, bool | int | bytes]
    ) -> int:
        """C_UnwrapKey with CKM_AES_KEY_WRAP; returns the new object's handle."""
        mechanism = Mechanism(CKM_AES_KEY_WRAP, None, 0)
        data, size = _bytes(wrapped)
        array, _keep = template(attributes)
        handle = CK_ULONG()
        check(
            self._unwrap(
                session,
                ctypes.byref(mechanism),
                unwrapping_key,
                data,
                size,
                array,
                len(attributes),
                ctypes.byref(handle),
            )
        )
        return handle.value

    def destroy(self, session: int, handle: int) -> None:
        check(self._destroy(session, handle))


def _gcm_template() -> tuple[GcmParamsBytes, object]:
    """A CKM_AES_GCM mechanism with a 128-bit tag whose IV and associated data are set per item,
    and a reference to pass it by. The mechanism holds the parameters' address; the returned
    parameters keep the memory alive, the reference keeps the mechanism."""
    params = GcmParamsBytes(None, 0, 0, None, 0, _TAG_BITS)
    mechanism = Mechanism(CKM_AES_GCM, ctypes.cast(ctypes.pointer(params), ctypes.c_void_p), ctypes.sizeof(params))
    return params, ctypes.byref(mechanism)


def _gcm(iv: bytes, associated_data: bytes) -> tuple[Mechanism, list[object]]:
    iv_buffer, iv_size = _bytes(iv)
    aad_buffer, aad_size = _bytes(associated_data)
    params = GcmParams(
        ctypes.cast(iv_buffer, CK_BYTE_P),
        iv_size,
        iv_size * 8,
        ctypes.cast(aad_buffer, CK_BYTE_P),
        aad_size,
        _TAG_BITS,
    )
    mechanism = Mechanism(CKM_AES_GCM, ctypes.cast(ctypes.pointer(params), ctypes.c_void_p), ctypes.sizeof(params))
    return mechanism, [iv_buffer, aad_buffer, params]
