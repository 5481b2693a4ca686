"""Which PKCS#11 failures mean the connection to the HSM is lost, as opposed to a bad request.

Session faults are repaired by opening new sessions (and logging in again). Device faults need
the module finalized and initialized again, as after a reset or a network HSM reconnecting.
"""

from __future__ import annotations

import enum

import pkcs11.exceptions as p11


class Fault(enum.Enum):
    SESSION = "session"
    DEVICE = "device"


_SESSION_FAULTS = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.SessionCount,
)
_DEVICE_FAULTS = (
    p11.DeviceError,
    p11.DeviceRemoved,
    p11.DeviceMemory,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.SlotIDInvalid,
    p11.NoSuchToken,
    p11.HostMemory,
    p11.FunctionFailed,
)


def classify(exc: BaseException) -> Fault | None:
    """The kind of connection fault ``exc`` signals, or None for an operation-level error."""
    if isinstance(exc, _SESSION_FAULTS):
        return Fault.SESSION
    if isinstance(exc, _DEVICE_FAULTS):
        return Fault.DEVICE
    if type(exc) is p11.PKCS11Error and "not initialized" in str(exc):
        # CKR_CRYPTOKI_NOT_INITIALIZED has no class of its own in python-pkcs11.
        return Fault.DEVICE
    return None
