"""kms encrypt | kms decrypt: envelope encryption of files, or of stdin to stdout.

Both stream in constant memory (kms_client's encrypt_stream/decrypt_stream). Output files are
written to a temporary file beside the target (mode 0600) and renamed into place only when the
whole input has been processed, so a failed or truncated decryption never leaves a plaintext
file that looks complete. On stdout, frames already authenticated have been written when a later
one fails: the exit status (1) is what says the output is incomplete.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from kms.cli.common import remote
from kms_client import DEFAULT_FRAME_SIZE, KmsClient

PROGRESS_THRESHOLD = 16 * 1024 * 1024


def register(cli: click.Group) -> None:
    cli.add_command(encrypt)
    cli.add_command(decrypt)


def _parse_context(items: tuple[str, ...]) -> dict[str, str]:
    context: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--context")
        if key in context:
            raise click.BadParameter(f"{key!r} given twice", param_hint="--context")
        context[key] = value
    return context


def _options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option(
                "-c",
                "--context",
                "context_items",
                multiple=True,
                metavar="KEY=VALUE",
                help="Encryption context entry; repeat for more. Decrypt needs the same entries.",
            ),
            click.option(
                "-i",
                "--input",
                "input_path",
                default="-",
                show_default=True,
                type=click.Path(dir_okay=False, allow_dash=True),
                help="Input file, - for stdin.",
            ),
            click.option(
                "-o",
                "--output",
                "output_path",
                default="-",
                show_default=True,
                type=click.Path(dir_okay=False, allow_dash=True),
                help="Output file, - for stdout.",
            ),
            click.option(
                "--progress/--no-progress",
                default=None,
                help="Progress bar on stderr [default: on a terminal, for inputs of 16 MiB or more "
                "or of unknown size].",
            ),
        )
    ):
        command = option(command)
    return command


class _Counted:
    """A binary source that reports every byte it hands out."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]) -> None:
        self._raw = raw
        self._advance = advance

    def readinto(self, view: memoryview) -> int:
        count = self._raw.readinto(view)  # type: ignore[attr-defined]
        if count:
            self._advance(count)
        return count or 0


@contextlib.contextmanager
def _source(path: str, show: bool | None, label: str) -> Iterator[BinaryIO]:
    raw = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        size = None if path == "-" else os.fstat(raw.fileno()).st_size
        if show is None:
            show = sys.stderr.isatty() and (size is None or size >= PROGRESS_THRESHOLD)
        if not show:
            yield raw
            return
        progress = Progress(
            TextColumn(label),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        with progress:
            task = progress.add_task(label, total=size)
            yield _Counted(raw, lambda count: progress.advance(task, count))  # type: ignore[misc]
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


@contextlib.contextmanager
def _destination(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".kms-", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _report(as_json: bool, output_path: str, summary: dict[str, Any]) -> None:
    if output_path == "-":
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in summary.items()))


@click.command()
@click.option("--key-id", required=True, help="Key whose data key encrypts the input.")
@_options
@click.option(
    "--frame-size",
    type=int,
    default=DEFAULT_FRAME_SIZE,
    show_default=True,
    help="Plaintext bytes per authenticated frame.",
)
@remote
def encrypt(
    client: KmsClient,
    as_json: bool,
    key_id: str,
    context_items: tuple[str, ...],
    input_path: str,
    output_path: str,
    progress: bool | None,
    frame_size: int,
) -> None:
    """Encrypt a file (or stdin) under a fresh data key of KEY_ID."""
    context = _parse_context(context_items)
    if output_path == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write ciphertext to a terminal: use --output or redirect stdout")
    with _source(input_path, progress, "encrypting") as src, _destination(output_path) as dst:
        count = client.encrypt_stream(src, dst, key_id=key_id, context=context, frame_size=frame_size)
    _report(
        as_json, output_path, {"key_id": key_id, "context": context, "plaintext_bytes": count, "output": output_path}
    )


@click.command()
@_options
@remote
def decrypt(
    client: KmsClient,
    as_json: bool,
    context_items: tuple[str, ...],
    input_path: str,
    output_path: str,
    progress: bool | None,
) -> None:
    """Decrypt a file (or stdin) made by kms encrypt, given the same context."""
    context = _parse_context(context_items)
    with _source(input_path, progress, "decrypting") as src, _destination(output_path) as dst:
        count = client.decrypt_stream(src, dst, context=context)
    _report(as_json, output_path, {"context": context, "plaintext_bytes": count, "output": output_path})
