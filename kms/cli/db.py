"""kms db upgrade|current|verify|accept-restore."""

from __future__ import annotations

import sys

import click

from kms.app import build_operator_services
from kms.cli.common import local_settings
from kms.cli.output import console, emit_json
from kms.config import Settings
from kms.errors import KmsError
from kms.store.database import current_revision, make_engine
from kms.store.database import upgrade as upgrade_schema


@click.group()
def db() -> None:
    """Manage the metadata database schema."""


@db.command()
@local_settings
def upgrade(settings: Settings) -> None:
    """Migrate the database to the newest schema (the server also does this at start)."""
    engine = make_engine(settings.database_url_or_default())
    try:
        upgrade_schema(engine)
        click.echo(f"schema at revision {current_revision(engine)}")
    finally:
        engine.dispose()


@db.command()
@local_settings
def current(settings: Settings) -> None:
    """Print the schema revision of the database."""
    engine = make_engine(settings.database_url_or_default())
    try:
        click.echo(current_revision(engine) or "empty")
    finally:
        engine.dispose()


@db.command()
@click.option("--json", "as_json", is_flag=True)
@local_settings
def verify(settings: Settings, as_json: bool) -> None:
    """Check every protected row (keys, grants, memberships, erasure receipts) against the
    HSM-sealed metadata ledger, and the ledger against its HSM anchor; list what does not verify;
    exit 1 if any."""
    services = build_operator_services(settings)
    try:
        services.integrity.catch_up()
        problems = services.integrity.verify_rows(
            services.repository.all_keys(), services.policies.stored(), services.subject_repository.all_erasures()
        )
    except KmsError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(1)
    finally:
        services.close()
    if as_json:
        emit_json({"ledger_entries": services.integrity.seq, "problems": problems})
    else:
        for problem in problems:
            console.print(f"[red]{problem.kind:<7}[/red] {problem.name!r}: {problem.problem}")
        if not problems:
            console.print(f"every protected row verifies ({services.integrity.seq} ledger entries)")
    sys.exit(1 if problems else 0)


@db.command(name="accept-restore")
@click.option("--yes", is_flag=True, help="Confirm: the database was restored on purpose.")
@local_settings
def accept_restore(settings: Settings, yes: bool) -> None:
    """After restoring the database from a backup on purpose: accept its older metadata.

    The service refuses a database whose ledger is behind the HSM anchor (a rollback could bring
    back revoked grants or disabled versions). This moves the anchor back to the restored
    ledger's end, if that ledger verifies in itself. Changes made after the backup are forgotten:
    revoke and disable again what was revoked and disabled since.
    """
    if not yes:
        raise click.UsageError("pass --yes to confirm that the database was restored on purpose")
    services = build_operator_services(settings)
    try:
        before, after = services.integrity.accept_restore(services.anchor)
    except KmsError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(1)
    finally:
        services.close()
    click.echo(f"anchor moved from ledger entry {before} to {after}; restart the servers")
