"""A pool of PKCS#11 sessions that survives the HSM going away and coming back.

PKCS#11 forbids using one session from two threads at once, so each call borrows a session of
its own. The application's login is held by one dedicated session that is never lent out:
closing a logged-in python-pkcs11 session calls C_Logout, which would log out every session.

When a call fails with a session fault, the pool drops its idle sessions, logs in again if the
login was lost, and retries the call once on a fresh session. A device fault additionally
finalizes and re-initializes the module (after waiting for every in-flight call to leave it).
While the HSM stays unreachable, calls fail fast with HsmUnavailable and reconnection is tried
at most once per ``retry_interval``; the health monitor's periodic ``check`` keeps trying even
when no traffic arrives.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar, cast

import pkcs11
import pkcs11.exceptions as p11
from pkcs11 import Attribute, ObjectClass

from kms.errors import HsmOperationFailed, HsmUnavailable
from kms.hsm import outage
from kms.hsm.faults import Fault, classify
from kms.hsm.gate import Gate
from kms.hsm.module import ModuleUnusable, Pkcs11Module

log = logging.getLogger(__name__)
T = TypeVar("T")


def session_handle(session: pkcs11.Session) -> int:
    # python-pkcs11's Cython Session has the handle; its typed Session class does not declare it.
    handle: int = session.handle  # type: ignore[attr-defined]
    return handle


def object_handle(found: pkcs11.Object) -> int:
    # python-pkcs11 types handles as optional for the sake of domain parameters that were never
    # stored; an object found on a token always has one.
    handle = found.handle
    if handle is None:
        raise TypeError(f"{type(found).__name__} is not a token object")
    return handle


class LoginLost(p11.UserNotLoggedIn):
    """A session turned out not to be logged in, so private objects were invisible to it."""


class PooledSession:
    """A borrowed session, and the master key objects already found through it."""

    __slots__ = ("_keys", "_module", "generation", "raw", "session")

    def __init__(self, session: pkcs11.Session, generation: int, module: Pkcs11Module) -> None:
        self.session = session
        self.generation = generation
        self.raw = module.raw  # calls that take explicit handles (kms.hsm.raw)
        self._module = module
        self._keys: dict[bytes, pkcs11.SecretKey] = {}

    @property
    def handle(self) -> int:
        """The PKCS#11 session handle, for the calls of kms.hsm.raw."""
        return session_handle(self.session)

    def cached_key(self, object_id: bytes) -> pkcs11.SecretKey | None:
        return self._keys.get(object_id)

    def key(self, object_id: bytes, vouch: Callable[[pkcs11.SecretKey], None]) -> pkcs11.SecretKey | None:
        """The secret key whose CKA_ID is ``object_id``, or None if the token has none.

        ``vouch`` sees a newly found object first and raises if it may not be used
        (kms.hsm.trust): an id names an object, it does not make it trustworthy. Only an object
        it let pass is remembered for this session.

        Raises LoginLost rather than report a key missing that is only hidden by a lost login,
        and MultipleObjectsReturned when the id is ambiguous (never guess which key to use).
        """
        cached = self._keys.get(object_id)
        if cached is not None:
            return cached
        try:
            # Asked for CKO_SECRET_KEY, so python-pkcs11 returns a SecretKey.
            found = cast(pkcs11.SecretKey, self.session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id))
        except p11.NoSuchKey:
            self.require_login()
            return None
        vouch(found)
        self._keys[object_id] = found
        return found

    def objects(self, template: dict[Attribute, object]) -> list[pkcs11.Object]:
        """The objects matching ``template``. Raises LoginLost rather than report none when a
        lost login may be hiding private objects (a caller that creates what it did not find
        would otherwise create a duplicate)."""
        found = list(self.session.get_objects(template))
        if not found:
            self.require_login()
        return found

    def require_login(self) -> None:
        if self._module.session_logged_in(self.handle) is False:
            raise LoginLost()

    def forget(self, object_id: bytes) -> None:
        self._keys.pop(object_id, None)


