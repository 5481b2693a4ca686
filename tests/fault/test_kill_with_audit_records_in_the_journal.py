"""kill -9 while answered calls' audit records exist only in the journal (the database refuses
them): after a restart every one of them is in the chain, exactly once, and the chain verifies.

The killed server's audit writer outlives it briefly: its input ends, it goes on chaining what it
can for a few seconds and exits (kms.audit_writer). Here the database refuses the records until
that writer has gone, so the replay is the restarted server's, and is seen in its log."""

from __future__ import annotations

import fcntl
import os
import threading
from collections import Counter
from pathlib import Path

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
                    "CREATE FUNCTION full_() RETURNS trigger AS"
                    " $$ BEGIN RAISE EXCEPTION 'full'; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text("CREATE TRIGGER full_ BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION full_()")
            )
        else:
            connection.execute(text("DROP TRIGGER full_ ON audit_records"))
            connection.execute(text("DROP FUNCTION full_()"))
    engine.dispose()


def _wait_for_the_killed_servers_writer(data_dir: Path, attempts: int = 1200) -> None:
    """Until the killed server's audit writer has exited: it holds the journal's writer.lock
    while it runs (kms.store.audit_journal)."""
    descriptor = os.open(data_dir / "audit-journal" / "writer.lock", os.O_RDWR)
    pause = threading.Event()
    try:
        for _ in range(attempts):
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # closing the descriptor lets it go again
            except BlockingIOError:
                pause.wait(0.05)
        raise AssertionError("the killed server's audit writer never exited")
    finally:
        os.close(descriptor)


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
    _wait_for_the_killed_servers_writer(server.data_dir)
    _refuse_audit_records(url, False)

    server.start()
    with kms_client.KmsClient(server.target) as client:
        calls = Counter(e.request_id for e in client.audit_events() if e.rpc == "GenerateDataKey")
        assert len(calls) == 20 and set(calls.values()) == {1}
        assert client.verify_audit_log().intact
    assert "replaying audit records journaled before a restart" in server.log.read_text()
