"""kms audit verify|export."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Any, TextIO

import click

from kms.app import hsm_settings
from kms.cli.common import remote
from kms.cli.output import console, emit_json
from kms.clock import SystemClock
from kms.config import Settings
from kms.errors import KmsError
from kms.hsm.audit_seal import Pkcs11AuditSealer
from kms.hsm.pool import SessionPool
from kms.service.audit import verify_log
from kms.store.audit import SqlAuditRepository
from kms.store.database import make_engine
from kms_client import KmsClient
from kms_client._admin import AuditVerification  # the answer's type, which the SDK does not re-export


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command()
@click.option(
    "--local",
    is_flag=True,
    help="Check the log in this process, reading the database and asking the HSM directly (configured as "
    "for `kms serve`: KMS_* settings, --data-dir, --database-url), so that the walk takes none of a server's "
    "time and needs no server. Records still waiting in a server's journal are not in it yet.",
)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="With --local (KMS_DATA_DIR).")
@click.option("--database-url", default=None, help="With --local: SQLAlchemy URL (KMS_DATABASE_URL).")
@remote
def verify(client: KmsClient, as_json: bool, local: bool, data_dir: str | None, database_url: str | None) -> None:
    """Check the whole hash chain and every checkpoint; say where the first problem is (exit 1)."""
    if local:
        # The client goes unused: it opens no connection until a call.
        result = _verify_here(data_dir, database_url)
    elif data_dir is not None or database_url is not None:
        raise click.UsageError("--data-dir and --database-url go with --local")
    else:
        result = client.verify_audit_log(timeout=3600)
    if as_json:
        emit_json(result)
    elif result.intact:
        console.print(f"intact: {result.records_checked} records, {result.checkpoints_checked} checkpoints")
    else:
        console.print(f"[red]TAMPERED[/red] at record {result.problem_seq}: {result.problem}")
    sys.exit(0 if result.intact else 1)


def _verify_here(data_dir: str | None, database_url: str | None) -> AuditVerification:
    """The walk the server's VerifyAuditLog makes, without its pacing (this process serves no
    one). It opens none of the server's journal or its writer, so it may run beside a server
    using the same data directory."""
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    settings = Settings(**overrides)
    # A check must not create what it checks: no embedded token, no empty SQLite file.
    if not settings.pkcs11_module and not (settings.data_dir / "softhsm").is_dir():
        raise click.UsageError(f"no HSM token in {settings.data_dir} (and no KMS_PKCS11_MODULE)")
    if not settings.database_url and not (settings.data_dir / "kms.db").is_file():
        raise click.UsageError(f"no database in {settings.data_dir} (and no KMS_DATABASE_URL)")
    hsm = hsm_settings(settings)
    engine = make_engine(settings.database_url_or_default(), pool_size=1)
    pool = SessionPool(
        hsm.module_path, hsm.token_label, hsm.pin, 1, retry_interval=settings.hsm_retry_interval.total_seconds()
    )
    label = f"{settings.pkcs11_label_prefix}:audit-seal"

    @contextmanager
    def no_new_seal_key() -> Iterator[None]:
        raise click.ClickException(f"no audit seal key labelled {label!r} on the token: nothing sealed the log here")
        yield  # pragma: no cover - a generator, for contextmanager

    try:
        sealer = Pkcs11AuditSealer(pool, SystemClock(), settings.pkcs11_label_prefix, creation_lock=no_new_seal_key)
        verified = verify_log(SqlAuditRepository(engine), sealer)
    except KmsError as error:
        click.echo(f"error: {error.code}: {error.message}", err=True)
        sys.exit(1)
    finally:
        pool.close()
        engine.dispose()
    return AuditVerification(
        verified.intact, verified.records, verified.checkpoints, verified.problem_seq, verified.problem
    )


@audit.command()
@click.option("--since", type=click.DateTime(), default=None, help="From this time (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Before this time (UTC).")
@click.option("--key-id", default="", help="Only records of this key.")
@click.option("--identity", default="", help="Only records of this caller.")
@click.option("--after-seq", default=0, type=click.IntRange(min=0), help="Only records after this sequence number.")
@click.option(
    "--context",
    "-c",
    "context",
    multiple=True,
    metavar="NAME=VALUE",
    help="Only calls made with exactly this encryption context (repeat for each entry).",
)
@click.option("--output", "-o", type=click.File("w"), default="-", help="JSON lines go here (default stdout).")
@remote
def export(
    client: KmsClient,
    as_json: bool,
    since: datetime | None,
    until: datetime | None,
    key_id: str,
    identity: str,
    after_seq: int,
    context: tuple[str, ...],
    output: TextIO,
) -> None:
    """Write audit records as JSON lines, in sequence order."""
    from datetime import UTC

    events = client.audit_events(
        start_time=since.replace(tzinfo=UTC) if since else None,
        end_time=until.replace(tzinfo=UTC) if until else None,
        key_id=key_id,
        identity=identity,
        after_seq=after_seq,
        context=_pairs(context) or None,
        timeout=3600,
    )
    for event in events:
        record = asdict(event)
        record["time"] = event.time.isoformat() if event.time else None
        output.write(json.dumps(record) + "\n")


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, separator, rest = value.partition("=")
        if not separator or not name:
            raise click.BadParameter(f"a context entry looks like name=value, not {value[:40]!r}")
        pairs[name] = rest
    return pairs
