from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.support.process import ServerProcess, clean_env, kms_command


@pytest.fixture
def server_env(hsm_env, database_url):
    """A subprocess server's environment: the test token, a label prefix of its own, and the
    database under test (SQLite or PostgreSQL)."""
    return clean_env(
        {
            **hsm_env,
            "KMS_PKCS11_LABEL_PREFIX": "f" + uuid.uuid4().hex[:10],
            "KMS_DATABASE_URL": database_url,
            "KMS_MIN_ROTATION_PERIOD": "1s",
            # Servers here are killed and restarted, never left running beside kms hsm rotate-root.
            "KMS_HSM_ROOT_REFRESH": "1s",
        }
    )


@pytest.fixture
def server_process(tmp_path, server_env):
    server = ServerProcess(tmp_path / "data", server_env)
    yield server
    server.kill()


def hsm_check(env: dict[str, str], data_dir) -> dict:
    """``kms hsm check --json``: what an operator would run after an incident."""
    result = subprocess.run(
        kms_command("hsm", "check", "--json", "--data-dir", str(data_dir)),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout)
    report["exit_code"] = result.returncode
    return report
