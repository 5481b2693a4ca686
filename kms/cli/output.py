"""Human-readable output by default, JSON with --json."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from datetime import datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from kms_client import Key

# Off a terminal rich would wrap at 80 columns, which breaks tables that scripts grep.
console = Console(width=None if sys.stdout.isatty() else 200)


def format_duration(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, sort_keys=False))


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def show_key(key: Key) -> None:
    console.print(f"[bold]{key.key_id}[/bold]" + (f"  {key.description}" if key.description else ""))
    console.print(f"  primary version         {key.primary_version}")
    console.print(f"  min decryption version  {key.min_decryption_version}")
    console.print(f"  rotation period         {format_duration(key.rotation_period)}")
    console.print(f"  next rotation           {_time(key.next_rotation_time)}")
    console.print(f"  created                 {_time(key.create_time)}")
    console.print(f"  storage of new versions {key.storage}")
    console.print(f"  purpose                 {key.purpose}")
    if key.subject_field:
        console.print(f"  subject field           {key.subject_field}")
        console.print(f"  erasure finality        {format_duration(key.erasure_finality)}")
    if key.retention_period is not None:
        console.print(f"  retention period        {format_duration(key.retention_period)}")
    table = Table(box=None, pad_edge=False)
    for column in (
        "VERSION",
        "STATE",
        "CREATED",
        "DESTROY TIME",
        "ISSUED",
        "DECRYPTS",
        "LAST USED",
        "STORED",
        "HSM LABEL / ROOT KEY",
        "ID",
    ):
        table.add_column(column)
    for version in key.versions:
        marker = " *" if version.version == key.primary_version else ""
        table.add_row(
            f"{version.version}{marker}",
            version.state,
            _time(version.create_time),
            _time(version.destroy_time),
            str(version.data_keys_issued),
            str(version.decrypts),
            _time(version.last_used_time),
            version.storage,
            version.hsm_label if version.storage == "HSM_OBJECT" else f"root {version.root_key_id}",
            version.hsm_object_id,
        )
    console.print(table)


def show_keys(keys: list[Key]) -> None:
    table = Table(box=None, pad_edge=False)
    for column in ("KEY ID", "PRIMARY", "VERSIONS", "ROTATION", "NEXT ROTATION", "DESCRIPTION"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            key.key_id,
            str(key.primary_version),
            str(len(key.versions)),
            format_duration(key.rotation_period),
            _time(key.next_rotation_time),
            key.description,
        )
    console.print(table)
