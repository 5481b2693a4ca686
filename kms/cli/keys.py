"""kms keys create|get|list|rotate."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TypedDict

import click

from kms.cli.common import DURATION, remote
from kms.cli.output import emit_json, show_key, show_keys
from kms.rewrap.report import Report
from kms_client import KmsClient


@click.group()
def keys() -> None:
    """Create, inspect and rotate keys."""


@keys.command()
@click.argument("key_id")
@click.option("--description", default="", help="Free text shown with the key.")
@click.option("--rotation-period", type=DURATION, default=None, help="Rotate on this schedule (e.g. 30d).")
@click.option(
    "--storage",
    type=click.Choice(["wrapped", "hsm-object"]),
    default=None,
    help="Where its versions live (default: the server's, KMS_KEY_STORAGE): wrapped under an HSM root "
    "key in the database, or a token object each.",
)
@click.option(
    "--purpose",
    type=click.Choice(["encrypt-decrypt", "pseudonymize"]),
    default="encrypt-decrypt",
    show_default=True,
    help="What its versions do: wrap data keys, or make tokens (kms pseudonymize).",
)
@click.option(
    "--subject-field",
    default="",
    help="Encryption-context entry naming the data subject (e.g. user_id): a key per subject, and "
    "kms erase forgets one (docs/privacy.md). Fixed for the key's life.",
)
@click.option(
    "--retention-period",
    type=DURATION,
    default=None,
    help="Destroy versions that stopped being primary longer ago than this (e.g. 90d); with a daily "
    "--rotation-period, older data becomes unreadable by itself.",
)
@click.option(
    "--erasure-finality",
    type=DURATION,
    default=None,
    help="With --subject-field: every erasure is final in database backups within this (default: the "
    "server's, KMS_ERASURE_FINALITY_DEFAULT, 30d).",
)
@remote
def create(
    client: KmsClient,
    as_json: bool,
    key_id: str,
    description: str,
    rotation_period: timedelta | None,
    storage: str | None,
    purpose: str,
    subject_field: str,
    retention_period: timedelta | None,
    erasure_finality: timedelta | None,
) -> None:
    """Create KEY_ID with version 1 generated in the HSM."""
    key = client.create_key(
        key_id,
        description=description,
        rotation_period=rotation_period,
        storage=None if storage is None else storage.upper().replace("-", "_"),
        purpose=purpose.upper().replace("-", "_"),
        subject_field=subject_field,
        retention_period=retention_period,
        erasure_finality=erasure_finality,
    )
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


class _Changes(TypedDict, total=False):  # the keyword arguments of KmsClient.update_key
    description: str
    rotation_period: timedelta | None
    min_decryption_version: int
    retention_period: timedelta | None
    erasure_finality: timedelta | None


@keys.command()
@click.argument("key_id")
@click.option("--description", default=None, help="New description.")
@click.option("--rotation-period", type=DURATION, default=None, help="New rotation period (e.g. 90d).")
@click.option("--no-rotation", is_flag=True, help="Stop scheduled rotation.")
@click.option(
    "--min-decryption-version",
    type=click.IntRange(min=1),
    default=None,
    help="Versions below this stop decrypting at once (the single switch to cut off old versions).",
)
@click.option("--retention-period", type=DURATION, default=None, help="Destroy versions superseded longer ago.")
@click.option("--no-retention", is_flag=True, help="Stop destroying versions by retention.")
@click.option("--erasure-finality", type=DURATION, default=None, help="New bound on erasures being final in backups.")
@remote
def update(
    client: KmsClient,
    as_json: bool,
    key_id: str,
    description: str | None,
    rotation_period: timedelta | None,
    no_rotation: bool,
    min_decryption_version: int | None,
    retention_period: timedelta | None,
    no_retention: bool,
    erasure_finality: timedelta | None,
) -> None:
    """Change KEY_ID's description, rotation schedule, decryption floor, retention or erasure finality."""
    if no_rotation and rotation_period is not None:
        raise click.UsageError("--rotation-period and --no-rotation contradict each other")
    changes: _Changes = {}
    if description is not None:
        changes["description"] = description
    if rotation_period is not None or no_rotation:
        changes["rotation_period"] = rotation_period
    if min_decryption_version is not None:
        changes["min_decryption_version"] = min_decryption_version
    if no_retention and retention_period is not None:
        raise click.UsageError("--retention-period and --no-retention contradict each other")
    if retention_period is not None or no_retention:
        changes["retention_period"] = retention_period
    if erasure_finality is not None:
        changes["erasure_finality"] = erasure_finality
    if not changes:
        raise click.UsageError("nothing to change")
    key = client.update_key(key_id, **changes)
    emit_json(key) if as_json else show_key(key)


