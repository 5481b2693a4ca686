"""kms db upgrade|current."""

from __future__ import annotations

import click

from kms.cli.common import local_settings
from kms.config import Settings
from kms.store.database import current_revision, make_engine, upgrade as upgrade_schema


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