class SessionPool:
    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        size: int,
        *,
        retry_interval: float = 1.0,
        acquire_timeout: float = 30.0,
    ) -> None:
        self._module_path = module_path
        self._token_label = token_label
        self._pin = pin
        self._retry_interval = retry_interval
        self._acquire_timeout = acquire_timeout
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()  # guards the fields below
        self._connect_lock = threading.Lock()
        self._gate = Gate()  # re-initializing the module waits for every call inside it
        # SoftHSM 2.6 fails C_GenerateKey (CKR_GENERAL_ERROR) when another thread searches
        # objects at the same time, locking on or not. Everything that creates or destroys
        # objects takes this exclusively and every search takes it shared, always outside run()
        # (so a module re-initialization, which takes _gate exclusively, cannot deadlock with it).
        self.objects = Gate()
        self._module: Pkcs11Module | None = None
        self._token: pkcs11.Token | None = None
        self._login_session: pkcs11.Session | None = None
        self._generation = 0
        self._idle: list[PooledSession] = []
        self._pending_fault: Fault | None = None
        self._next_attempt = 0.0
        self._last_problem = "HSM is unavailable"
        # The session that owns the process's unwrapped keys (session objects die with the
        # session that made them): never lent out, used one call at a time.
        self._holder: PooledSession | None = None
        self._holder_lock = threading.Lock()
        self._holder_epoch = 0

    @property
    def generation(self) -> int:
        """Changes whenever the connection to the module is made again: handles found before
        mean nothing after."""
        self._ensure_connected()
        return self._generation

    @property
    def holder_generation(self) -> tuple[int, int]:
        """Changes whenever the holder session is opened again: its session objects are gone."""
        self._ensure_connected()
        return self._generation, self._holder_epoch

    def run_holder(self, operation: Callable[[PooledSession], T]) -> T:
        """Runs ``operation`` on the holder session, one at a time; retries once after a
        connection fault (with a new holder, whose session objects start afresh)."""
        for _attempt in range(2):
            with self._holder_lock:
                holder = self._open_holder()
                try:
                    with self._gate.shared():
                        return operation(holder)
                except pkcs11.PKCS11Error as exc:
                    fault = classify(exc)
                    if fault is None:
                        raise HsmOperationFailed(type(exc).__name__) from None
                    self._holder = None
                    self._holder_epoch += 1
                    self._lose(None, fault, type(exc).__name__, holder.generation)
        raise HsmUnavailable(self._last_problem)

    def _open_holder(self) -> PooledSession:
        """Called with the holder lock held."""
        self._ensure_connected()
        with self._lock:
            generation, token, module = self._generation, self._token, self._module
        if self._holder is None or self._holder.generation != generation:
            assert token is not None and module is not None
            try:
                with self._gate.shared():
                    self._holder = PooledSession(token.open(rw=True), generation, module)
            except pkcs11.PKCS11Error as exc:
                self._lose(None, classify(exc) or Fault.DEVICE, type(exc).__name__, generation)
                raise HsmUnavailable(self._last_problem) from None
            # No new epoch here: losing a holder (above) or reconnecting already made one, and
            # moving it on the first open would orphan the keys unwrapped by that very call
            # (their cache entries carry the epoch read before it; an entry from an older epoch
            # is dropped without destroying its object).
        return self._holder

    @property
    def module(self) -> Pkcs11Module:
        self._ensure_connected()
        assert self._module is not None
        return self._module

    @property
    def slot_id(self) -> int:
        self._ensure_connected()
        assert self._token is not None
        return self._token.slot.slot_id

    def run(self, operation: Callable[[PooledSession], T]) -> T:
        """Runs ``operation`` on a borrowed session; retries once after a connection fault.

        Raises HsmUnavailable when the HSM cannot be reached, and HsmOperationFailed for any
        other PKCS#11 error the operation did not handle itself: no PKCS#11 exception leaves.
        """
        for _attempt in range(2):
            pooled = self._checkout()
            try:
                with self._gate.shared():
                    result = operation(pooled)
            except pkcs11.PKCS11Error as exc:
                fault = classify(exc)
                if fault is None:
                    self._checkin(pooled)
                    raise HsmOperationFailed(type(exc).__name__) from None
                self._lose(pooled, fault, type(exc).__name__)
                continue
            except BaseException:
                self._checkin(pooled)
                raise
            self._checkin(pooled)
            return result
        raise HsmUnavailable(self._last_problem)

    def check(self) -> None:
        """Returns when a session can be opened and used; otherwise raises HsmUnavailable."""
        if outage.injected():
            with self._lock:
                self._login_session, self._pending_fault = None, Fault.DEVICE
        self.run(lambda pooled: pooled.session.generate_random(64))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            login, self._login_session = self._login_session, None
            holder, self._holder = self._holder, None
            self._generation += 1
        with self._gate.exclusive():
            for pooled in idle:
                _close_quietly(pooled.session)
            if holder is not None:
                _close_quietly(holder.session)
            if login is not None:
                _close_quietly(login)

    # -- internals ---------------------------------------------------------------------

    def _checkout(self) -> PooledSession:
        if not self._slots.acquire(timeout=self._acquire_timeout):
            raise HsmUnavailable("no HSM session became free in time")
        generation = -1
        try:
            self._ensure_connected()
            with self._lock:
                while self._idle:
                    pooled = self._idle.pop()
                    if pooled.generation == self._generation:
                        return pooled
                generation, token, module = self._generation, self._token, self._module
            assert token is not None and module is not None
            with self._gate.shared():
                return PooledSession(token.open(rw=True), generation, module)
        except pkcs11.PKCS11Error as exc:
            self._slots.release()
            self._lose(None, classify(exc) or Fault.DEVICE, type(exc).__name__, generation)
            raise HsmUnavailable(self._last_problem) from None
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, pooled: PooledSession) -> None:
        with self._lock:
            if pooled.generation == self._generation:
                self._idle.append(pooled)
            # A session from before a reconnection is dropped, not closed: after a module reset
            # its handle number may already belong to a new session.
        self._slots.release()

    def _lose(self, pooled: PooledSession | None, fault: Fault, what: str, generation: int | None = None) -> None:
        """Records a connection fault seen on ``pooled`` (or while opening a session).

        The faulty session is dropped. When the login survived a session fault, only that
        session was lost; otherwise the pool reconnects on the next call.
        """
        if pooled is not None:
            generation = pooled.generation
            self._slots.release()
        login = self._login_session
        if fault is Fault.SESSION and login is not None and self._still_logged_in(login):
            return
        with self._lock:
            if generation != self._generation or self._login_session is None:
                return
            log.warning("hsm connection fault", extra={"fields": {"fault": fault.value, "error": what}})
            self._login_session = None
            self._pending_fault = fault
            self._last_problem = f"HSM connection lost ({what})"
            self._next_attempt = 0.0  # reconnect at once; back off only if that fails

    def _still_logged_in(self, login: pkcs11.Session) -> bool:
        assert self._module is not None
        with self._gate.shared():
            return self._module.session_logged_in(session_handle(login)) is True

    def _ensure_connected(self) -> None:
        if self._login_session is not None:
            return
        with self._connect_lock:
            if self._login_session is not None:
                return
            if time.monotonic() < self._next_attempt:
                raise HsmUnavailable(self._last_problem)
            try:
                self._connect()
            except (pkcs11.PKCS11Error, ModuleUnusable) as exc:
                self._next_attempt = time.monotonic() + self._retry_interval
                self._last_problem = f"HSM is unavailable ({type(exc).__name__})"
                if self._pending_fault is Fault.SESSION:
                    self._pending_fault = Fault.DEVICE  # new sessions fail too: reset the module
                raise HsmUnavailable(self._last_problem) from None

    def _connect(self) -> None:
        if self._module is None:
            self._module = Pkcs11Module.load(self._module_path)
        elif self._pending_fault is Fault.DEVICE:
            with self._gate.exclusive():
                self._module.reinitialize()
        if outage.injected():
            raise ModuleUnusable("HSM unreachable (injected outage)")
        token = _find_token(self._module, self._token_label)
        with self._gate.shared():
            login = _log_in(token, self._pin)
        with self._lock:
            self._idle = []
            self._generation += 1
            self._token, self._login_session = token, login
            self._pending_fault = None
        if self._generation > 1:
            log.info("hsm connection restored", extra={"fields": {"generation": self._generation}})


def _find_token(module: Pkcs11Module, label: str) -> pkcs11.Token:
    """The token labelled ``label``. Unlike python-pkcs11's get_token, a slot that fails to
    describe its token (a broken or vanished token) does not hide ours."""
    found = []
    for slot in module.lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except pkcs11.PKCS11Error:
            continue
        if token.label == label:
            found.append(token)
    if not found:
        raise p11.TokenNotPresent()
    if len(found) > 1:
        raise p11.MultipleTokensReturned()
    return found[0]


def _log_in(token: pkcs11.Token, pin: str) -> pkcs11.Session:
    try:
        return token.open(rw=True, user_pin=pin)
    except p11.UserAlreadyLoggedIn:
        # The login survived (held by a session from before the fault). python-pkcs11 leaves the
        # session it opened for the failed C_Login unclosed; that happens once per recovery.
        return token.open(rw=True)


def _close_quietly(session: pkcs11.Session) -> None:
    with contextlib.suppress(pkcs11.PKCS11Error):
        session.close()
