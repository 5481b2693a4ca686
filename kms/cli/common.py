"""Options and helpers shared by the commands."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click

from kms.config import Settings, parse_duration
from kms_client import KmsClient, KmsError, tls_credentials
from kms_client.client import DEFAULT_TIMEOUT, is_loopback_target

DEFAULT_TARGET = "127.0.0.1:50051"


def remote(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --target, TLS options, --insecure, --timeout and --json, and hands the command a
    connected client.

    Without TLS options the connection is plaintext, which is allowed only to a target on this
    host (kms_client.client.is_loopback_target) unless --insecure (KMS_INSECURE) says otherwise.
    """

    @click.option(
        "--target",
        default=lambda: os.environ.get("KMS_TARGET", DEFAULT_TARGET),
        show_default="KMS_TARGET or " + DEFAULT_TARGET,
        help="gRPC target of the service: HOST:PORT, [IPV6]:PORT, dns:///HOST:PORT, unix:PATH...",
    )
    @click.option(
        "--tls-ca",
        "ca_file",
        envvar="KMS_CLIENT_CA",
        type=click.Path(exists=True, dir_okay=False),
        help="CA certificate (PEM) that signed the server's certificate; enables TLS.",
    )
    @click.option(
        "--tls-cert",
        "cert_file",
        envvar="KMS_CLIENT_CERT",
        type=click.Path(exists=True, dir_okay=False),
        help="Client certificate (PEM) for mutual TLS; enables TLS.",
    )
    @click.option(
        "--tls-key",
        "key_file",
        envvar="KMS_CLIENT_KEY",
        type=click.Path(exists=True, dir_okay=False),
        help="Client private key (PEM) for mutual TLS.",
    )
    @click.option(
        "--insecure",
        is_flag=True,
        envvar="KMS_INSECURE",
        help="Allow plaintext to a target that is not on this host: keys and data cross the network "
        "in the clear. Never needed for loopback or unix: targets.",
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        envvar="KMS_TIMEOUT",
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds per call to the service, retries included.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @functools.wraps(command)
    def wrapper(
        target: str,
        ca_file: str | None,
        cert_file: str | None,
        key_file: str | None,
        insecure: bool,
        timeout: float,
        as_json: bool,
        **kwargs: Any,
    ) -> Any:
        credentials = None
        if ca_file or cert_file or key_file:
            if insecure:
                raise click.UsageError(
                    "--insecure contradicts --tls-ca/--tls-cert/--tls-key (or KMS_INSECURE and "
                    "KMS_CLIENT_*): choose TLS or plaintext"
                )
            try:
                credentials = tls_credentials(ca_file, cert_file, key_file)
            except ValueError as error:
                raise click.UsageError(f"--tls-cert and --tls-key: {error}") from None
        elif not is_loopback_target(target):
            if not insecure:
                raise click.UsageError(
                    f"refusing plaintext to {target}: it is not a loopback address, and without TLS data keys and "
                    "plaintext would cross the network in the clear. Give --tls-ca (with --tls-cert and --tls-key "
                    "for mutual TLS), or --insecure (KMS_INSECURE=1) to accept that."
                )
            click.echo(
                f"warning: plaintext to {target} (--insecure): keys and data are not protected in transit", err=True
            )
        try:
            with KmsClient(target, credentials=credentials, insecure=insecure, timeout=timeout) as client:
                return command(client=client, as_json=as_json, **kwargs)
        except KmsError as error:
            click.echo(f"error: {error.code.name}: {error.message}", err=True)
            sys.exit(1)

    return wrapper


class DurationType(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        parsed = parse_duration(value)
        if isinstance(parsed, timedelta):
            return parsed
        self.fail(f"{value!r} is not a duration such as 90s, 15m, 1h or 30d", param, ctx)


DURATION = DurationType()


def local_settings(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --data-dir and --database-url for commands that work on the files directly."""

    @click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Data directory (KMS_DATA_DIR).")
    @click.option("--database-url", default=None, help="SQLAlchemy URL (KMS_DATABASE_URL).")
    @functools.wraps(command)
    def wrapper(data_dir: str | None, database_url: str | None, **kwargs: Any) -> Any:
        overrides: dict[str, Any] = {}
        if data_dir is not None:
            overrides["data_dir"] = data_dir
        if database_url is not None:
            overrides["database_url"] = database_url
        return command(settings=Settings(**overrides), **kwargs)

    return wrapper
