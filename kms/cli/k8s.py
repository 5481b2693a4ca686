"""kms k8s-plugin: the Kubernetes KMS v2 plugin on a unix socket (kms.k8s)."""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta

import click

from kms import logs
from kms.cli.common import DEFAULT_TARGET, DURATION
from kms.errors import KmsError
from kms.k8s import KeyManagementServicer, KmsPlugin, PluginConfig, PluginServer, SocketPathRefused, open_channel
from kms_client import tls_credentials
from kms_client.client import is_loopback_target


def _parse_context(items: tuple[str, ...]) -> dict[str, str]:
    context: dict[str, str] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--context")
        if key in context:
            raise click.BadParameter(f"{key!r} given twice", param_hint="--context")
        context[key] = value
    return context


def _check_transport(target: str, tls: bool) -> None:
    """Plaintext to the KMS only on loopback, judged as the SDK judges it (every spelling of a
    gRPC target: unix sockets, ipv4:/ipv6:/dns: schemes), never by resolving a name."""
    if not tls and not is_loopback_target(target):
        raise click.UsageError(f"plaintext to {target} refused: give --tls-ca (and --tls-cert/--tls-key)")


@click.command("k8s-plugin")
@click.option(
    "--socket",
    "socket_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Unix socket to serve on, created 0600; the EncryptionConfiguration endpoint is unix://PATH.",
)
@click.option("--key-id", required=True, help="The KMS key that wraps the API server's data keys.")
@click.option(
    "-c",
    "--context",
    "context_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Fixed encryption context entry, e.g. cluster=prod-eu-1; repeat for more. "
    "Never change it while data encrypted under it exists.",
)
@click.option(
    "--target",
    default=lambda: os.environ.get("KMS_TARGET", DEFAULT_TARGET),
    show_default="KMS_TARGET or " + DEFAULT_TARGET,
    help="HOST:PORT of the KMS.",
)
@click.option(
    "--tls-ca",
    "ca_file",
    envvar="KMS_CLIENT_CA",
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificate (PEM) that signed the KMS's certificate; enables TLS.",
)
@click.option(
    "--tls-cert",
    "cert_file",
    envvar="KMS_CLIENT_CERT",
    type=click.Path(exists=True, dir_okay=False),
    help="The plugin's client certificate (PEM) for mutual TLS.",
)
@click.option(
    "--tls-key",
    "key_file",
    envvar="KMS_CLIENT_KEY",
    type=click.Path(exists=True, dir_okay=False),
    help="The plugin's client private key (PEM) for mutual TLS.",
)
@click.option(
    "--kms-timeout",
    type=DURATION,
    default="2s",
    show_default=True,
    help="Deadline of each call to the KMS, retries included; below the API server's timeout (3s).",
)
@click.option(
    "--status-max-age",
    type=DURATION,
    default="5s",
    show_default=True,
    help="How long one health probe of the KMS answers Status.",
)
@click.option(
    "--shutdown-grace",
    type=DURATION,
    default="10s",
    show_default=True,
    help="On SIGTERM/SIGINT, how long in-flight calls may finish.",
)
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="DEBUG logs every call (never its data).",
)
def k8s_plugin(
    socket_path: str,
    key_id: str,
    context_items: tuple[str, ...],
    target: str,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    kms_timeout: timedelta,
    status_max_age: timedelta,
    shutdown_grace: timedelta,
    log_format: str,
    log_level: str,
) -> None:
    """Serve the Kubernetes KMS v2 plugin API until SIGTERM or SIGINT.

    kube-apiserver's Encrypt calls are sealed under a fresh data key of --key-id, bound to the
    encryption context {"purpose": "kubernetes-kms-v2"} plus --context entries; the key_id it
    sees is KEY:vN, N the key's primary version. The plugin's identity needs the encrypt and
    decrypt permissions on the key. See docs/integrations/kubernetes.md.
    """
    logs.configure(log_level, log_format)
    _check_transport(target, bool(ca_file or cert_file))
    try:
        config = PluginConfig(
            key_id,
            _parse_context(context_items),
            kms_timeout=kms_timeout.total_seconds(),
            status_max_age=status_max_age.total_seconds(),
        )
        credentials = tls_credentials(ca_file, cert_file, key_file) if (ca_file or cert_file) else None
    except (KmsError, ValueError) as error:
        raise click.UsageError(str(getattr(error, "message", error))) from None
    channel = open_channel(target, credentials)
    try:
        server = PluginServer(KeyManagementServicer(KmsPlugin(config, channel)), socket_path)
        server.start()
    except SocketPathRefused as error:
        channel.close()
        click.echo(f"kms k8s-plugin: {error}", err=True)
        sys.exit(2)

    def shutdown(_signum: int, _frame: object) -> None:
        server.stop(shutdown_grace.total_seconds())

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    server.wait()
    channel.close()
