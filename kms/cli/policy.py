"""kms policy grant|revoke|list and group membership."""

from __future__ import annotations

import click

from kms.cli.common import remote
from kms.cli.output import console, emit_json
from kms.cli.rewrap import _pairs
from kms_client import KmsClient


@click.group()
def policy() -> None:
    """Who may do what: grants (default deny) and groups."""


@policy.command()
@click.argument("principal")
@click.argument("resource")
@click.argument("permissions", nargs=-1, required=True)
@click.option(
    "--when",
    "constraints",
    multiple=True,
    help="name=value the request's encryption context must contain (repeatable).",
)
@remote
def grant(
    client: KmsClient,
    as_json: bool,
    principal: str,
    resource: str,
    permissions: tuple[str, ...],
    constraints: tuple[str, ...],
) -> None:
    """Let PRINCIPAL (identity or group:NAME) use PERMISSIONS on RESOURCE (key id, prefix*, or *).

    Permissions: admin, encrypt, decrypt, rewrap, rotate, audit-read.
    """
    made = client.grant_permissions(
        principal, resource, permissions, encryption_context_equals=_pairs(constraints, "--when")
    )
    emit_json(made) if as_json else console.print(f"granted {made.grant_id}")


@policy.command()
@click.argument("grant_id")
@remote
def revoke(client: KmsClient, as_json: bool, grant_id: str) -> None:
    """Remove a grant (ids are shown by kms policy list)."""
    removed = client.revoke_grant(grant_id)
    emit_json(removed) if as_json else console.print(f"revoked {removed.grant_id}")


@policy.command(name="list")
@click.option("--principal", default="", help="Only this principal's grants.")
@click.option("--resource", default="", help="Only grants within this resource.")
@remote
def list_(client: KmsClient, as_json: bool, principal: str, resource: str) -> None:
    """List the grants you administer."""
    grants = client.list_grants(principal=principal, resource=resource)
    if as_json:
        emit_json(grants)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("GRANT", "PRINCIPAL", "RESOURCE", "PERMISSIONS", "WHEN CONTEXT HAS", "BY"):
        table.add_column(column)
    for g in grants:
        when = ", ".join(f"{k}={v}" for k, v in sorted(g.encryption_context_equals.items()))
        table.add_row(g.grant_id, g.principal, g.resource, ",".join(g.permissions), when, g.created_by)
    console.print(table)


@policy.group()
def group() -> None:
    """Group membership (grant to group:NAME to reach every member)."""


@group.command(name="add")
@click.argument("group_name")
@click.argument("identity")
@remote
def group_add(client: KmsClient, as_json: bool, group_name: str, identity: str) -> None:
    """Put IDENTITY into GROUP_NAME."""
    changed = client.add_group_member(group_name, identity)
    emit_json({"changed": changed}) if as_json else console.print("added" if changed else "already a member")


@group.command(name="remove")
@click.argument("group_name")
@click.argument("identity")
@remote
def group_remove(client: KmsClient, as_json: bool, group_name: str, identity: str) -> None:
    """Take IDENTITY out of GROUP_NAME."""
    changed = client.remove_group_member(group_name, identity)
    emit_json({"changed": changed}) if as_json else console.print("removed" if changed else "was not a member")


@group.command(name="list")
@click.argument("group_name", required=False, default="")
@remote
def group_list(client: KmsClient, as_json: bool, group_name: str) -> None:
    """List memberships (of one group, or all)."""
    members = client.list_group_members(group_name)
    if as_json:
        emit_json([{"group": g, "identity": i} for g, i in members])
        return
    for g, i in members:
        console.print(f"{g}\t{i}")
