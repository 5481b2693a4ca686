"""A SoftHSM2 token of our own, for development and the embedded defaults.

Everything lives under ``<data dir>/softhsm``: its own ``softhsm2.conf``, the token directory,
and the generated user and security-officer PINs in files readable only by their owner. The
token is created through PKCS#11 itself (C_InitToken, C_InitPIN), so no PIN ever appears on a
command line.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pkcs11 import TokenFlag

from kms.hsm.module import ModuleUnusable, Pkcs11Module

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
DEFAULT_TOKEN_LABEL = "kms-dev"


@dataclass(frozen=True)
class DevToken:
    module_path: str
    token_label: str
    pin_file: Path
    config_file: Path

    def read_pin(self) -> str:
        return self.pin_file.read_text().strip()


def find_module() -> str:
    for candidate in MODULE_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    raise ModuleUnusable("SoftHSM2 is not installed (Debian: apt-get install softhsm2); or set KMS_PKCS11_MODULE")


def provision(data_dir: Path, token_label: str = DEFAULT_TOKEN_LABEL) -> DevToken:
    """Creates (or finds) the development token under ``data_dir``. Idempotent.

    SoftHSM reads its configuration once per process, when first initialized, so this must run
    before anything else in the process loads SoftHSM.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as kms.app does, if it comes first
    root = (data_dir / "softhsm").resolve()
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    config = root / "softhsm2.conf"
    if not config.exists():
        config.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
        )
    _point_softhsm_at(config)
    pin_file = root / "user-pin"
    pin = _read_or_create_secret(pin_file)
    so_pin = _read_or_create_secret(root / "so-pin")
    module_path = find_module()
    module = Pkcs11Module.load(module_path)
    if not _has_token(module, token_label):
        _initialize_token(module, token_label, so_pin, pin)
    return DevToken(module_path=module_path, token_label=token_label, pin_file=pin_file, config_file=config)


_configured: str | None = None


def _point_softhsm_at(config: Path) -> None:
    global _configured
    wanted = str(config)
    if _configured is not None and _configured != wanted:
        raise ModuleUnusable("SoftHSM is already loaded in this process with another configuration")
    os.environ["SOFTHSM2_CONF"] = wanted
    _configured = wanted


def _read_or_create_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return secret


def _has_token(module: Pkcs11Module, label: str) -> bool:
    return any(slot.get_token().label == label for slot in module.lib.get_slots(token_present=True))


def _initialize_token(module: Pkcs11Module, label: str, so_pin: str, pin: str) -> None:
    free = [
        slot
        for slot in module.lib.get_slots(token_present=True)
        if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED
    ]
    if not free:
        raise ModuleUnusable("SoftHSM offers no uninitialized slot")
    module.init_token(free[0].slot_id, so_pin, label)
    token = module.lib.get_token(token_label=label)
    with token.open(rw=True, so_pin=so_pin) as session:
        session.init_pin(pin)
