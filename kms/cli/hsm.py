"""kms hsm init|check."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kms.app import build_services
from kms.cli.common import local_settings
from kms.cli.output import console, emit_json
from kms.config import Settings
from kms.errors import KmsError
from kms.hsm import softhsm


@click.group()
def hsm() -> None:
    """Development HSM token and HSM/database consistency."""


@hsm.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default="kms-data", show_default=True)
@click.option("--label", default=softhsm.DEFAULT_TOKEN_LABEL, show_default=True, help="Token label.")
def init(data_dir: str, label: str) -> None:
    """Create a SoftHSM2 token for development (idempotent) and print how to use it."""
    token = softhsm.provision(Path(data_dir), label)
    click.echo(f"export SOFTHSM2_CONF={token.config_file}")
    click.echo(f"export KMS_PKCS11_MODULE={token.module_path}")
    click.echo(f"export KMS_PKCS11_TOKEN_LABEL={token.token_label}")
    click.echo(f"export KMS_PKCS11_PIN_FILE={token.pin_file}")


@hsm.command()
@click.option("--repair/--no-repair", default=False, help="Adopt leftover master keys (the server does this at start).")
@click.option("--json", "as_json", is_flag=True)
@local_settings
def check(settings: Settings, repair: bool, as_json: bool) -> None:
    """Compare HSM objects with recorded key versions; exit 1 if they disagree."""
    services = build_services(settings)
    try:
        report = services.reconciler.reconcile(repair=repair)
    except KmsError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(1)
    finally:
        services.close()
    if as_json:
        emit_json(report)
    else:
        for version in report.adopted:
            console.print(f"adopted    {version.master_key_label}  ({version.master_key_id})")
        for version in report.missing:
            console.print(f"[red]MISSING[/red]    {version.master_key_label}  ({version.master_key_id}) state {version.state.value}")
        for found in report.unresolved:
            console.print(f"unresolved {found.label}  ({found.master_key_id}) sound={found.sound}")
        if report.consistent:
            console.print("HSM and database agree")
    sys.exit(0 if report.consistent else 1)
