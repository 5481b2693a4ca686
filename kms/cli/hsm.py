"""kms hsm init|check."""

from __future__ import annotations

import sys
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn

from kms.app import Services, build_operator_services
from kms.cli.common import local_settings
from kms.cli.output import console, emit_json
from kms.config import Settings
from kms.domain.keys import KeyVersion
from kms.errors import KmsError, SealKeyUntrusted
from kms.hsm import softhsm
from kms.hsm.audit_seal import Pkcs11AuditSealer


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
    """Compare HSM objects with recorded key versions, and vet the audit seal key and the
    recorded versions' objects (kms.hsm.trust); exit 1 if anything disagrees or is untrusted."""
    services = build_operator_services(settings)
    try:
        seal_key = _seal_key_status(services, settings)
        report = services.reconciler.reconcile(repair=repair)
        untrusted = _untrusted_versions(services)
    except KmsError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(1)
    finally:
        services.close()
    trusted = seal_key["state"] != "untrusted" and not untrusted
    if as_json:
        emit_json(
            _plain(
                {
                    **{f.name: getattr(report, f.name) for f in fields(report)},
                    "seal_key": seal_key,
                    "untrusted": untrusted,
                }
            )
        )
    else:
        for version in report.adopted:
            console.print(f"adopted    {version.master_key_label}  ({version.master_key_id})")
        for version in report.missing:
            console.print(
                f"[red]MISSING[/red]    {version.master_key_label}  ({version.master_key_id})"
                f" state {version.state.value}"
            )
        for version in untrusted:
            console.print(
                f"[red]UNTRUSTED[/red]  {version.master_key_label}  ({version.master_key_id}) "
                "attributes do not prove in-HSM generation; the version is not used"
            )
        for found in report.unresolved:
            console.print(f"unresolved {found.label}  ({found.master_key_id}) sound={found.sound}")
        if seal_key["state"] == "untrusted":
            console.print(f"[red]UNTRUSTED[/red]  audit seal key: {seal_key['problem']}")
        else:
            key_id = f"  ({seal_key['key_id']})" if seal_key["key_id"] else ""
            console.print(f"audit seal key {seal_key['state']}{key_id}")
        if report.consistent and trusted:
            console.print("HSM and database agree")
    sys.exit(0 if report.consistent and trusted else 1)


def _plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts and enums as their values (emit_json knows no enums)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.repr}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _seal_key_status(services: Services, settings: Settings) -> dict[str, str | None]:
    """ "trusted" (with its CKA_ID), "absent" (created on first use) or "untrusted" (with why),
    from a search of the token that creates nothing."""
    sealer = Pkcs11AuditSealer(services.pool, services.clock, settings.pkcs11_label_prefix)
    try:
        sealer.verify_pins()
    except SealKeyUntrusted as error:
        return {"state": "untrusted", "key_id": None, "problem": error.detail}
    key_id = sealer.pinned_key_id
    return {"state": "trusted" if key_id else "absent", "key_id": key_id, "problem": None}


def _untrusted_versions(services: Services) -> list[KeyVersion]:
    """Recorded versions whose HSM object is there but does not prove in-HSM generation."""
    unsound = {found.master_key_id for found in services.master_keys.list_objects() if not found.sound}
    if not unsound:
        return []
    return [
        version
        for key in services.repository.all_keys()
        for version in key.versions
        if version.master_key_id in unsound
    ]


@hsm.command(name="rotate-root")
@click.option("--json", "as_json", is_flag=True)
@local_settings
def rotate_root(settings: Settings, as_json: bool) -> None:
    """Make a new root key and re-wrap every stored version key under it (WRAPPED storage).

    Resumable: if an earlier run stopped with versions left under an older root, this carries
    on onto the newest root instead of making another. Servers keep serving meanwhile. Old roots
    stay until ``kms hsm retire-root``.
    """
    services = build_operator_services(settings)
    try:
        with Progress(
            TextColumn("re-wrapping"),
            BarColumn(),
            TextColumn("{task.completed} versions"),
            console=console,
            disable=as_json or not console.is_terminal,
        ) as progress:
            task = progress.add_task("rewrap", total=None)
            report = services.roots.rotate(on_progress=lambda moved: progress.advance(task, moved))
    except KmsError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(1)
    finally:
        services.close()
    if as_json:
        emit_json(report)
    else:
        what = "new root key" if report.created else "root key (resumed)"
        console.print(f"{what} {report.root_key_id}: {report.versions} versions of {report.keys} keys re-wrapped")
        if report.skipped:
            console.print(f"[yellow]{len(report.skipped)} keys changed meanwhile; run again to finish[/yellow]")
    sys.exit(1 if report.skipped else 0)


@hsm.command(name="retire-root")
@click.argument("root_key_id")
@local_settings
def retire_root(settings: Settings, root_key_id: str) -> None:
    """Destroy an old root key once no stored version is wrapped under it.

    Database backups taken before the root was rotated hold versions wrapped under it: after
    this they can never be opened again. That is the point when it is what you want (erasure
    in backups), and the risk when it is not.
    """
    services = build_operator_services(settings)
    try:
        services.roots.retire(root_key_id)
    except KmsError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(1)
    finally:
        services.close()
    console.print(f"root key {root_key_id} destroyed")
