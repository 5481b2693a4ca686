"""Grants and group memberships. Every change appends its digest to the metadata ledger in the
same transaction (kms.domain.ledger), which is how replicas learn of it and how a row written
outside the service is told apart."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, insert, select

from kms.domain.ledger import GRANT, MEMBER, Change, grant_digest, member_digest, member_name
from kms.domain.policy import Grant, Permission, PolicySnapshot
from kms.store.database import WRITE_OPTION
from kms.store.ledger import SqlLedger
from kms.store.repository import database_errors
from kms.store.tables import GrantRow, GroupMemberRow, LedgerHeadRow

# Ledger revisions of a grant or membership: present, then gone.
PRESENT, GONE = 1, 2


class SqlPolicyRepository:
    def __init__(self, engine: Engine, ledger: SqlLedger) -> None:
        self._engine = engine
        self._ledger = ledger

    def snapshot(self) -> PolicySnapshot:
        """Every stored grant and membership, and the ledger position they are as of, read in
        one snapshot. The rows are not yet trusted: the caller keeps those the ledger vouches for."""
        with database_errors(), self._engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                ledger_seq = connection.execute(select(LedgerHeadRow.seq).where(LedgerHeadRow.id == 1)).scalar() or 0
                grants = tuple(_grant(row) for row in connection.execute(select(GrantRow.__table__)))
                members = tuple(
                    (row.group_name, row.identity) for row in connection.execute(select(GroupMemberRow.__table__))
                )
        return PolicySnapshot(ledger_seq, grants, members)

    def add_grant(self, grant: Grant, now: datetime) -> Grant:
        stored = Grant(
            grant.principal, grant.resource, grant.permissions, dict(grant.context), uuid.uuid4().hex, grant.created_by
        )

        def write(connection: Connection) -> None:
            connection.execute(
                insert(GrantRow.__table__).values(
                    grant_id=stored.grant_id,
                    principal=stored.principal,
                    resource=stored.resource,
                    permissions=",".join(sorted(p.value for p in stored.permissions)),
                    context_json=json.dumps(dict(stored.context), sort_keys=True),
                    created_by=stored.created_by,
                    create_time=now,
                )
            )
            self._ledger.append(connection, [Change(GRANT, stored.grant_id, PRESENT, grant_digest(stored))])

        self._write(write)
        return stored

    def delete_grant(self, grant_id: str) -> bool:
        def write(connection: Connection) -> bool:
            removed = connection.execute(delete(GrantRow.__table__).where(GrantRow.grant_id == grant_id)).rowcount
            if removed:
                self._ledger.append(connection, [Change(GRANT, grant_id, GONE, "")])
            return bool(removed)

        return self._write(write)

    def add_member(self, group: str, identity: str) -> bool:
        table = GroupMemberRow.__table__

        def write(connection: Connection) -> bool:
            exists = select(table).where(table.c.group_name == group, table.c.identity == identity).exists()
            if connection.execute(select(exists)).scalar():
                return False
            connection.execute(insert(table).values(group_name=group, identity=identity))
            self._ledger.append(
                connection, [Change(MEMBER, member_name(group, identity), PRESENT, member_digest(group, identity))]
            )
            return True

        return self._write(write)

    def remove_member(self, group: str, identity: str) -> bool:
        table = GroupMemberRow.__table__

        def write(connection: Connection) -> bool:
            removed = connection.execute(
                delete(table).where(table.c.group_name == group, table.c.identity == identity)
            ).rowcount
            if removed:
                self._ledger.append(connection, [Change(MEMBER, member_name(group, identity), GONE, "")])
            return bool(removed)

        return self._write(write)

    def unledgered(self) -> Sequence[Change]:
        """The ledger entries every stored grant and membership would have: for sealing a
        database that predates the ledger (kms.service.integrity.adopt_unledgered)."""
        snapshot = self.snapshot()
        return [Change(GRANT, g.grant_id, PRESENT, grant_digest(g)) for g in snapshot.grants] + [
            Change(MEMBER, member_name(group, identity), PRESENT, member_digest(group, identity))
            for group, identity in snapshot.members
        ]

    def _write(self, write):  # noqa: ANN001, ANN202 - a function of the write transaction's connection
        with database_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                return write(connection)


def _grant(row) -> Grant:  # noqa: ANN001 - a SQLAlchemy Row
    """The grant a row says. A row that cannot be read as one (altered outside the service)
    still becomes a grant, one whose digest the ledger cannot hold, so it is reported, not lost."""
    try:
        context = json.loads(row.context_json or "{}")
        if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
            raise ValueError
    except ValueError:
        context = {"unreadable": row.context_json[:64]}
    return Grant(
        principal=row.principal,
        resource=row.resource,
        permissions=frozenset(Permission(name) for name in row.permissions.split(",") if name in _PERMISSIONS),
        context=context,
        grant_id=row.grant_id,
        created_by=row.created_by,
    )


_PERMISSIONS = frozenset(p.value for p in Permission)
