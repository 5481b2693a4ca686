"""kms serve."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from kms import logs
from kms.api.server import ListenRefused
from kms.api.tls import CertificateUnusable
from kms.app import Application
from kms.config import Settings
from kms.errors import KmsError
from kms.hsm.module import ModuleUnusable


@click.command()
@click.option("--listen", default=None, help="HOST:PORT to serve on (KMS_LISTEN, default 127.0.0.1:50051).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Data directory (KMS_DATA_DIR, default ./kms-data).",
)
@click.option("--metrics-listen", default=None, help="HOST:PORT for Prometheus metrics (KMS_METRICS_LISTEN).")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None, help="KMS_LOG_FORMAT, default json.")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Server certificate chain, PEM (KMS_TLS_CERT). Re-read when it changes.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Server private key, PEM (KMS_TLS_KEY).",
)
@click.option(
    "--client-ca",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA that signs client certificates, PEM (KMS_CLIENT_CA): turns on mutual TLS.",
)
@click.option(
    "--dev",
    "dev_mode",
    is_flag=True,
    default=None,
    help="Development mode (KMS_DEV_MODE): plaintext on loopback, every local user is a superuser.",
)
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Once serving, write the port listened on to this file (for --listen HOST:0).",
)
def serve(
    listen: str | None,
    data_dir: str | None,
    metrics_listen: str | None,
    log_format: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    client_ca: str | None,
    dev_mode: bool | None,
    port_file: str | None,
) -> None:
    """Run the key management service until SIGTERM or SIGINT.

    The HSM PIN is read from KMS_PKCS11_PIN or KMS_PKCS11_PIN_FILE, never from a flag.
    """
    given = (
        ("listen", listen),
        ("data_dir", data_dir),
        ("metrics_listen", metrics_listen),
        ("log_format", log_format),
        ("tls_cert", tls_cert),
        ("tls_key", tls_key),
        ("client_ca", client_ca),
        ("dev_mode", dev_mode or None),
    )
    overrides: dict[str, Any] = {name: value for name, value in given if value is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as error:  # pydantic's ValidationError; inputs are hidden from its text
        click.echo(f"kms serve: {error}", err=True)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    try:
        app = Application(settings)
    except (ListenRefused, ModuleUnusable, ValueError, KmsError, CertificateUnusable) as error:
        click.echo(f"kms serve: {error}", err=True)
        sys.exit(2)

    def shutdown(signum: int, _frame: object) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    app.start()
    if port_file:
        write_port(Path(port_file), app.port)
    app.wait()


def write_port(path: Path, port: int) -> None:
    """Writes ``port`` and a newline to ``path`` so that a reader sees either no file or the
    whole number, never a part: written beside it first, then renamed over it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)