@keys.command()
@click.argument("key_id")
@click.argument("version", type=click.IntRange(min=1))
@remote
def disable(client: KmsClient, as_json: bool, key_id: str, version: int) -> None:
    """Stop VERSION of KEY_ID from decrypting (reversible)."""
    key = client.disable_key_version(key_id, version)
    emit_json(key) if as_json else show_key(key)


@keys.command()
@click.argument("key_id")
@click.argument("version", type=click.IntRange(min=1))
@remote
def enable(client: KmsClient, as_json: bool, key_id: str, version: int) -> None:
    """Let a disabled VERSION of KEY_ID decrypt again."""
    key = client.enable_key_version(key_id, version)
    emit_json(key) if as_json else show_key(key)


@keys.command(name="schedule-destruction")
@click.argument("key_id")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--pending-window", type=DURATION, default=None, help="Wait before destroying (default 30d).")
@remote
def schedule_destruction(
    client: KmsClient, as_json: bool, key_id: str, version: int, pending_window: timedelta | None
) -> None:
    """Destroy VERSION's master key once the pending window has passed (cancellable until then)."""
    key = client.schedule_key_version_destruction(key_id, version, pending_window=pending_window)
    emit_json(key) if as_json else show_key(key)


@keys.command(name="cancel-destruction")
@click.argument("key_id")
@click.argument("version", type=click.IntRange(min=1))
@remote
def cancel_destruction(client: KmsClient, as_json: bool, key_id: str, version: int) -> None:
    """Cancel a scheduled destruction; the version is left DISABLED."""
    key = client.cancel_key_version_destruction(key_id, version)
    emit_json(key) if as_json else show_key(key)


@keys.command()
@click.argument("key_id")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--min-idle", type=DURATION, default=None, help="Refuse if used more recently (default 7d).")
@click.option("--pending-window", type=DURATION, default=None, help="Wait before destroying (default 30d).")
@click.option(
    "--rewrap-report",
    "reports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Report of a kms rewrap run (--report); refuse if it left items on VERSION or did not finish.",
)
@remote
def retire(
    client: KmsClient,
    as_json: bool,
    key_id: str,
    version: int,
    min_idle: timedelta | None,
    pending_window: timedelta | None,
    reports: tuple[Path, ...],
) -> None:
    """Disable VERSION and schedule its destruction, unless anything shows it is still in use."""
    for path in reports:
        _require_clear(path, key_id, version)
    key = client.retire_key_version(key_id, version, min_idle=min_idle, pending_window=pending_window)
    emit_json(key) if as_json else show_key(key)


def _require_clear(path: Path, key_id: str, version: int) -> None:
    """Refuses unless the rewrap report at ``path`` shows its corpus holds nothing under the version."""
    report = Report.from_dict(json.loads(path.read_text()))
    if not report.complete or report.dry_run:
        raise click.ClickException(f"{path}: that rewrap run did not complete (or was a dry run); finish it first")
    if left := report.remaining_on(key_id, version):
        raise click.ClickException(
            f"{path}: {left} items are still under {key_id} version {version} (failed, refused or changed meanwhile: "
            "see the report's failures); deal with them and re-run kms rewrap until none are"
        )
    if report.unknown_version:
        raise click.ClickException(
            f"{path}: {report.unknown_version} items could not be read, so that run cannot show that none is under "
            f"{key_id} version {version}; fix or remove them (see the report's failures) and re-run kms rewrap"
        )


@keys.command()
@click.argument("key_id")
@click.option(
    "--to",
    "storage",
    type=click.Choice(["wrapped", "hsm-object"]),
    default="wrapped",
    show_default=True,
    help="Where the key's versions should live from now on.",
)
@remote
def migrate(client: KmsClient, as_json: bool, key_id: str, storage: str) -> None:
    """Move KEY_ID into the key hierarchy (or out of it): new versions are made the new way.

    A version's key cannot move between an HSM object and wrapped storage (HSM objects are never
    extractable), so migrating is: change the key's storage, then rotate. The old versions keep
    decrypting; re-wrap what they protect (kms rewrap) and retire them as usual.
    """
    client.update_key(key_id, storage="WRAPPED" if storage == "wrapped" else "HSM_OBJECT")
    key = client.rotate_key(key_id)
    emit_json(key) if as_json else show_key(key)
