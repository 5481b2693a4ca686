"""``kms audit verify --local``: the operator's own process walks the audit log, reading the
database and asking the HSM itself, so that a long verification takes none of the server's time.
It runs beside a serving server on the same data directory (whose journal and writer it leaves
alone) while calls go on, agrees with the server's own verification, finds tampering, and
creates nothing it was meant to check. On SQLite (the data directory alone) and PostgreSQL."""

from __future__ import annotations

import json
import subprocess

from sqlalchemy import text

import kms_client
from tests.support.process import clean_env, kms_command


def _local(app, hsm_env, label_prefix, *args: str, data_dir=None) -> subprocess.Popen:
    """``kms audit verify --local`` on the server's data directory (and, on PostgreSQL, its URL)."""
    settings = app.services.settings
    database = [] if settings.database_url.startswith("sqlite") else ["--database-url", settings.database_url]
    return subprocess.Popen(
        kms_command("audit", "verify", "--local", "--data-dir", str(data_dir or settings.data_dir), *database, *args),
        env=clean_env({**hsm_env, "KMS_PKCS11_LABEL_PREFIX": label_prefix}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finished(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def _chained_records(app) -> int:
    assert app.services.audit_log.flush()
    with app.services.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM audit_records")).scalar()


def test_a_local_verification_beside_a_serving_server_agrees_with_it_and_finds_tampering(
    server_on_each_database, hsm_env, label_prefix
):
    app = server_on_each_database
    with kms_client.KmsClient(app.target) as client:
        client.create_key("orders")
        for n in range(5):
            client.generate_data_key("orders", {"n": str(n)})
        assert client.verify_audit_log().intact
        before = _chained_records(app)

        # Calls go on, and their records are chained, while the walk runs: whatever commits
        # meanwhile is left out of it (or wholly in), never taken for tampering.
        walking = _local(app, hsm_env, label_prefix, "--json")
        answered = 0
        while walking.poll() is None and answered < 100:
            client.generate_data_key("orders", {})
            answered += 1
        code, out, err = _finished(walking)
        assert code == 0, err
        verified = json.loads(out)
        assert verified["intact"] and verified["problem"] == ""
        assert before <= verified["records_checked"] <= before + answered

        quiet = _chained_records(app)
        code, out, err = _finished(_local(app, hsm_env, label_prefix, "--json"))
        assert (code, json.loads(out)["records_checked"]) == (0, quiet), err
        server = client.verify_audit_log()
        assert server.intact and server.records_checked >= quiet

    with app.services.engine.begin() as connection:
        connection.execute(text("UPDATE audit_records SET identity = 'someone-else' WHERE seq = 3"))
    code, out, _ = _finished(_local(app, hsm_env, label_prefix, "--json"))
    found = json.loads(out)
    assert (code, found["intact"], found["problem_seq"], found["problem"]) == (1, False, 3, "record 3 was changed")
    code, out, _ = _finished(_local(app, hsm_env, label_prefix))
    assert code == 1 and "TAMPERED at record 3: record 3 was changed" in out


def test_a_local_verification_creates_nothing_it_was_meant_to_check(server, hsm_env, label_prefix, tmp_path):
    with kms_client.KmsClient(server.target) as client:
        client.create_key("orders")
    assert server.services.audit_log.flush()

    # A token without this log's seal key: an error, and no key is made (asked twice, it says so twice).
    for _ in range(2):
        code, _, err = _finished(_local(server, hsm_env, "elsewhere"))
        assert code == 1 and "no audit seal key labelled 'elsewhere:audit-seal'" in err

    # A data directory with nothing in it: neither a token nor an empty database is made there.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _finished(_local(server, {}, label_prefix, data_dir=empty))
    assert code == 2 and "no HSM token in" in err
    assert list(empty.iterdir()) == []

    offline = subprocess.run(
        kms_command("audit", "verify", "--data-dir", str(server.services.settings.data_dir)),
        env=clean_env(hsm_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 2 and "--data-dir and --database-url go with --local" in offline.stderr
