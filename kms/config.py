"""Settings, read from KMS_* environment variables (and command-line flags, which win).

With nothing set, the service runs on embedded defaults: SQLite and a SoftHSM2 token it
creates, both under ``data_dir``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kms.domain.policy import validate_identity
from kms.errors import KmsError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: object) -> object:
    """Accepts seconds as a number, or "90s", "15m", "1h", "30d" (and timedelta/ISO 8601 as
    pydantic does)."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KMS_", extra="ignore", hide_input_in_errors=True)

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("kms-data")
    # SQLAlchemy URL; default sqlite:///<data_dir>/kms.db. PostgreSQL: postgresql+psycopg://...
    database_url: str | None = None

    # The HSM. Without a module, an embedded SoftHSM2 token is created under data_dir.
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    pkcs11_pin_file: Path | None = None
    # First part of every master key's CKA_LABEL ("<prefix>:<key id>:v<version>").
    pkcs11_label_prefix: str = "kms"

    # Worker threads of the gRPC server; each holds at most one HSM session at a time.
    max_workers: int = Field(default=32, ge=1, le=1024)
    # Streams (StreamReWrap, ListAuditEvents) open at once; each holds a worker while open. At
    # most half of max_workers, so that streams never starve unary calls and health checks;
    # and at most this many per identity. A stream idle this long is cancelled.
    max_streams: int = Field(default=8, ge=1, le=1024)
    max_streams_per_identity: int = Field(default=2, ge=1, le=1024)
    stream_idle_timeout: Duration = timedelta(seconds=30)
    # Calls admitted at once (running plus queued); beyond it, RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(default=1024, ge=1)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    # After this long a client connection is asked to move on (HTTP/2 GOAWAY; calls in flight
    # finish, the client reconnects), so that connections spread again over the workers of
    # kms serve --workers after one restarted. Unset: never; with workers, 60s unless set.
    max_connection_age: Duration | None = None
    hsm_retry_interval: Duration = timedelta(seconds=1)

    # How long key metadata is reused before it is read again (bounds how late a change made by
    # another replica is seen), and how long it may keep serving while the database is down.
    metadata_cache_ttl: Duration = timedelta(seconds=1)
    metadata_max_stale: Duration = timedelta(seconds=30)
    data_key_source: Literal["os", "hsm"] = "os"
    # Where new keys' versions live unless CreateKey says: "wrapped" (under an HSM root key,
    # stored in the database: any number of keys) or "hsm_object" (a token object per version).
    key_storage: Literal["wrapped", "hsm_object"] = "wrapped"
    # Version keys kept ready per process (unwrapped session objects, found token objects). It
    # should hold the versions in use: past it, each call unwraps a key and destroys another
    # (at 10,000 keys in use, a cache of 4,096 halved GenerateDataKey's rate). Each unwrapped
    # key is a session object in the HSM: about 8.5 KiB in SoftHSM (140 MiB when full).
    hsm_key_cache_size: int = Field(default=16384, ge=16, le=1_000_000)
    # How long a process trusts its list of HSM root keys: the bound on how late a server wraps
    # new versions under a root that kms hsm rotate-root made (which waits this long first).
    hsm_root_refresh: Duration = timedelta(seconds=30)
    # Shortest rotation period a key may have (tests and demos lower it to watch rotation).
    min_rotation_period: Duration = timedelta(hours=1)
    # Shortest wait between scheduling a version's destruction and the destruction.
    min_destroy_pending_window: Duration = timedelta(hours=24)
    # Keys with a subject_field (kms.domain.privacy): the erasure finality of a key created
    # without one (the scheduler rotates and destroys so that every erasure is final in backups
    # within it), and the subjects' keys kept unwrapped in memory per process.
    erasure_finality_default: Duration = timedelta(days=30)
    subject_key_cache_size: int = Field(default=100_000, ge=16, le=10_000_000)
    # The pending window of destructions the scheduler schedules by a key's retention_period.
    retention_pending_window: Duration = timedelta(days=30)
    # Wraps (data keys issued and re-wraps onto it) after which a primary version is rotated
    # whatever the key's schedule: random 96-bit GCM IVs allow at most 2^32 per key.
    max_wraps_per_version: int = Field(default=2**30, ge=1, le=2**32)
    # Wraps after which a version refuses to wrap at all, should rotation keep failing.
    hard_max_wraps_per_version: int = Field(default=3 * 2**30, ge=1, le=2**32)
    # How often each replica looks for due rotations and destructions and writes usage counts.
    scheduler_interval: Duration = timedelta(seconds=5)

    # Development mode: plaintext gRPC on a loopback address, and every caller is the identity
    # "local", which may do everything. Any local user is then a superuser, so it must be asked
    # for by name (KMS_DEV_MODE, kms serve --dev); without it the server needs TLS.
    dev_mode: bool = False

    # Transport security. With a certificate and key the server speaks TLS (re-read for new
    # connections whenever the files change); with a client CA it requires and verifies client
    # certificates, and callers are identified by them (URI SAN such as spiffe://..., else CN).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    # The identity that may do everything (and so grant narrower permissions to others).
    bootstrap_admin: str | None = None
    # Client certificates without a URI SAN are refused unless this is on; their identity is
    # then "cn:<common name>", a namespace no URI SAN can claim (kms.api.tls).
    cn_identities: bool = False
    # How often each replica checks for policy changes made elsewhere.
    policy_poll_interval: Duration = timedelta(milliseconds=250)
    # Per-identity rate limits per permission: "RATE" or "RATE:BURST" (calls per second).
    quota_admin: str | None = None
    quota_encrypt: str | None = None
    quota_decrypt: str | None = None
    quota_rewrap: str | None = None
    quota_rotate: str | None = None
    quota_audit_read: str | None = None
    quota_pseudonymize: str | None = None  # one token per value pseudonymized
    quota_erase: str | None = None
    # Per identity: refused calls (and refused batch items) it may cause, "RATE:BURST"; once
    # spent, its calls are turned away with RESOURCE_EXHAUSTED until the budget refills.
    # "off" disables the budget.
    quota_failures: str = "20:200"
    # Identical failures (identity, action, outcome, reason) within this window are recorded
    # once in full and then as one summary record with their count.
    audit_repeat_window: Duration = timedelta(seconds=10)
    # When the audit log cannot be written: refuse calls (False, the default) or log and go on.
    audit_fail_open: bool = False
    # Calls fail closed once audit records have waited this long to reach the chain.
    audit_max_lag: Duration = timedelta(seconds=5)
    # VerifyAuditLog's share of one core of the serving process (it is paced to it, and runs one
    # at a time); `kms audit verify --local` checks the log without the server.
    audit_verify_share: float = Field(default=0.1, gt=0, le=1)
    # Where this process journals audit records before they are chained; default
    # <data dir>/audit-journal. Each worker of ``kms serve --workers`` has its own (kms.workers).
    audit_journal_dir: Path | None = None

    # Worker processes on one port (kms serve --workers): unset, one process serves as before;
    # N, or "auto" for one per CPU this process may run on, starts a supervisor and N workers.
    workers: int | Literal["auto"] | None = None
    # With workers: each also serves on an address of its own (HOST:0 a free port each, HOST:P
    # port P + index), to reach, health-check or debug one worker; workers.json names them.
    worker_listen: str | None = None

    shutdown_grace: Duration = timedelta(seconds=10)
    health_interval: Duration = timedelta(seconds=2)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    metrics_listen: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.pkcs11_pin is not None and self.pkcs11_pin_file is not None:
            raise ValueError("set KMS_PKCS11_PIN or KMS_PKCS11_PIN_FILE, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both KMS_TLS_CERT and KMS_TLS_KEY (--tls-cert, --tls-key), or neither")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("KMS_CLIENT_CA (--client-ca) needs TLS: also set KMS_TLS_CERT and KMS_TLS_KEY")
        if self.dev_mode and self.tls_cert is not None:
            raise ValueError("development mode (KMS_DEV_MODE, --dev) serves plaintext: do not also configure TLS")
        quotas = ("admin", "encrypt", "decrypt", "rewrap", "rotate", "audit_read", "pseudonymize", "erase", "failures")
        for name in quotas:
            self.quota(name)  # validates
        if self.bootstrap_admin is not None:
            try:
                validate_identity(self.bootstrap_admin)
            except KmsError as error:
                raise ValueError(f"KMS_BOOTSTRAP_ADMIN: {error.message}") from None
        if isinstance(self.workers, int) and not 1 <= self.workers <= 256:
            raise ValueError("KMS_WORKERS (--workers) must be a number from 1 to 256, or auto")
        if self.hard_max_wraps_per_version < self.max_wraps_per_version:
            raise ValueError("KMS_HARD_MAX_WRAPS_PER_VERSION must be at least KMS_MAX_WRAPS_PER_VERSION")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def require_transport_security(self) -> None:
        """Serving needs TLS, or development mode asked for by name."""
        if not self.dev_mode and self.tls_cert is None:
            raise ValueError(
                "no TLS configured: set KMS_TLS_CERT and KMS_TLS_KEY (--tls-cert, --tls-key, and --client-ca for "
                "client certificates), or ask for development mode (KMS_DEV_MODE=true, --dev: plaintext on "
                "loopback, every local user is a superuser)"
            )

    def quota(self, permission: str) -> tuple[float, float] | None:
        """(rate, burst) for a permission ("audit-read" or "audit_read"), None if unlimited."""
        value = getattr(self, f"quota_{permission.replace('-', '_')}")
        if not value or value == "off":
            return None
        rate_text, _, burst_text = value.partition(":")
        try:
            rate = float(rate_text)
            burst = float(burst_text) if burst_text else max(1.0, rate)
        except ValueError:
            raise ValueError(f"KMS_QUOTA_{permission.upper()} must be RATE or RATE:BURST, not {value!r}") from None
        if rate <= 0 or burst < 1:
            raise ValueError(f"KMS_QUOTA_{permission.upper()}: rate must be positive and burst at least 1")
        return rate, burst

    def database_url_or_default(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'kms.db').resolve()}"

    def read_pin(self) -> str:
        """The HSM user PIN from KMS_PKCS11_PIN or KMS_PKCS11_PIN_FILE. Never logged."""
        if self.pkcs11_pin is not None:
            return self.pkcs11_pin.get_secret_value()
        if self.pkcs11_pin_file is not None:
            return self.pkcs11_pin_file.read_text().strip()
        raise ValueError("KMS_PKCS11_MODULE is set: also set KMS_PKCS11_PIN or KMS_PKCS11_PIN_FILE")
