"""pytest fixtures: a real SoftHSM2 token, real SQLite and PostgreSQL, a real gRPC server.

SoftHSM reads its configuration once per process, so every in-process test shares one token
(created under a session temporary directory). Tests stay apart by giving each its own
CKA_LABEL prefix (KMS_PKCS11_LABEL_PREFIX), which scopes the objects the service sees.
Servers started as subprocesses use the same token directory; SoftHSM's file backend
supports several processes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import postgres


@pytest.fixture(scope="session")
def hsm_token(tmp_path_factory: pytest.TempPathFactory):
    from kms.hsm import softhsm

    return softhsm.provision(tmp_path_factory.mktemp("hsm"), "kms-test")


@pytest.fixture(scope="session")
def hsm_env(hsm_token) -> dict[str, str]:
    """Environment for a subprocess (server or CLI) to use the test token."""
    return {
        "SOFTHSM2_CONF": str(hsm_token.config_file),
        "KMS_PKCS11_MODULE": hsm_token.module_path,
        "KMS_PKCS11_TOKEN_LABEL": hsm_token.token_label,
        "KMS_PKCS11_PIN_FILE": str(hsm_token.pin_file),
    }


@pytest.fixture
def label_prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _postgres_or_fail() -> None:
    if os.environ.get("KMS_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("KMS_TEST_SKIP_POSTGRES=1")
    if not postgres.available():
        pytest.fail(
            "PostgreSQL is not reachable at 127.0.0.1:5432; scripts/test.sh starts it "
            "(or set KMS_TEST_SKIP_POSTGRES=1 to skip its half of the tests)"
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every storage test runs against both databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kms.db'}"
        return
    _postgres_or_fail()
    with postgres.temporary_database() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    _postgres_or_fail()
    with postgres.temporary_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kms.db'}"


def make_settings(hsm_token, data_dir: Path, database_url: str, label_prefix: str, **overrides):
    from kms.config import Settings

    values = {
        "data_dir": data_dir,
        "database_url": database_url,
        "pkcs11_module": hsm_token.module_path,
        "pkcs11_token_label": hsm_token.token_label,
        "pkcs11_pin_file": hsm_token.pin_file,
        "pkcs11_label_prefix": label_prefix,
        "listen": "127.0.0.1:0",
        "max_workers": 16,
        "health_interval": 0.2,
        "min_rotation_period": 1,
        "shutdown_grace": 2,
        "hsm_root_refresh": 0.2,
    }
    values.update(overrides)
    values.setdefault("dev_mode", "tls_cert" not in values)
    return Settings(**values)


@pytest.fixture
def settings(hsm_token, tmp_path: Path, database_url: str, label_prefix: str):
    return make_settings(hsm_token, tmp_path, database_url, label_prefix)


@pytest.fixture
def sqlite_settings(hsm_token, tmp_path: Path, sqlite_url: str, label_prefix: str):
    """For tests whose subject is not storage: SQLite only, to keep the suite fast."""
    return make_settings(hsm_token, tmp_path, sqlite_url, label_prefix)


@pytest.fixture
def services(settings):
    from kms.app import build_services

    built = build_services(settings)
    yield built
    built.close()


@pytest.fixture
def sqlite_services(sqlite_settings):
    from kms.app import build_services

    built = build_services(sqlite_settings)
    yield built
    built.close()


def own_journal(settings, name: str):
    """``settings`` for one more replica in this process: a journal directory belongs to one
    process at a time, so each replica built here gets its own."""
    return settings.model_copy(update={"audit_journal_dir": settings.data_dir / f"journal-{name}"})


def _running(app_settings):
    from kms.app import Application

    app = Application(app_settings)
    app.start()
    return app


@pytest.fixture
def server(sqlite_settings):
    """A started server on a free loopback port (SQLite)."""
    app = _running(sqlite_settings)
    yield app
    app.stop(grace=1)


@pytest.fixture
def server_on_each_database(settings):
    app = _running(settings)
    yield app
    app.stop(grace=1)


@pytest.fixture
def client(server):
    from kms_client import KmsClient

    with KmsClient(server.target, timeout=30) as connected:
        yield connected


# --- TLS ------------------------------------------------------------------------------

ADMIN = "spiffe://kms.dev/admin"
APP = "spiffe://kms.dev/app"


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA and certificates made by scripts/make-dev-certs.sh (openssl)."""
    import subprocess

    directory = tmp_path_factory.mktemp("certs")
    script = Path(__file__).resolve().parents[2] / "scripts" / "make-dev-certs.sh"
    subprocess.run([str(script), str(directory), "admin", "app", "auditor", "other"], check=True, capture_output=True)
    return directory


@pytest.fixture
def mtls_settings(hsm_token, tmp_path, sqlite_url, label_prefix, dev_certs):
    return make_settings(
        hsm_token,
        tmp_path,
        sqlite_url,
        label_prefix,
        tls_cert=dev_certs / "server.crt",
        tls_key=dev_certs / "server.key",
        client_ca=dev_certs / "ca.crt",
        bootstrap_admin=ADMIN,
    )


@pytest.fixture
def mtls_server(mtls_settings):
    app = _running(mtls_settings)
    yield app
    app.stop(grace=1)


@pytest.fixture
def connect(dev_certs):
    """connect(server, "app") -> a KmsClient presenting that client certificate (no retries)."""
    from kms_client import KmsClient, RetryPolicy, tls_credentials

    opened = []

    def make(server, name: str | None, ca: str = "ca.crt"):
        cert = str(dev_certs / f"{name}.crt") if name else None
        key = str(dev_certs / f"{name}.key") if name else None
        client = KmsClient(
            server.target,
            credentials=tls_credentials(str(dev_certs / ca), cert, key),
            retry=RetryPolicy(max_attempts=1),
            timeout=10,
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def deployment(hsm_token, tmp_path, database_url, label_prefix, dev_certs, connect):
    """A mutual-TLS server on the database under test, and a factory of replicas beside it."""
    settings = make_settings(
        hsm_token,
        tmp_path,
        database_url,
        label_prefix,
        tls_cert=dev_certs / "server.crt",
        tls_key=dev_certs / "server.key",
        client_ca=dev_certs / "ca.crt",
        bootstrap_admin=ADMIN,
    )
    started = []

    def replica():
        app = _running(settings.model_copy(update={"data_dir": tmp_path / f"replica{len(started)}"}))
        started.append(app)
        return app

    first = replica()
    yield first, replica, connect
    for app in started:
        app.stop(grace=1)
