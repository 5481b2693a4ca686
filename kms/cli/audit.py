"""kms audit verify|export."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime

import click

from kms.cli.common import remote
from kms.cli.output import console, emit_json
from kms_client import KmsClient


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command()
@remote
def verify(client: KmsClient, as_json: bool) -> None:
    """Check the whole hash chain and every checkpoint; say where the first problem is (exit 1)."""
    result = client.verify_audit_log(timeout=3600)
    if as_json:
        emit_json(result)
    elif result.intact:
        console.print(f"intact: {result.records_checked} records, {result.checkpoints_checked} checkpoints")
    else:
        console.print(f"[red]TAMPERED[/red] at record {result.problem_seq}: {result.problem}")
    sys.exit(0 if result.intact else 1)


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
    output,
) -> None:  # noqa: ANN001 - click file
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
