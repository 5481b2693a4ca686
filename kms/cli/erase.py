"""kms erase KEY SUBJECT | kms erase status KEY: forget a data subject, and show the receipts."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from kms.cli.common import remote
from kms.cli.output import console, emit_json
from kms_client import Erasure, KmsClient


class _EraseGroup(click.Group):
    """``kms erase KEY SUBJECT`` erases; ``kms erase status KEY`` lists. Anything that is not a
    subcommand's name is the erasing form, so that the contract's short form works; for a key
    literally named "status", ``kms erase subject status SUBJECT`` says which is meant."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["subject", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_EraseGroup)
def erase() -> None:
    """Erase one data subject of a key with a subject field (KEY SUBJECT), or list a key's erasures
    and when each is final in backups (status KEY). See docs/privacy.md."""


@erase.command(name="subject")
@click.argument("key_id")
@click.argument("subject")
@remote
def subject(client: KmsClient, as_json: bool, key_id: str, subject: str) -> None:
    """Erase SUBJECT of KEY_ID: its data keys stop opening everywhere. "-" reads the subject from
    standard input (so that it does not show in the process list or the shell's history)."""
    if subject == "-":
        subject = sys.stdin.readline().rstrip("\n")
    receipt = client.erase_subject(key_id, subject)
    if as_json:
        emit_json(receipt)
        return
    console.print(f"erased: key {receipt.key_id}, subject digest {receipt.subject_digest}")
    console.print(f"  by {receipt.erased_by} at {_time(receipt.erase_time)}")
    if not receipt.subject_known:
        console.print("  no data key had been issued for this subject; none will be")
    console.print(f"  final in backups once version {receipt.final_after_version} is destroyed: {_finality(receipt)}")


@erase.command()
@click.argument("key_id")
@click.option("--page-size", default=0, help="Erasures per request (the command pages through all).")
@remote
def status(client: KmsClient, as_json: bool, key_id: str, page_size: int) -> None:
    """List KEY_ID's erasures, newest first: after which version's destruction each is final in
    backups, whether it is, and when that was or is scheduled."""
    erasures = list(client.iter_erasures(key_id, page_size=page_size))
    if as_json:
        emit_json(erasures)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("ERASED", "SUBJECT DIGEST", "BY", "FINAL AFTER VERSION", "FINAL", "FINAL TIME", "AUDIT SEQ"):
        table.add_column(column)
    for receipt in erasures:
        table.add_row(
            _time(receipt.erase_time),
            receipt.subject_digest,
            receipt.erased_by,
            str(receipt.final_after_version),
            "yes" if receipt.final else "no",
            _time(receipt.final_time) + ("" if receipt.final or receipt.final_time is None else " (expected)"),
            str(receipt.audit_seq or "-"),
        )
    console.print(table)
    pending = sum(1 for receipt in erasures if not receipt.final)
    console.print(f"{len(erasures)} erasures, {pending} not final yet")


def _finality(receipt: Erasure) -> str:
    if receipt.final:
        return f"final since {_time(receipt.final_time)}"
    if receipt.final_time is None:
        return "not scheduled (the key has no erasure_finality)"
    return f"scheduled for {_time(receipt.final_time)}"


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"
