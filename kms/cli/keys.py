"""kms keys create|get|list|rotate."""

from __future__ import annotations

from datetime import timedelta

import click

from kms.cli.common import DURATION, remote
from kms.cli.output import emit_json, show_key, show_keys
from kms_client import KmsClient


@click.group()
def keys() -> None:
    """Create, inspect and rotate keys."""


@keys.command()
@click.argument("key_id")
@click.option("--description", default="", help="Free text shown with the key.")
@click.option("--rotation-period", type=DURATION, default=None, help="Rotate on this schedule (e.g. 30d).")
@remote
def create(client: KmsClient, as_json: bool, key_id: str, description: str, rotation_period: timedelta | None) -> None:
    """Create KEY_ID with version 1 generated in the HSM."""
    key = client.create_key(key_id, description=description, rotation_period=rotation_period)
    emit_json(key) if as_json else show_key(key)


@keys.command()
@click.argument("key_id")
@remote
def get(client: KmsClient, as_json: bool, key_id: str) -> None:
    """Show KEY_ID and its versions."""
    key = client.get_key(key_id)
    emit_json(key) if as_json else show_key(key)


@keys.command(name="list")
@click.option("--page-size", default=0, help="Keys per request (the command pages through all).")
@remote
def list_(client: KmsClient, as_json: bool, page_size: int) -> None:
    """List all keys."""
    all_keys = list(client.iter_keys(page_size=page_size))
    emit_json(all_keys) if as_json else show_keys(all_keys)


@keys.command()
@click.argument("key_id")
@remote
def rotate(client: KmsClient, as_json: bool, key_id: str) -> None:
    """Add a new version of KEY_ID and make it primary."""
    key = client.rotate_key(key_id)
    emit_json(key) if as_json else show_key(key)
