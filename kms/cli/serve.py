"""kms serve."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from kms import logs
from kms.api.server import ListenRefused
from kms.app import Application
from kms.config import Settings
from kms.errors import KmsError
from kms.hsm.module import ModuleError


@click.command()
@click.option("--listen", default=None, help="HOST:PORT to serve on (KMS_LISTEN, default 127.0.0.1:50051).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Data directory (KMS_DATA_DIR, default ./kms-data).")
@click.option("--metrics-listen", default=None, help="HOST:PORT for Prometheus metrics (KMS_METRICS_LISTEN).")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None, help="KMS_LOG_FORMAT, default json.")
def serve(listen: str | None, data_dir: str | None, metrics_listen: str | None, log_format: str | None) -> None:
    """Run the key management service until SIGTERM or SIGINT."""
    overrides: dict[str, Any] = {
        name: value
        for name, value in (("listen", listen), ("data_dir", data_dir), ("metrics_listen", metrics_listen), ("log_format", log_format))
        if value is not None
    }
    settings = Settings(**overrides)
    logs.configure(settings.log_level, settings.log_format)
    try:
        app = Application(settings)
    except (ListenRefused, ModuleError, ValueError, KmsError) as error:
        click.echo(f"kms serve: {error}", err=True)
        sys.exit(2)

    def shutdown(signum: int, _frame: object) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    app.start()
    app.wait()
