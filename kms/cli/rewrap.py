"""kms rewrap table|files: move a stored corpus onto the primary key versions."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from sqlalchemy.exc import SQLAlchemyError

from kms.cli.common import remote
from kms.cli.output import console, emit_json
from kms.rewrap.checkpoint import CheckpointMismatch
from kms.rewrap.job import JobOptions, RewrapJob, Source
from kms.rewrap.report import Report
from kms_client import KmsClient, tls_credentials


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, separator, rest = value.partition("=")
        if not separator or not name:
            raise click.BadParameter(f"{what} must look like name=value, not {value!r}")
        pairs[name] = rest
    return pairs


def job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--batch-size",
                default=500,
                show_default=True,
                type=click.IntRange(1, 1000),
                help="Items per batch; memory holds one batch.",
            ),
            click.option(
                "--rate",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="At most this many items per second.",
            ),
            click.option(
                "--parallel",
                default=4,
                show_default=True,
                type=click.IntRange(1, 64),
                help="Batches processed at once, each over a connection of its own to the service (with "
                "kms serve --workers, connections spread over its worker processes); memory holds two "
                "batches per connection.",
            ),
            click.option("--destination-key-id", default="", help="Move the data keys to this key instead."),
            click.option(
                "--checkpoint",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Progress file (default: .kms-rewrap-<job>.json here); a rerun resumes from it.",
            ),
            click.option("--restart", is_flag=True, help="Ignore an existing checkpoint and start over."),
            click.option("--dry-run", is_flag=True, help="Re-wrap and verify, but write nothing."),
            click.option(
                "--report",
                "report_file",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Also write the report as JSON here (kms keys retire --rewrap-report reads it).",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group()
def rewrap() -> None:
    """Re-wrap stored wrapped keys or SDK ciphertexts onto the primary key versions.

    Resumable (checkpoint after every batch), idempotent, verifies every new value before
    writing it, and never overwrites a value the application changed meanwhile.
    """


@rewrap.command()
@click.option("--database-url", required=True, help="SQLAlchemy URL of the application's database.")
@click.option("--table", required=True, help="Table (schema.table allowed).")
@click.option("--column", required=True, help="Column holding wrapped keys or SDK ciphertexts.")
@click.option("--primary-key", required=True, help="Single-column primary key, used for order and resumption.")
@click.option("--context", "context_pairs", multiple=True, help="name=value added to bare wrapped keys' context.")
@click.option(
    "--context-column",
    "context_columns",
    multiple=True,
    help="name=column: a context entry taken from each row (bare wrapped keys).",
)
@job_options
@remote
def table(
    client: KmsClient,
    as_json: bool,
    database_url: str,
    table: str,
    column: str,
    primary_key: str,
    context_pairs: tuple[str, ...],
    context_columns: tuple[str, ...],
    **options: Any,
) -> None:
    """Re-wrap a table column."""
    from kms.rewrap.table import TableSource

    try:
        source = TableSource(
            database_url,
            table,
            column,
            primary_key,
            context=_pairs(context_pairs, "--context"),
            context_columns=_pairs(context_columns, "--context-column"),
        )
    except (ValueError, SQLAlchemyError) as error:
        raise click.ClickException(f"cannot read {table}: {error}") from None
    _run(client, source, as_json, **options)


@rewrap.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pattern", default="*", show_default=True, help="Glob of file names to consider (recursive).")
@job_options
@remote
def files(client: KmsClient, as_json: bool, directory: Path, pattern: str, **options: Any) -> None:
    """Re-wrap SDK ciphertext files under DIRECTORY onto their keys' primary versions (headers
    only; bodies are copied as they are)."""
    from kms.rewrap.files import DirectorySource

    if options["destination_key_id"]:
        # Every file is an SDK ciphertext, which names its key in its authenticated header: the
        # job would refuse each one, so refuse the whole job before reading anything.
        raise click.UsageError(
            "--destination-key-id: SDK ciphertexts cannot move to another key (the key id in their header is "
            "authenticated); that takes decrypting and re-encrypting them. Without the option, kms rewrap files "
            "re-wraps each file onto the primary version of the key its header names."
        )
    _run(client, DirectorySource(directory, pattern), as_json, **options)


def _run(
    client: KmsClient,
    source: Source,
    as_json: bool,
    *,
    batch_size: int,
    rate: float | None,
    parallel: int,
    destination_key_id: str,
    checkpoint: Path | None,
    restart: bool,
    dry_run: bool,
    report_file: Path | None,
) -> None:
    options = JobOptions(
        batch_size=batch_size, rate=rate, dry_run=dry_run, destination_key_id=destination_key_id, parallel=parallel
    )
    job = RewrapJob(client, source, options)
    options.checkpoint = checkpoint or Path(f".kms-rewrap-{job.fingerprint()[:16]}.json")
    if restart:
        options.checkpoint.unlink(missing_ok=True)
    err = Console(stderr=True)
    if not dry_run:
        err.print(f"checkpoint: {options.checkpoint}")
    with Progress(
        TextColumn("[bold]re-wrapping"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>8} items/s"),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=False,
    ) as progress:
        task = progress.add_task("rewrap", total=source.count(), rate="-")
        job.on_progress = lambda count: progress.update(
            task, advance=count, rate=f"{progress.tasks[task].speed or 0:.0f}"
        )
        job.lanes = _lane_clients(parallel) if parallel > 1 else ()
        try:
            report = job.run()
        except CheckpointMismatch as error:
            raise click.ClickException(f"{error} (--restart removes it and starts over)") from None
        finally:
            for lane in job.lanes:
                lane.close()
    if report_file is not None:
        report_file.write_text(json.dumps(asdict(report), indent=2))
    emit_json(report) if as_json else _show(report)
    sys.exit(1 if report.failed else 0)


def _lane_clients(count: int) -> list[KmsClient]:
    """``count`` clients made as ``remote`` made the command's, each on a connection of its own:
    gRPC lets channels to one target share a connection unless told not to, and with kms serve
    --workers each connection is served by one worker process."""
    params = click.get_current_context().params
    files = (params.get("ca_file"), params.get("cert_file"), params.get("key_file"))
    credentials = tls_credentials(*files) if any(files) else None
    return [
        KmsClient(
            params["target"],
            credentials=credentials,
            insecure=params.get("insecure", False),
            timeout=params.get("timeout"),
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(count)
    ]


def _show(report: Report) -> None:
    verb = "would re-wrap" if report.dry_run else "re-wrapped"
    console.print(f"scanned              {report.scanned}")
    console.print(f"{verb:<21}{report.rewrapped}")
    console.print(f"already current      {report.already_current}")
    console.print(f"changed by the application meanwhile (left alone)  {report.changed_concurrently}")
    console.print(f"failed               {report.failed}")
    for reason, count in sorted(report.failures.items(), key=lambda item: -item[1]):
        console.print(f"  {count:>8}  {reason}")
    if report.refused:
        console.print(
            f"of which refused     {report.refused}: left unchanged and counted as still on their versions, for "
            "the reasons listed above (to move an SDK ciphertext to another key, decrypt it and encrypt it again "
            "with the SDK; a key with a retention_period is never re-wrapped)"
        )
    if report.unknown_version:
        console.print(
            f"of which unreadable  {report.unknown_version}: under versions unknown, so kms keys retire "
            "--rewrap-report refuses every version until they are fixed or removed and the job is run again"
        )
    for key_id, versions in sorted(report.remaining.items()):
        left = ", ".join(f"v{v}: {n}" for v, n in sorted(versions.items(), key=lambda item: int(item[0])))
        console.print(f"still on old versions of {key_id}: {left}")
