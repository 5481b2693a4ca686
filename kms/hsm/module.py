"""Loading a PKCS#11 module so that it is safe to call from many threads.

python-pkcs11 0.10.1 initializes a module with ``C_Initialize(NULL)``. The PKCS#11 standard
reads NULL as "the application will not call from several threads at once", and SoftHSM 2.6
then switches its own locking off. python-pkcs11 releases the GIL around every call, so a
threaded server would race inside SoftHSM (CKR_GENERAL_ERROR, segmentation faults).

We therefore call ``C_Initialize`` ourselves first, through the module's own function list,
with ``CKF_OS_LOCKING_OK``, and only then let python-pkcs11 attach. When python-pkcs11's own
``C_Initialize(NULL)`` answers CKR_CRYPTOKI_ALREADY_INITIALIZED, both share the instance we
initialized with locking on. Some proxy modules hand out a separate instance per function
list; python-pkcs11's then initializes on its own and that proxy is responsible for its locking.

A module's state is global to the process, so there is one ``Pkcs11Module`` per module path.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path
from typing import ClassVar

import pkcs11
from pkcs11 import _pkcs11

from kms.hsm.raw import RawCalls

CKR_OK = 0x0
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2
CKS_RO_USER_FUNCTIONS = 1
CKS_RW_USER_FUNCTIONS = 3

# Positions in CK_FUNCTION_LIST (PKCS#11 v2.40, pkcs11f.h), after the CK_VERSION header.
_C_INITIALIZE, _C_FINALIZE, _C_INIT_TOKEN, _C_CLOSE_ALL_SESSIONS, _C_GET_SESSION_INFO = 0, 1, 9, 14, 15
_FUNCTIONS_USED = 68  # the whole v2.40 list: kms.hsm.raw calls further into it


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version), ("functions", ctypes.c_void_p * _FUNCTIONS_USED)]


class _InitializeArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


class _SessionInfo(ctypes.Structure):
    _fields_ = [
        ("slotID", ctypes.c_ulong),
        ("state", ctypes.c_ulong),
        ("flags", ctypes.c_ulong),
        ("ulDeviceError", ctypes.c_ulong),
    ]


_VOID_FN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)
_SLOT_FN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong)
_INIT_TOKEN_FN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_SESSION_INFO_FN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_SessionInfo))


class ModuleUnusable(Exception):
    """The module could not be loaded or initialized. Carries the CKR code, never secrets."""

    def __init__(self, message: str, rv: int | None = None) -> None:
        super().__init__(message if rv is None else f"{message} (CKR 0x{rv:x})")
        self.rv = rv


class _Library(_pkcs11.lib):
    """python-pkcs11's library object, initialized through ``Pkcs11Module``."""

    _owner: Pkcs11Module  # set on a per-module subclass, see Pkcs11Module._attach

    def initialize(self) -> None:  # overrides the cpdef method python-pkcs11 calls from __init__
        self._owner._initialize_with_locking()
        try:
            _pkcs11.lib.initialize(self)
        except pkcs11.PKCS11Error as exc:
            if "already initialized" not in str(exc):
                raise
            self._owner.shared_instance = True
        else:
            self._owner.shared_instance = False


class Pkcs11Module:
    """A loaded PKCS#11 module: python-pkcs11's ``lib`` plus the few raw calls it lacks."""

    _loaded: ClassVar[dict[str, Pkcs11Module]] = {}
    _loaded_lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> Pkcs11Module:
        """The process-wide instance for the module at ``path``; raises ModuleUnusable."""
        resolved = str(Path(path).resolve())
        with cls._loaded_lock:
            module = cls._loaded.get(resolved)
            if module is None:
                module = cls._loaded[resolved] = cls(resolved)
            return module

    def __init__(self, path: str) -> None:
        self.path = path
        self.shared_instance = True
        try:
            self._dll = ctypes.CDLL(path)
            get_function_list = self._dll.C_GetFunctionList
        except (OSError, AttributeError) as exc:
            raise ModuleUnusable(f"cannot load PKCS#11 module {path}: {exc}") from None
        get_function_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        get_function_list.restype = ctypes.c_ulong
        self._functions = ctypes.POINTER(_FunctionList)()
        rv = get_function_list(ctypes.byref(self._functions))
        if rv != CKR_OK:
            raise ModuleUnusable("C_GetFunctionList failed", rv)
        self._initialized = False
        self.lib = self._attach()
        self.raw = RawCalls(self._functions.contents.functions)

    def _attach(self) -> _pkcs11.lib:
        library_type = type("_BoundLibrary", (_Library,), {"_owner": self})
        try:
            return library_type(self.path)
        except pkcs11.PKCS11Error as exc:
            raise ModuleUnusable(f"cannot initialize PKCS#11 module {self.path}: {type(exc).__name__}") from None

    def _function(self, index: int, prototype):  # noqa: ANN001, ANN202 - ctypes prototypes are untyped
        return prototype(self._functions.contents.functions[index])

    def _initialize_with_locking(self) -> None:
        args = _InitializeArgs(flags=CKF_OS_LOCKING_OK)
        rv = self._function(_C_INITIALIZE, _VOID_FN)(ctypes.addressof(args))
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED and self._initialized:
            return
        if rv != CKR_OK:
            # ALREADY_INITIALIZED here means someone else in this process initialized the module,
            # perhaps without locking; we cannot vouch for thread safety then.
            raise ModuleUnusable("C_Initialize with CKF_OS_LOCKING_OK failed", rv)
        self._initialized = True

    def reinitialize(self) -> None:
        """Finalizes and initializes again, as after a device reset. Callers must ensure no
        other thread is inside the module (SessionPool's gate does)."""
        self.finalize()
        self._initialized = False
        if self.shared_instance:
            self._initialize_with_locking()
        else:
            self.lib.reinitialize()

    def finalize(self) -> None:
        if not self.shared_instance:
            with contextlib.suppress(pkcs11.PKCS11Error):
                self.lib.finalize()
        if self._initialized:
            self._function(_C_FINALIZE, _VOID_FN)(None)
            self._initialized = False

    def init_token(self, slot_id: int, so_pin: str, label: str) -> None:
        """C_InitToken: python-pkcs11 has no binding for it. The label is space-padded to 32."""
        encoded_label = label.encode("utf-8")
        if len(encoded_label) > 32:
            raise ModuleUnusable("token labels are at most 32 bytes")
        pin = so_pin.encode("utf-8")
        rv = self._function(_C_INIT_TOKEN, _INIT_TOKEN_FN)(slot_id, pin, len(pin), encoded_label.ljust(32))
        if rv != CKR_OK:
            raise ModuleUnusable("C_InitToken failed", rv)

    def close_all_sessions(self, slot_id: int) -> None:
        """C_CloseAllSessions: every session of this process on the slot ends, and with the last
        one the login. Used to recover from and to test session loss."""
        rv = self._function(_C_CLOSE_ALL_SESSIONS, _SLOT_FN)(slot_id)
        if rv != CKR_OK:
            raise ModuleUnusable("C_CloseAllSessions failed", rv)

    def session_logged_in(self, session_handle: int) -> bool | None:
        """Whether a python-pkcs11 session is in a user state, or None when that cannot be
        asked (the session belongs to a separate module instance)."""
        if not self.shared_instance:
            return None
        info = _SessionInfo()
        rv = self._function(_C_GET_SESSION_INFO, _SESSION_INFO_FN)(session_handle, ctypes.byref(info))
        if rv != CKR_OK:
            return False
        return info.state in (CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS)
