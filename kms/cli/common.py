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

DEFAULT_TARGET = "127.0.0.1:50051"


def remote(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --target, TLS options and --json, and hands the command a connected client."""

    @click.option("--target", default=lambda: os.environ.get("KMS_TARGET", DEFAULT_TARGET),
                  show_default="KMS_TARGET or " + DEFAULT_TARGET, help="HOST:PORT of the service.")
    @click.option("--tls-ca", "ca_file", envvar="KMS_CLIENT_CA", type=click.Path(exists=True, dir_okay=False),
                  help="CA certificate (PEM) that signed the server's certificate; enables TLS.")
    @click.option("--tls-cert", "cert_file", envvar="KMS_CLIENT_CERT", type=click.Path(exists=True, dir_okay=False),
                  help="Client certificate (PEM) for mutual TLS.")
    @click.option("--tls-key", "key_file", envvar="KMS_CLIENT_KEY", type=click.Path(exists=True, dir_okay=False),
                  help="Client private key (PEM) for mutual TLS.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @functools.wraps(command)
    def wrapper(
        target: str, ca_file: str | None, cert_file: str | None, key_file: str | None, as_json: bool, **kwargs: Any
    ) -> Any:
        credentials = tls_credentials(ca_file, cert_file, key_file) if (ca_file or cert_file) else None
        try:
            with KmsClient(target, credentials=credentials) as client:
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
