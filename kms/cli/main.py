"""Entry point of the ``kms`` command."""

from __future__ import annotations

import click

from kms.cli import crypt
from kms.cli.audit import audit
from kms.cli.db import db
from kms.cli.erase import erase
from kms.cli.hsm import hsm
from kms.cli.k8s import k8s_plugin
from kms.cli.keys import keys
from kms.cli.policy import policy
from kms.cli.pseudonymize import pseudonymize
from kms.cli.rewrap import rewrap
from kms.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Envelope encryption and key rotation with master keys in a PKCS#11 HSM."""


cli.add_command(serve)
cli.add_command(keys)
cli.add_command(db)
cli.add_command(hsm)
crypt.register(cli)
cli.add_command(rewrap)
cli.add_command(policy)
cli.add_command(pseudonymize)
cli.add_command(erase)
cli.add_command(audit)
cli.add_command(k8s_plugin)


def main() -> None:
    cli()
