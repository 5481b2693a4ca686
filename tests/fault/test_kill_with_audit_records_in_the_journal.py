"""kill -9 while answered calls' audit records exist only in the journal (the database refuses
them): after a restart every one of them is in the chain, exactly once, and the chain verifies."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import create_engine, text

import kms_client


def _refuse_audit_records(url: str, refuse: bool) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER full BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'full'); END"
                    if refuse
                    else "DROP TRIGGER full"
                )
            )
        elif refuse:
            connection.execute(
                text(
                    "CREATE FUNCTION full_() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'full'; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text("CREATE TRIGGER full_ BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION full_()")
            )
        else:
            connection.execute(text("DROP TRIGGER full_ ON audit_records"))
            connection.execute(text("DROP FUNCTION full_()"))
    engine.dispose()


def test_journaled_records_survive_kill_9(server_process, server_env):
    server = server_process
    server.env = {**server_env, "KMS_AUDIT_MAX_LAG": "120s"}
    server.start()
    url = server_env["KMS_DATABASE_URL"]
    with kms_client.KmsClient(server.target) as client:
        client.create_key("orders")
        client.verify_audit_log()  # everything so far is chained
        _refuse_audit_records(url, True)
        for n in range(20):
            issued = client.generate_data_key("orders", {"n": str(n)})
            assert issued.key_id == "orders"  # answered: its record is in the journal
    server.kill()
    _refuse_audit_records(url, False)

    server.start()
    with kms_client.KmsClient(server.target) as client:
        calls = Counter(e.request_id for e in client.audit_events() if e.rpc == "GenerateDataKey")
        assert len(calls) == 20 and set(calls.values()) == {1}
        assert client.verify_audit_log().intact
    assert "replaying audit records journaled before a restart" in server.log.read_text()
