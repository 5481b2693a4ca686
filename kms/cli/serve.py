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
from kms.config import Settings
from kms.errors import KmsError
from kms.hsm.module import ModuleUnusable
from kms.workers import journals


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
@click.option(
    "--workers",
    default=None,
    help="Worker processes on the one port (KMS_WORKERS): a number, or auto for one per CPU. Unset: a single process.",
)
@click.option(
    "--worker-listen",
    default=None,
    help="With --workers, also serve each worker on an address of its own (KMS_WORKER_LISTEN): "
    "HOST:0 for free ports, HOST:P for P + worker index; workers.json in the data directory names them.",
)
@click.option("--worker-index", type=int, default=None, hidden=True)
@click.option("--supervisor-fd", type=int, default=None, hidden=True)
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
    workers: str | None,
    worker_listen: str | None,
    worker_index: int | None,
    supervisor_fd: int | None,
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
        ("workers", workers),
        ("worker_listen", worker_listen),
    )
    overrides: dict[str, Any] = {name: value for name, value in given if value is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as error:  # pydantic's ValidationError; inputs are hidden from its text
        click.echo(f"kms serve: {error}", err=True)
        sys.exit(2)
    if worker_index is not None and supervisor_fd is not None:
        sys.exit(_serve_as_worker(settings, worker_index, supervisor_fd))
    logs.configure(settings.log_level, settings.log_format)
    if settings.workers is not None:
        sys.exit(_supervise(settings, overrides, port_file))
    from kms.app import Application  # not in the supervisor, which must never load PKCS#11

    journals.gather_orphans(settings, 1)
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


def _supervise(settings: Settings, overrides: dict[str, Any], port_file: str | None) -> int:
    from kms.workers.listener import reserve
    from kms.workers.supervisor import Supervisor

    try:
        settings.require_transport_security()
        shared = reserve(settings.listen)
    except (ValueError, ListenRefused) as error:
        click.echo(f"kms serve: {error}", err=True)
        return 2
    env = dict(os.environ)
    env.update({f"KMS_{name.upper()}": _env_value(value) for name, value in overrides.items()})
    return Supervisor(settings, shared, env=env, port_file=Path(port_file) if port_file else None).run()


def _env_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _serve_as_worker(settings: Settings, index: int, supervisor_fd: int) -> int:
    from kms.workers import worker

    try:
        return worker.run(settings, index, supervisor_fd)
    except (ListenRefused, ModuleUnusable, ValueError, KmsError, CertificateUnusable) as error:
        click.echo(f"kms serve: worker {index}: {error}", err=True)
        return 2


def write_port(path: Path, port: int) -> None:
    """Writes ``port`` and a newline to ``path`` so that a reader sees either no file or the
    whole number, never a part: written beside it first, then renamed over it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)
