"""kms pseudonymize: one column of a CSV on stdin replaced by tokens, to stdout.

The CSV's first row names the columns. Rows stream through in batches (1000 values per
Pseudonymize call), so memory holds one batch whatever the input's size. Every row gets a token
of the same key version: the one the first batch used (the key's primary unless --key-version
pins one), so a rotation during a run cannot split a file between two versions. An empty cell
stays empty (a missing value is not a value to hide). On an error, the rows before the failing
batch are already on stdout; the exit status (1) says the output is incomplete.
"""

from __future__ import annotations

import csv
import io
import itertools
import sys
from collections.abc import Iterator

import click

from kms.cli.common import remote
from kms.cli.crypt import _parse_context
from kms_client import KmsClient, KmsError, token_version

BATCH = 1000


@click.command()
@click.argument("key_id")
@click.option("--column", required=True, help="Name (in the header row) of the column to replace by tokens.")
@click.option(
    "-c",
    "--context",
    "context_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Context entry binding the tokens; repeat for more. Another context gives unrelated tokens.",
)
@click.option(
    "--key-version",
    type=click.IntRange(min=1),
    default=None,
    help="The key version to use (default: the primary), to join with tokens made before a rotation.",
)
@click.option("--delimiter", default=",", show_default=True, help="Field delimiter of the input and output.")
@remote
def pseudonymize(
    client: KmsClient,
    as_json: bool,
    key_id: str,
    column: str,
    context_items: tuple[str, ...],
    key_version: int | None,
    delimiter: str,
) -> None:
    """Replace COLUMN of a CSV on stdin by tokens of KEY_ID (a PSEUDONYMIZE key), to stdout."""
    if len(delimiter) != 1:
        raise click.BadParameter("must be one character", param_hint="--delimiter")
    context = _parse_context(context_items)
    source = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
    sink = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=False)
    reader = csv.reader(source, delimiter=delimiter)
    writer = csv.writer(sink, delimiter=delimiter, lineterminator="\n")
    header = next(reader, None)
    if header is None:
        return
    if column not in header:
        raise click.UsageError(f"the header row has no column {column!r}")
    position = header.index(column)
    writer.writerow(header)
    done = 0
    for rows in _batches(reader):
        values = [row[position] if position < len(row) else "" for row in rows]
        present = [value for value in values if value]
        results = (
            client.pseudonymize_results(present, key_id=key_id, context=context, key_version=key_version)
            if present
            else []
        )
        tokens = iter(results)
        for offset, (row, value) in enumerate(zip(rows, values, strict=True)):
            if not value:
                writer.writerow(row)
                continue
            token = next(tokens)
            if isinstance(token, KmsError):
                sink.flush()
                click.echo(f"error: row {done + offset + 1}: {token.code.name}: {token.message}", err=True)
                sys.exit(1)
            key_version = key_version or token_version(token)
            writer.writerow([*row[:position], token, *row[position + 1 :]])
        done += len(rows)
        sink.flush()


def _batches(reader: Iterator[list[str]]) -> Iterator[list[list[str]]]:
    while batch := list(itertools.islice(reader, BATCH)):
        yield batch
